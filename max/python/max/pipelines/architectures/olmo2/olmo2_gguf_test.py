"""OLMo 2 from GGUF files as llama.cpp writes them (norms after attention and the MLP, q/k
norms over the whole projection): float32 logits equal to the safetensors load of the
weights the file holds."""

import pytest

from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_gguf_models import assert_gguf_matches_reference


@pytest.mark.parametrize("matrix_type", ["F32", "F16", "Q8_0"])
def test_gguf_matches_its_weights_in_safetensors(matrix_type, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "o", TINY_CONFIGS["olmo2"], seed=3)
    assert_gguf_matches_reference(path, tmp_path, matrix_type)
