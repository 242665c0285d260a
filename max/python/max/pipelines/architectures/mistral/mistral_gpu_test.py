"""The tiny random mistral checkpoint on a CUDA GPU: a sliding window of 6 on every layer (across 16-token pages). float32 gives the CPU's
logits and greedy tokens (graph-replayed decode, chunked prefill), bfloat16 stays close.
Skipped without a GPU (CI has none); run through the device tool."""

import pytest
import torch

from max.testing.parity import assert_gpu_matches_cpu
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_matches_cpu(tmp_path):
    assert_gpu_matches_cpu(write_tiny_checkpoint(tmp_path / "mistral", TINY_CONFIGS["mistral"], seed=3))
