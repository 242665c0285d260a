"""Checks every architecture test makes: logits and greedy tokens equal to transformers',
and the same tokens whether a request runs alone or in a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import LLMEngine, PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits

# Prompts of varied lengths (token ids of the SmolLM2 vocabulary), longer than the tiny
# configs' sliding windows and page sizes.
PROMPTS = [
    [1, 15, 300, 7, 2048],
    [1, 9000, 17, 17, 17, 44, 5, 6, 7, 1200, 33, 812, 99, 4, 4, 321, 6000, 12, 8],
    [1, 4],
    list(range(500, 541)),
]


def build_tiny_engine(path: Path | str, **overrides) -> LLMEngine:
    """An engine on a tiny checkpoint with small pages (so prompts span several)."""
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=256)
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def hf_greedy(model, prompt: Sequence[int], steps: int) -> list[int]:
    """transformers' greedy continuation (EOS ignored)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    return out[0, len(prompt) :].tolist()


def greedy_by_full_forwards(logits: Callable[[list[int]], torch.Tensor], prompt: Sequence[int], steps: int) -> list[int]:
    """A reference's greedy continuation, each step a full forward: `logits(ids)` gives the
    logits [len(ids), vocab] of a whole sequence (for references that `generate` cannot
    drive, e.g. with images beside the tokens)."""
    out: list[int] = []
    for _ in range(steps):
        out.append(int(logits([*prompt, *out])[-1].argmax()))
    return out


def assert_matches_transformers(
    path: Path | str,
    steps: int = 24,
    tolerance: float = 1e-4,
    prompts: Sequence[Sequence[int]] = PROMPTS,
    engine_path: Path | str | None = None,
    **engine_overrides,
) -> None:
    """float32 logits of every prompt position and greedy continuations equal transformers'
    (`engine_path`: what our engine loads, if not `path`, e.g. a GGUF file of the same
    weights; `engine_overrides`: PipelineConfig fields of our engine, e.g. max_length)."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    engine = build_tiny_engine(engine_path or path, **engine_overrides)
    for prompt in prompts:
        with torch.no_grad():
            expected = reference(torch.tensor([list(prompt)])).logits[0]
        torch.testing.assert_close(prompt_logits(engine, prompt), expected, rtol=tolerance, atol=tolerance)
    assert greedy_tokens(engine, prompts, steps) == [hf_greedy(reference, p, steps) for p in prompts]
    assert engine.kv_cache.pool.num_in_use == 0


def assert_batching_invariant(path: Path | str, steps: int = 12, prompts: Sequence[Sequence[int]] = PROMPTS) -> None:
    """Alone, batched, and batched with chunked prefill: the same greedy tokens."""
    engine = build_tiny_engine(path)
    alone = [greedy_tokens(engine, [p], steps)[0] for p in prompts]
    assert greedy_tokens(engine, prompts, steps) == alone
    chunked = build_tiny_engine(path, max_num_batched_tokens=7)
    assert greedy_tokens(chunked, prompts, steps) == alone
    assert engine.kv_cache.pool.num_in_use == 0 and chunked.kv_cache.pool.num_in_use == 0




def assert_gpu_matches_cpu(path: Path | str, steps: int = 16, prompts: Sequence[Sequence[int]] = PROMPTS, **overrides) -> None:
    """On a CUDA GPU (Triton kernels, CUDA-graph decode, chunked prefill): float32 prompt
    logits and greedy tokens equal the CPU's; bfloat16 logits point the same way
    (cosine similarity of each position's logits above 0.99)."""
    settings = dict(quantization_encoding="float32", kv_cache_page_size=16, max_batch_size=8, **overrides)
    cpu = build_tiny_engine(path, devices="cpu", **settings)
    gpu = build_tiny_engine(path, devices="gpu", **settings)
    for prompt in prompts:
        torch.testing.assert_close(prompt_logits(gpu, prompt).cpu(), prompt_logits(cpu, prompt), rtol=1e-4, atol=1e-4)
    expected = greedy_tokens(cpu, prompts, steps)
    assert greedy_tokens(gpu, prompts, steps) == expected
    assert gpu.runner.num_replays > 0  # decode steps replayed CUDA graphs
    chunked = build_tiny_engine(path, devices="gpu", **{**settings, "max_num_batched_tokens": 7})
    assert greedy_tokens(chunked, prompts, steps) == expected
    bf16 = build_tiny_engine(path, devices="gpu", **{**settings, "quantization_encoding": "bfloat16"})
    for prompt in prompts:
        ours, reference = prompt_logits(bf16, prompt).float().cpu(), prompt_logits(cpu, prompt)
        assert torch.nn.functional.cosine_similarity(ours, reference, dim=-1).min() > 0.99
