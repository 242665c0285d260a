"""The start-up memory plan: a model that cannot fit is refused before anything is allocated,
with what it needs, what the card has and what to try; the report's figures."""

import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib.model.memory_plan import MemoryReport, check_fits, planned_weight_bytes

_GIB = 2**30


def _fake_card(monkeypatch, free: int, total: int) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")


def test_a_model_too_big_for_the_card_is_refused_with_the_figures_and_what_to_try(monkeypatch):
    _fake_card(monkeypatch, free=79 * _GIB, total=80 * _GIB)
    gpu = torch.device("cuda", 0)
    check_fits(gpu, 0.9, weights=60 * _GIB, kv_one_request=1 * _GIB, activations=2 * _GIB, max_length=4096)
    with pytest.raises(MaxError) as error:
        check_fits(gpu, 0.9, weights=80 * _GIB, kv_one_request=1 * _GIB, activations=2 * _GIB, max_length=4096)
    message = str(error.value)
    for part in ("needs 83.00 GiB", "weights 80.00 GiB", "4096 tokens", "79.00 GiB free of 80.00 GiB",
                 "--gpu-memory-utilization 0.9", "--quantization fp8", "--max-length", "--tensor-parallel-size"):  # fmt: skip
        assert part in message, part
    # The CPU's memory is the machine's: never checked.
    check_fits(torch.device("cpu"), 0.9, weights=10**15, kv_one_request=0, activations=0, max_length=1)


def test_planned_weight_bytes_count_replaced_layers_by_their_replacement():
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 16, bias=False))
        net.register_parameter("codes", torch.nn.Parameter(torch.empty(100, dtype=torch.uint8), requires_grad=False))
    full = planned_weight_bytes(net, torch.bfloat16)
    assert full == 2 * (64 * 32 + 32 + 32 * 16) + 100  # uint8 parameters keep their own size
    assert planned_weight_bytes(net, torch.bfloat16, {"0": 7}) == full - 2 * (64 * 32 + 32) + 7


def test_the_report_lists_what_was_measured():
    report = MemoryReport("cuda:0", weights=10, load_peak=11, kv_cache=20, activations=3, cuda_graphs=None, total=100)
    assert report.components() == {"weights": 10, "load_peak": 11, "kv_cache": 20, "activations": 3, "total": 100}
    assert "peak while loading" in report.summary() and "CUDA graphs" not in report.summary()
