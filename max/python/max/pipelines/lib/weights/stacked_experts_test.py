"""Stacked expert tensors handed out one expert at a time, each read once for all its views."""

import torch

from max.pipelines.lib.weights import CheckpointTensor
from max.pipelines.lib.weights.stacked_experts import unstack_experts


def test_views_of_each_expert_share_one_slice_read():
    stacked = torch.arange(3 * 4 * 6, dtype=torch.float32).view(3, 4, 6)
    reads = []

    def read_slice(dtype, dim, start, stop):
        reads.append((dim, start, stop))
        return stacked.narrow(dim, start, stop - start).to(dtype)

    tensor = CheckpointTensor("w", (3, 4, 6), "f", lambda dtype: stacked.to(dtype), read_slice=read_slice)
    views = {"even.weight": lambda w: w.T[0::2], "odd.weight": lambda w: w.T[1::2]}
    experts = unstack_experts(tensor, views)
    assert len(experts) == 3 and experts[1]["even.weight"].shape == (3, 4)
    assert experts[1]["odd.weight"].name == "w[1]:odd.weight"
    for e in range(3):
        assert torch.equal(experts[e]["even.weight"].load(torch.float32), stacked[e].T[0::2])
        assert torch.equal(experts[e]["odd.weight"].load(torch.float32), stacked[e].T[1::2])
    assert reads == [(0, 0, 1), (0, 1, 2), (0, 2, 3)]
