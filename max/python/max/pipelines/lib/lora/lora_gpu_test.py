"""LoRA on a CUDA GPU: a batch mixing adapters and the base model, run with CUDA graphs
(decode and single-request prefill replays reading the group buffers) and asynchronous
scheduling, gives the CPU's float32 tokens, and the adapter logits stay within 1e-4 of
transformers + PEFT; steps without adapter rows replay the base model's graphs (no LoRA
kernel in them) and give the base model's tokens. Skipped without a GPU.

    PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q max/python/max/pipelines/lib/lora/lora_gpu_test.py
"""

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_lora import peft_reference, write_plain_adapter, write_tiny_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400], [1] + list(range(600, 640))]


def _engine(base, adapters, devices, **overrides):
    settings = dict(
        model_path=str(base), devices=devices, quantization_encoding="float32", kv_cache_page_size=16, max_length=256,
        max_batch_size=8, enable_lora=True, lora_modules=[f"{n}={p}" for n, p in adapters.items()], max_loras=3,
    )  # fmt: skip
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


@pytest.mark.parametrize("arch", ["llama3", "qwen3"])
def test_mixed_adapters_with_graphs_match_the_cpu(arch, tmp_path):
    pytest.importorskip("peft")  # writes the adapters and the reference
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS[arch], seed=3)
    adapters = {f"a{i}": write_tiny_adapter(base, tmp_path / f"a{i}", seed=i, rank=4 + 4 * i, magnitude=0.2) for i in range(3)}
    prompts = PROMPTS * 2
    loras = [None, "a0", "a1", "a2", "a2", None, "a0", "a1"]
    cpu = greedy_tokens(_engine(base, adapters, "cpu"), prompts, 16, loras=loras)
    gpu = _engine(base, adapters, "gpu")
    assert gpu.runner.graph_batch_sizes and gpu.async_scheduling
    assert greedy_tokens(gpu, prompts, 16, loras=loras) == cpu
    assert gpu.runner.num_replays > 0
    # One request alone: its prefill replays a graph, with its adapter's slot.
    assert greedy_tokens(gpu, [PROMPTS[1]], 8, loras=["a0"])[0] == cpu[1][:8]
    assert gpu.runner.num_prefill_replays > 0
    reference = peft_reference(base, adapters["a2"])
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPTS[3]])).logits[0]
    torch.testing.assert_close(prompt_logits(gpu, PROMPTS[3], lora="a2"), expected, rtol=1e-4, atol=1e-4)


class _CountingGraph:
    """A captured graph that counts its replays."""

    def __init__(self, graph):
        self.graph, self.replays = graph, 0

    def replay(self):
        self.replays += 1
        self.graph.replay()


def test_steps_without_adapters_replay_the_base_model_graphs(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS["llama3"], seed=3)
    adapters = {"a0": write_plain_adapter(base, tmp_path / "a0", seed=1, magnitude=0.2)}  # without peft
    cpu = greedy_tokens(_engine(base, adapters, "cpu"), PROMPTS, 16)
    gpu = _engine(base, adapters, "gpu")
    runner = gpu.runner
    assert set(runner._base_decode) == set(runner.graph_batch_sizes)
    base_graphs = {}
    for graphs in (runner._base_decode, runner._base_prefill):
        for entry in graphs.values():
            entry.graph = base_graphs[id(entry)] = _CountingGraph(entry.graph)
    lora_graphs = [_CountingGraph(e.graph) for e in runner._graphs.values()]
    for entry, counting in zip(runner._graphs.values(), lora_graphs):
        entry.graph = counting
    assert greedy_tokens(gpu, PROMPTS, 16) == cpu
    assert sum(g.replays for g in base_graphs.values()) > 0
    assert sum(g.replays for g in lora_graphs) == 0
    # With an adapter request in the batch, the LoRA graphs replay.
    greedy_tokens(gpu, PROMPTS, 4, loras=[None, "a0", None, None])
    assert sum(g.replays for g in lora_graphs) > 0
