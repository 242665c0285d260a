"""Scaffolding from the newest folders: a copy of phi3/ (fused weights split by its adapter)
and of olmo2/ (its own decoder layer), renamed, registered from outside the tree, matches
transformers on a checkpoint of the new name."""

import pytest

from max.entrypoints.scaffold import scaffold_architecture
from max.pipelines.architectures import register_all
from max.pipelines.lib.model.registry import register_custom_architectures
from max.testing.parity import PROMPTS, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


@pytest.mark.parametrize(
    ("source", "name", "folder"),
    [("phi3", "ScaffoldedPhiForCausalLM", "scaffolded_phi"), ("olmo2", "ScaffoldedOlmoForCausalLM", "scaffolded_olmo")],
)
def test_scaffolded_copy_serves_the_renamed_architecture(source, name, folder, tmp_path):
    out = scaffold_architecture(source, name, tmp_path / "archs" / folder)
    arch_text = (out / "arch.py").read_text()
    assert f'name="{name}"' in arch_text and f"{folder}_arch = SupportedArchitecture(" in arch_text
    prefix = name.removesuffix("ForCausalLM")
    assert f"class {prefix}Model(PipelineModel)" in (out / "model.py").read_text()
    register_custom_architectures([str(out)], register_all())
    config = {**TINY_CONFIGS[source], "architectures": [name]}
    prompts = [p for p in PROMPTS if len(p) > 16]  # past Phi-3's original context (see phi3_test)
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / "ckpt", config, seed=2), steps=8, prompts=prompts)
