"""`auto` on the CPU: which paths a checkpoint allows, how injected measurements decide,
the per-process and on-disk caches, and the settings a choice pins. Timings are injected:
nothing here depends on this CPU's features or speed."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from max.nn.cpu_weight_paths import PathMeasurement
from max.pipelines.lib import cpu_encoding_choice as choice_module
from max.pipelines.lib.cpu_encoding_choice import (
    ModelShapes,
    candidate_paths,
    choose_cpu_path,
    model_shapes,
    pick,
    settings_of,
)

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}
SHAPES = ModelShapes(((96, 64), (64, 64), (256, 64), (64, 128)), 2, (512, 64))


@pytest.fixture(autouse=True)
def fresh_process_cache(monkeypatch):
    monkeypatch.setattr(choice_module, "_PROCESS_CACHE", {})
    monkeypatch.setattr(choice_module, "_quiet", lambda: True)


def _timings(**ms):
    """A measure function that reports `ms` (name -> ms per token; a tuple adds an error
    above the tolerance) and records its calls."""
    calls = []

    def measure(names, shapes, layers, head):
        calls.append(list(names))
        out = []
        for n in names:
            t = ms[n]
            failed = isinstance(t, tuple)
            out.append(PathMeasurement(n, t[0] if failed else t, 1.0 if failed else 0.001, 0.1))
        return out

    measure.calls = calls
    return measure


def test_a_checkpoint_allows_the_paths_its_precision_covers():
    assert candidate_paths("q4_1", AVX2) == ["float32", "bfloat16", "int8", "int8_dynamic", "int4"]
    assert candidate_paths("q8_0", AVX2) == ["float32", "bfloat16", "int8", "int8_dynamic"]
    assert candidate_paths(None, AVX2) == ["float32", "bfloat16"]  # a float checkpoint stays float
    assert candidate_paths("f16", AVX512_BF16) == ["float32", "bfloat16"]
    assert candidate_paths("q4_1", AVX2, int8_dynamic_available=False) == ["float32", "bfloat16", "int8", "int4"]
    # Flags pre-filter: without AVX2 every reduced-precision path is a scalar emulation.
    assert candidate_paths("q4_1", {"sse4_2"}) == ["float32"]
    assert candidate_paths("q4_1", None)[-1] == "int4"  # no flags to read (not x86): measure all


def test_each_path_maps_to_settings_the_engine_processes_re_resolve():
    assert settings_of("int4", "q4_k") == ("q4_k", None)
    assert settings_of("int8", "q4_1") == ("q8_0", None)
    assert settings_of("int8", "q6_k") == ("q6_k", None)
    assert settings_of("int8_dynamic", "q4_1") == ("bfloat16", "int8_dynamic")
    assert settings_of("bfloat16", "q4_1") == ("bfloat16", None)
    assert settings_of("float32", None) == ("float32", None)


def test_the_measured_fastest_verified_path_is_chosen_on_an_avx2_machine(tmp_path):
    # The figures of issue 29's AVX2 EPYC shape: float32 slowest, int4 no better than int8.
    measure = _timings(float32=50.0, bfloat16=16.0, int8=15.0, int8_dynamic=8.0, int4=15.5)
    got = choose_cpu_path("q4_1", SHAPES, AVX2, measure, tmp_path / "c.json")
    assert (got.path, got.encoding, got.quantization, got.how) == ("int8_dynamic", "bfloat16", "int8_dynamic", "measured")
    line = got.describe()
    assert "int8_dynamic 8.0 ms" in line and "float32 50.0 ms" in line and "-> int8_dynamic" in line


def test_a_path_that_fails_verification_is_never_chosen(tmp_path):
    measure = _timings(float32=50.0, bfloat16=16.0, int8=15.0, int8_dynamic=(1.0,), int4=(2.0,))
    got = choose_cpu_path("q4_1", SHAPES, AVX2, measure, tmp_path / "c.json")
    assert got.path == "int8"
    assert "failed" in got.describe()
    assert pick([PathMeasurement("int4", 1.0, math.inf, 0.1)]) == "float32"


def test_measurements_are_cached_per_process_and_on_disk(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    measure = _timings(float32=50.0, bfloat16=20.0)
    assert choose_cpu_path(None, SHAPES, AVX2, measure, cache).path == "bfloat16"
    assert choose_cpu_path(None, SHAPES, AVX2, measure, cache).how == "cached"
    assert len(measure.calls) == 1
    (key,) = json.loads(cache.read_text())
    assert torch.__version__ in key and "x2+" in key  # names the torch version and the shapes
    # A new process reads the file; other shapes are measured anew.
    monkeypatch.setattr(choice_module, "_PROCESS_CACHE", {})
    assert choose_cpu_path(None, SHAPES, AVX2, measure, cache).how == "cached"
    other = ModelShapes(SHAPES.layers, 3, SHAPES.head)
    choose_cpu_path(None, other, AVX2, measure, cache)
    assert len(measure.calls) == 2 and len(json.loads(cache.read_text())) == 2


def test_a_damaged_cache_costs_a_measurement_and_load_keeps_figures_off_disk(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    measure = _timings(float32=50.0, bfloat16=20.0)
    assert choose_cpu_path(None, SHAPES, AVX2, measure, cache).how == "measured"
    assert len(json.loads(cache.read_text())) == 1
    cache.unlink()
    monkeypatch.setattr(choice_module, "_PROCESS_CACHE", {})
    monkeypatch.setattr(choice_module, "_quiet", lambda: False)
    got = choose_cpu_path(None, SHAPES, AVX2, measure, cache)
    assert "not saved" in got.how and not cache.exists()


def test_without_layer_shapes_or_a_choice_the_flags_decide():
    never = _timings()  # would raise KeyError if called
    assert choose_cpu_path("q4_1", None, AVX512_BF16, never, None).encoding == "q4_1"
    assert choose_cpu_path("q4_1", None, AVX2, never, None).encoding == "float32"
    assert choose_cpu_path("q4_1", SHAPES, {"sse4_2"}, never, None).path == "float32"
    assert not never.calls


def test_model_shapes_follow_the_fused_projections():
    cfg = SimpleNamespace(
        hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
        num_hidden_layers=30, vocab_size=49152, head_dim=None,
    )  # fmt: skip
    shapes = model_shapes(cfg)
    assert shapes.layers == ((960, 576), (576, 576), (3072, 576), (576, 1536))
    assert (shapes.num_layers, shapes.head) == (30, (49152, 576))
    assert model_shapes(SimpleNamespace(hidden_size=8)) is None
