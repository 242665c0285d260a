"""Micro-benchmark cases of the sampling and fused-MoE kernels, beside their references.

Sampling: a Llama 3 vocabulary (128256) at 1, 64 and 256 rows, all greedy (one pass over
the logits) or all top-p 0.9 at temperature 0.7 (a statistics pass, 8 search passes and
the race pass); penalties over 1024 prompt and 256 output tokens per row. MoE: the routed
experts of Qwen3-30B-A3B and gpt-oss-20b in bfloat16 at 1, 4, 256 and 4096 tokens, and
their routers (`moe_route`) at 1, 4 and 16 tokens.

Each case counts the fewest bytes the op must move: every input read once, every output
written once; for MoE only the weights of the experts that the step's tokens chose.

Run alone, it prints the decode-step table of both models' MoE layers (the one-kernel
router against the torch rule; the GEMV experts against the grouped GEMMs; a whole layer
before and after), each call replayed from a CUDA graph that rotates over enough copies of
the weights that none is read from L2, as in a model whose layers take turns:

    ./bazelw run //max/python/max/benchmark/kernels:sampling_moe_bench -- [--tokens 1 4]
    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.sampling_moe_bench
"""

from __future__ import annotations

import argparse
import sys

import torch

from max.benchmark.kernels.bench_harness import (
    BenchCase,
    bandwidth_row,
    copy_bandwidth_gbps,
    graph_time_us,
    tensor_bytes,
)
from max.entrypoints.process_setup import run_main
from max_kernels.mixture_of_experts import _fused_moe, _pick_blocks, fused_moe, fused_moe_reference
from max_kernels.moe_gemv import fused_moe_gemv
from max_kernels.moe_router import moe_route, moe_route_reference
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
# name: (routing, renormalize, router bias, activation)
ROUTING = {
    "qwen3-30b-a3b": ("softmax_topk", True, False, "silu"),
    "gpt-oss-20b": ("topk_softmax", True, True, "clamped_swiglu"),
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
        kwargs = dict(activation=ROUTING[name][3], b_gate_up=b_gate_up, b_down=b_down)
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


class Router:
    """One model's router: weight, bias and how it routes."""

    def __init__(self, name: str) -> None:
        experts, self.k, hidden, _, _ = MOE_SHAPES[name]
        self.routing, self.renormalize, bias, _ = ROUTING[name]
        self.weight = torch.randn(experts, hidden, device="cuda", dtype=DTYPE) * hidden**-0.5
        self.bias = torch.randn(experts, device="cuda", dtype=DTYPE) * 0.1 if bias else None

    def __call__(self, x: torch.Tensor, fused: bool = True):
        fn = moe_route if fused else moe_route_reference
        return fn(x, self.weight, self.bias, self.k, routing=self.routing, renormalize=self.renormalize)

    def bytes(self, x: torch.Tensor) -> int:
        """W and bias read once, x read, the weights and ids written."""
        parts = (self.weight, x) if self.bias is None else (self.weight, self.bias, x)
        return tensor_bytes(*parts) + x.shape[0] * self.k * (4 + 8)


def _router_cases(name: str, token_counts: list[int]) -> list[BenchCase]:
    router = Router(name)
    experts, k, hidden, _, _ = MOE_SHAPES[name]
    cases = []
    for tokens in token_counts:
        x = torch.randn(tokens, hidden, device="cuda", dtype=DTYPE)
        cases.append(
            BenchCase(
                kernel=f"moe_route ({name}, {router.routing})",
                shape=f"T={tokens} E={experts} k={k} H={hidden} bf16",
                triton_fn=lambda x=x: router(x),
                reference_fn=lambda x=x: router(x, fused=False),
                bytes_moved=router.bytes(x),
            )
        )
    return cases


def bench_cases() -> list[BenchCase]:
    """Sampling, penalties, router and fused-MoE cases at realistic shapes (needs a CUDA GPU)."""
    cases = [_sample_case(n, kind) for kind in ("greedy", "top-p") for n in (1, 64, 256)]
    cases += [_penalties_case(n) for n in (1, 64, 256)]
    for name in MOE_SHAPES:
        cases += _router_cases(name, [1, 4, 16])
        cases += _moe_cases(name, [1, 4, 256, 4096])
    return cases


# ----------------------------------------------------------------------------- decode table


class Experts:
    """One layer's routed experts in bfloat16 (gate/up stacked, as `fused_moe` takes them)."""

    def __init__(self, name: str) -> None:
        experts, self.k, hidden, inter, bias = MOE_SHAPES[name]
        self.activation = ROUTING[name][3]
        self.w_gate_up = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=DTYPE) * hidden**-0.5
        self.w_down = torch.randn(experts, hidden, inter, device="cuda", dtype=DTYPE) * inter**-0.5
        self.b_gate_up = torch.randn(experts, 2 * inter, device="cuda", dtype=DTYPE) * 0.1 if bias else None
        self.b_down = torch.randn(experts, hidden, device="cuda", dtype=DTYPE) * 0.1 if bias else None

    def __call__(self, x, weights, ids, path: str = "auto"):
        kwargs = dict(activation=self.activation, b_gate_up=self.b_gate_up, b_down=self.b_down)
        if path == "gemv":
            return fused_moe_gemv(x, self.w_gate_up, self.w_down, weights, ids, alpha=1.702, limit=7.0, **kwargs)
        if path == "gemm":
            blocks = _pick_blocks(ids.numel(), self.w_gate_up.shape[0])
            return _fused_moe(x, self.w_gate_up, self.w_down, weights, ids, *kwargs.values(), blocks)
        return fused_moe(x, self.w_gate_up, self.w_down, weights, ids, **kwargs)

    def bytes(self, x, weights, ids) -> int:
        """Each used expert's weights (and biases) once, x read, the output written."""
        parts = [t for t in (self.w_gate_up, self.w_down, self.b_gate_up, self.b_down) if t is not None]
        per_expert = sum(t[0].numel() * t.element_size() for t in parts)
        return int(ids.unique().numel()) * per_expert + 2 * tensor_bytes(x) + tensor_bytes(weights, ids)


def _decode_table(name: str, token_counts: list[int], copy: float) -> None:
    # Enough routers to fill ~4x an H100's 50 MB of L2; two layers of experts (1.2-1.6 GB each).
    one = Router(name)
    routers = [one] + [Router(name) for _ in range(max(3, 200_000_000 // one.weight.nbytes))]
    layers = [Experts(name) for _ in range(2)]
    for tokens in token_counts:
        _decode_rows(name, routers, layers, tokens, copy)


def _decode_rows(name: str, routers: list[Router], layers: list[Experts], tokens: int, copy: float) -> None:
    x = torch.randn(tokens, MOE_SHAPES[name][2], device="cuda", dtype=DTYPE)
    weights, ids = routers[0](x)
    rb, eb = routers[0].bytes(x), layers[0].bytes(x, weights, ids)
    rows = [
        ("moe_route (one kernel)", lambda i: routers[i](x), len(routers), rb),
        ("router in torch", lambda i: routers[i](x, fused=False), len(routers), rb),
        ("experts, GEMVs", lambda i: layers[i](x, weights, ids, "gemv"), len(layers), eb),
        ("experts, grouped GEMMs", lambda i: layers[i](x, weights, ids, "gemm"), len(layers), eb),
        ("layer: moe_route + fused_moe", lambda i: layers[i](x, *routers[i](x)), len(layers), rb + eb),
        (
            "layer before: torch router + grouped GEMMs",
            lambda i: layers[i](x, *routers[i](x, fused=False), "gemm"),
            len(layers),
            rb + eb,
        ),
    ]
    for label, fn, copies, moved in rows:
        us = graph_time_us(fn, copies)
        print(bandwidth_row(f"{name} T={tokens}: {label}", us, moved, copy), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Prints the decode-step table of both models' MoE layers."""
    parser = argparse.ArgumentParser(description="MoE decode steps: router and experts, fused and not")
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--model", choices=list(MOE_SHAPES), nargs="*", default=list(MOE_SHAPES))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("the benchmark needs a CUDA GPU", file=sys.stderr)
        return 1
    copy = copy_bandwidth_gbps()
    print(f"{torch.cuda.get_device_name()}; device-to-device copy: {copy:.0f} GB/s (read + write)")
    print()
    print("| call | µs | MB read | GB/s | of copy rate |")
    print("|---|---|---|---|---|")
    for name in args.model:
        _decode_table(name, args.tokens, copy)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
