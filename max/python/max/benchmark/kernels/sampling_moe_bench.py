"""Micro-benchmark cases of the sampling and fused-MoE kernels, beside their references.

Sampling: a Llama 3 vocabulary (128256) at 1, 64 and 256 rows, all greedy (one pass over
the logits) or all top-p 0.9 at temperature 0.7 (a statistics pass, 8 search passes and
the race pass); penalties over 1024 prompt and 256 output tokens per row. MoE: the routed
experts of Qwen3-30B-A3B and gpt-oss-20b in bfloat16 at 1, 256 and 4096 tokens.

Each case counts the fewest bytes the op must move: every input read once, every output
written once; for MoE only the weights of the experts that the step's tokens chose.
"""

from __future__ import annotations

import torch

from max.benchmark.kernels.bench_harness import BenchCase, tensor_bytes
from max_kernels.mixture_of_experts import fused_moe, fused_moe_reference
from max_kernels.sampling import (
    apply_penalties,
    apply_penalties_reference,
    sample_tokens,
    sample_tokens_reference,
)

VOCAB = 128256
DTYPE = torch.bfloat16


def _sample_case(n: int, kind: str) -> BenchCase:
    logits = torch.randn(n, VOCAB, device="cuda") * 2.0
    greedy = kind == "greedy"
    rows = (
        torch.full((n,), 0.0 if greedy else 0.7, device="cuda"),
        torch.zeros(n, dtype=torch.int32, device="cuda"),
        torch.full((n,), 1.0 if greedy else 0.9, device="cuda"),
        torch.zeros(n, device="cuda"),
        torch.arange(n, device="cuda", dtype=torch.int64),
        torch.full((n,), 17, device="cuda", dtype=torch.int64),
    )
    # Reads the logits and the per-row settings; writes one int64 token per row.
    moved = tensor_bytes(logits, *rows) + n * 8
    return BenchCase(
        kernel=f"sample_tokens ({kind})",
        shape=f"[{n}, {VOCAB}] f32",
        triton_fn=lambda: sample_tokens(logits, *rows),
        reference_fn=lambda: sample_tokens_reference(logits, *rows),
        bytes_moved=moved,
    )


def _penalties_case(n: int, prompt_len: int = 1024, output_len: int = 256) -> BenchCase:
    logits = torch.randn(n, VOCAB, device="cuda")
    prompt = torch.randint(0, VOCAB, (n, prompt_len), device="cuda")
    output = torch.randint(0, VOCAB, (n, output_len), device="cuda")
    factors = [torch.full((n,), v, device="cuda") for v in (1.2, 0.5, 0.3)]
    # Reads the logits, the ids and the factors; writes the penalized logits.
    moved = 2 * tensor_bytes(logits) + tensor_bytes(prompt, output, *factors)
    return BenchCase(
        kernel="apply_penalties",
        shape=f"[{n}, {VOCAB}] f32, prompt {prompt_len}, output {output_len}",
        triton_fn=lambda: apply_penalties(logits, prompt, output, *factors),
        reference_fn=lambda: apply_penalties_reference(logits, prompt, output, *factors),
        bytes_moved=moved,
    )


# name: (experts, k, hidden, intermediate, bias)
MOE_SHAPES = {
    "qwen3-30b-a3b": (128, 8, 2048, 768, False),
    "gpt-oss-20b": (32, 4, 2880, 2880, True),
}


def _moe_cases(name: str, token_counts: list[int]) -> list[BenchCase]:
    experts, k, hidden, inter, bias = MOE_SHAPES[name]
    w_gate_up = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=DTYPE) * hidden**-0.5
    w_down = torch.randn(experts, hidden, inter, device="cuda", dtype=DTYPE) * inter**-0.5
    b_gate_up = torch.randn(experts, 2 * inter, device="cuda", dtype=DTYPE) if bias else None
    b_down = torch.randn(experts, hidden, device="cuda", dtype=DTYPE) if bias else None
    per_expert = sum(
        t[0].numel() * t.element_size()
        for t in (w_gate_up, w_down, b_gate_up, b_down)
        if t is not None
    )
    cases = []
    for tokens in token_counts:
        x = torch.randn(tokens, hidden, device="cuda", dtype=DTYPE)
        router = torch.softmax(torch.randn(tokens, experts, device="cuda"), dim=-1)
        weights, ids = torch.topk(router, k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        used = int(ids.unique().numel())
        # Reads x, the routing and each chosen expert's weights once; writes the output.
        moved = 2 * tensor_bytes(x) + tensor_bytes(weights, ids) + used * per_expert
        args = (x, w_gate_up, w_down, weights, ids)
        kwargs = dict(activation="silu", b_gate_up=b_gate_up, b_down=b_down)
        cases.append(
            BenchCase(
                kernel=f"fused_moe ({name})",
                shape=f"T={tokens} E={experts} k={k} H={hidden} I={inter} bf16",
                triton_fn=lambda args=args, kwargs=kwargs: fused_moe(*args, **kwargs),
                reference_fn=lambda args=args, kwargs=kwargs: fused_moe_reference(*args, **kwargs),
                bytes_moved=moved,
            )
        )
    return cases


def bench_cases() -> list[BenchCase]:
    """Sampling, penalties and fused-MoE cases at realistic shapes (needs a CUDA GPU)."""
    cases = [_sample_case(n, kind) for kind in ("greedy", "top-p") for n in (1, 64, 256)]
    cases += [_penalties_case(n) for n in (1, 64, 256)]
    for name in MOE_SHAPES:
        cases += _moe_cases(name, [1, 256, 4096])
    return cases
