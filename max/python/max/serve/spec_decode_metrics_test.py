"""/metrics carries vLLM's speculative-decoding counters from the engine's statistics."""

from max.pipelines.lib import EngineStats
from max.pipelines.lib.speculative.spec_decode_stats import SpecDecodeStats
from max.serve.metrics import ServerMetrics


def _page(spec: SpecDecodeStats) -> str:
    metrics = ServerMetrics()
    metrics.vllm.model_name = "m"
    metrics.engine = EngineStats(1, 0, 3, 10, 0, 0, spec)
    return metrics.render()


def test_spec_decode_counters_under_vllm_names():
    spec = SpecDecodeStats()
    spec.record(4, 3)
    spec.record(4, 1)
    page = _page(spec)
    assert 'vllm:spec_decode_num_drafts_total{model_name="m"} 2.0' in page
    assert 'vllm:spec_decode_num_draft_tokens_total{model_name="m"} 8.0' in page
    assert 'vllm:spec_decode_num_accepted_tokens_total{model_name="m"} 4.0' in page
    for position, value in enumerate([2, 1, 1, 0]):
        line = f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",position="{position}"}} {value}.0'
        assert line in page


def test_no_spec_decode_series_without_drafts():
    assert "spec_decode" not in _page(SpecDecodeStats())
