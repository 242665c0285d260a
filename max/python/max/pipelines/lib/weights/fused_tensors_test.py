"""A fused checkpoint tensor cut into row ranges: each part reads only its own rows."""

import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib.weights import CheckpointTensor
from max.pipelines.lib.weights.fused_tensors import split_rows


def _fused(reads):
    full = torch.arange(10 * 3, dtype=torch.float32).view(10, 3)

    def read_slice(dtype, dim, start, stop):
        reads.append((dim, start, stop))
        return full.narrow(dim, start, stop - start).to(dtype)

    return full, CheckpointTensor("qkv.weight", (10, 3), "f.safetensors", lambda d: full.to(d), read_slice=read_slice)


def test_parts_read_their_rows_and_shards_of_them():
    reads = []
    full, tensor = _fused(reads)
    q, k, v = split_rows(tensor, (6, 2, 2))
    assert (q.shape, k.shape, v.shape) == ((6, 3), (2, 3), (2, 3))
    assert torch.equal(k.load(torch.float32), full[6:8]) and reads == [(0, 6, 8)]
    assert torch.equal(q.load_slice(torch.float32, 0, 3, 6), full[3:6]) and reads[-1] == (0, 3, 6)
    assert torch.equal(v.load_slice(torch.float32, 1, 1, 3), full[8:10, 1:3]) and reads[-1] == (0, 8, 10)


def test_sizes_that_do_not_add_up_name_the_tensor():
    with pytest.raises(MaxError, match=r"qkv.weight has 10 rows; the config expects 6 \+ 3 \+ 3 = 12"):
        split_rows(_fused([])[1], (6, 3, 3))
