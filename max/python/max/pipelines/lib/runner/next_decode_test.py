"""A decode step is derived on the device from the last one only for the same requests
continuing: a new request that reuses a finished one's id, and whose cached prompt prefix
leaves it a single token to run, gets its own inputs (it used to be run as the finished
request's next token: an index error, or another request's tokens)."""

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

PROMPT = [1, 15, 300, 7, 2048]  # one full page of 4 cached, one token left to run


def test_a_reused_request_id_does_not_continue_the_finished_request(tmp_path):
    base = write_tiny_checkpoint(tmp_path, TINY_CONFIGS["llama3"], seed=5)
    config = PipelineConfig(model_path=str(base), kv_cache_page_size=4, max_length=128)
    engine = build_engine(resolve_model(config, register_all()))
    first = greedy_tokens(engine, [PROMPT], 3)[0]  # greedy_tokens names its request "greedy-0"
    again = greedy_tokens(engine, [PROMPT], 6)[0]
    assert engine.stats().kv_pages_cached > 0
    assert again[:3] == first and again == greedy_tokens(build_engine(resolve_model(config, register_all())), [PROMPT], 6)[0]
