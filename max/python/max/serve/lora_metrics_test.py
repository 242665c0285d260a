"""/metrics carries vLLM's `vllm:lora_requests_info` gauge and the adapter slot counters from
the engine's LoRA statistics, and no LoRA series while LoRA is off."""

from prometheus_client.parser import text_string_to_metric_families

from max.pipelines.lib import EngineStats
from max.pipelines.lib.lora import LoRAStats
from max.serve.metrics import ServerMetrics


def _families(lora: LoRAStats) -> dict:
    metrics = ServerMetrics()
    metrics.vllm.model_name = "m"
    metrics.engine = EngineStats(3, 2, 3, 10, 0, 0, lora=lora)
    return {f.name: f for f in text_string_to_metric_families(metrics.render())}


def test_lora_info_gauge_and_slot_counters():
    lora = LoRAStats(4, running={"sql": 2, "chat": 1}, waiting={"tone": 1}, slot_loads=5, slot_evictions=2, updated_at=1.7e9)
    families = _families(lora)
    (info,) = families["vllm:lora_requests_info"].samples
    assert families["vllm:lora_requests_info"].type == "gauge"
    assert info.labels == {"max_lora": "4", "running_lora_adapters": "chat,sql", "waiting_lora_adapters": "tone"}
    assert info.value == 1.7e9
    assert families["max_serve_lora_adapter_loads"].type == "counter"
    assert families["max_serve_lora_adapter_loads"].samples[0].value == 5
    assert families["max_serve_lora_adapter_evictions"].samples[0].value == 2


def test_idle_adapters_show_as_empty_labels():
    (info,) = _families(LoRAStats(2, updated_at=5.0))["vllm:lora_requests_info"].samples
    assert info.labels == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}


def test_no_lora_series_without_lora():
    families = _families(LoRAStats())
    assert "vllm:num_requests_running" in families
    assert not [name for name in families if "lora" in name]
