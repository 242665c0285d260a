"""The CPU weight paths: the weight-only ones compute their product within the stated
tolerance on this machine, int8 activations and a wrong kernel fail the probe, the measurement reports every
path, and the fbgemm int8 layer is a drop-in for a float one. No timing is asserted."""

import math

import pytest
import torch
from torch import nn

from max.nn.cpu_weight_paths import (
    PATHS,
    PathMeasurement,
    WeightPath,
    fastest_verified,
    measure_paths,
)
from max.nn.int8_dynamic_linear import Int8DynamicLinear, int8_dynamic_supported
from max.nn.quantized_linear import quantized_linear

SHAPES = [(96, 64), (64, 96)]


def test_the_weight_only_paths_pass_their_probe_and_are_timed():
    names = [n for n, p in PATHS.items() if p.available()]
    assert {"float32", "bfloat16", "int8", "int4"} <= set(names)
    measured = measure_paths(names, SHAPES, layers=3, head=(128, 64), rounds=1)
    assert [m.name for m in measured] == names
    for m in measured:
        if m.name == "int8_dynamic":
            # Per-token int8 activations cannot hold the probe's outlier channels (on
            # SmolLM2 they gave 41 % top-1 agreement): rejected, never timed.
            assert not m.verified and m.ms_per_token == math.inf
            continue
        assert m.verified, (m.name, m.error, m.tolerance)
        assert math.isfinite(m.ms_per_token) and m.ms_per_token > 0
    errors = {m.name: m.error for m in measured}
    # The formats order as their bits do: the probe sees real rounding, not a copy of float32.
    assert errors["float32"] < 1e-5 < errors["bfloat16"] < errors["int8"] < errors["int4"]


class _OffByHalf(nn.Module):
    """A kernel that computes the wrong product (1.5x the right one)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return 1.5 * (x @ self.weight.t())


def test_a_path_whose_kernel_is_wrong_fails_the_probe_and_is_not_timed(monkeypatch):
    broken = WeightPath("broken", torch.float32, 0.16, _OffByHalf)
    monkeypatch.setitem(PATHS, "broken", broken)
    (m,) = measure_paths(["broken"], SHAPES, layers=2, rounds=1)
    assert not m.verified and m.error > 0.4 and m.ms_per_token == math.inf


def test_a_path_that_cannot_run_here_is_reported_failed(monkeypatch):
    def refuse(weight):
        raise RuntimeError("no such kernel on this CPU")

    monkeypatch.setitem(PATHS, "missing", WeightPath("missing", torch.float32, 1.0, refuse))
    (m,) = measure_paths(["missing"], SHAPES, layers=2, rounds=1)
    assert not m.verified and m.error == math.inf


def _m(name, ms, error=0.0, tolerance=1.0):
    return PathMeasurement(name, ms, error, tolerance)


def test_the_fastest_verified_path_wins_and_near_ties_go_to_the_more_exact():
    assert fastest_verified([_m("float32", 50), _m("bfloat16", 20), _m("int4", 10)]).name == "int4"
    # int4 failed its probe: the fastest of the others.
    assert fastest_verified([_m("float32", 50), _m("bfloat16", 20), _m("int4", 10, error=0.5, tolerance=0.16)]).name == "bfloat16"
    # Within 5 %: the earlier (more exact) one.
    assert fastest_verified([_m("float32", 50), _m("bfloat16", 20), _m("int4", 19.5)]).name == "bfloat16"
    with pytest.raises(ValueError, match="no CPU weight path passed"):
        fastest_verified([_m("int4", 10, error=math.inf)])


def test_measurements_survive_json():
    m = _m("int8", 12.5, 0.009, 0.02)
    assert PathMeasurement.from_json(m.to_json()) == m


@pytest.mark.skipif(not int8_dynamic_supported(), reason="this torch build has no fbgemm engine")
def test_int8_dynamic_layer_is_a_drop_in_for_a_bfloat16_linear():
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 64) * 0.05, torch.randn(48) * 0.1
    layer = quantized_linear(weight, bias, "int8_dynamic", torch.bfloat16)
    assert isinstance(layer, Int8DynamicLinear)
    x = torch.randn(2, 3, 64)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 48)
    ref = x @ weight.t() + bias
    rel = ((y.float() - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < 4e-2  # quantized (not a float copy), within the path's tolerance
