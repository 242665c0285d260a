"""The per-layer tool finds the layer (and sub-module) a test breaks on purpose."""

from pathlib import Path

import pytest
import torch

from max.testing.cli import run_script
from max.verification.frameworks import FrameworkSettings, load_torch_model, tokenize_prompts
from max.verification.layer_comparison import compare_layers
from max.verification.named_pipelines import find_pipeline
from max.verification.prompts import VerificationPrompt

PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def setup():
    pipeline = find_pipeline("tiny-random-llama3")
    settings = FrameworkSettings(model_path=pipeline.model_path(), max_length=pipeline.max_length)
    (encoded,) = tokenize_prompts(settings, [VerificationPrompt(PROMPT)])
    ids = encoded.ids
    return settings, ids, load_torch_model(settings)


def _break(name: str, rows: slice = slice(None)):
    def modify(network):
        with torch.no_grad():
            weight = dict(network.named_parameters())[name]
            weight[rows].mul_(1.5)

    return modify


def test_untouched_model_agrees(setup):
    settings, ids, reference = setup
    report = compare_layers(settings, ids, reference_model=reference)
    assert report.first_divergence is None, report.format()
    assert len(report.modules) > 20 and not report.skipped


@pytest.mark.parametrize(
    "weight,rows,expected",
    [
        ("layers.1.mlp.down_proj.weight", slice(None), "layers.1.mlp.down_proj"),
        ("layers.2.input_layernorm.weight", slice(None), "layers.2.input_layernorm"),
        # The k rows of the fused q/k/v projection (q: 4 heads x 16, then k: 2 x 16).
        ("layers.0.self_attn.qkv_proj.weight", slice(64, 96), "layers.0.self_attn.k_proj"),
        # The up half of the fused gate/up projection.
        ("layers.1.mlp.gate_up_proj.weight", slice(128, 256), "layers.1.mlp.up_proj"),
        ("layers.2.self_attn.o_proj.weight", slice(None), "layers.2.self_attn.o_proj"),
    ],
)
def test_broken_weight_is_found(setup, weight, rows, expected):
    settings, ids, reference = setup
    report = compare_layers(settings, ids, modify_ours=_break(weight, rows), reference_model=reference)
    first = report.first_divergence
    assert first is not None and first.name == expected, report.format()
    layer = expected.split(".")[1]
    assert f"First divergence: decoder layer {layer}, sub-module {expected}" in report.format()


def test_command_line():
    r = run_script(Path(__file__).parent / "compare_layers.py", "--pipeline", "tiny-random-llama3")
    assert r.returncode == 0, r.stderr
    assert "agree within relative error" in r.stdout
