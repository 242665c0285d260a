"""The tiny random olmo2 checkpoint on a CUDA GPU: post-norms and q/k norms over the whole projection (the Triton RMSNorm on strided views). float32 gives the CPU's
logits and greedy tokens (graph-replayed decode, chunked prefill), bfloat16 stays close.
Skipped without a GPU (CI has none); run through the device tool."""

import pytest
import torch

from max.testing.parity import assert_gpu_matches_cpu
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_matches_cpu(tmp_path):
    assert_gpu_matches_cpu(write_tiny_checkpoint(tmp_path / "olmo2", TINY_CONFIGS["olmo2"], seed=3))
