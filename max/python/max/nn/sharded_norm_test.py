"""RMSNorm across tensor-parallel ranks: in one process it is the norm itself, bit for bit;
over 2 gloo ranks, each holding its heads' columns and (by the attention layer's checkpoint
layout) its slice of a non-uniform weight, the joined outputs are the whole row's norm."""

import multiprocessing as mp
import socket

import pytest
import torch
import torch.distributed as dist

from max.errors import MaxError
from max.nn import (
    Attention,
    GemmaRMSNorm,
    RMSNorm,
    RotaryEmbedding,
    TensorParallel,
    tensor_parallel_context,
)
from max.nn.checkpoint_layout import Shard
from max.nn.sharded_norm import rms_norm_across_ranks

HEADS, HEAD_DIM, TOKENS = 4, 8, 5


@pytest.mark.parametrize("cls", [RMSNorm, GemmaRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_process_is_the_norm_itself(cls, dtype):
    g = torch.Generator().manual_seed(0)
    q_norm, k_norm = cls(32, eps=1e-5).to(dtype), cls(16, eps=1e-5).to(dtype)
    with torch.no_grad():
        q_norm.weight.normal_(1.0, 0.3, generator=g)
        k_norm.weight.normal_(1.0, 0.3, generator=g)
    qkv = torch.randn(TOKENS, 64, generator=g).to(dtype)
    q, k, _ = qkv.split((32, 16, 16), dim=-1)  # strided views, as Attention passes them
    out_q, out_k = rms_norm_across_ranks((q, k), (q_norm, k_norm), TensorParallel())
    assert torch.equal(out_q, q_norm(q)) and torch.equal(out_k, k_norm(k))


def _attention(num_kv_heads: int) -> Attention:
    rotary = RotaryEmbedding(HEAD_DIM, {"rope_type": "default", "rope_theta": 100.0}, 64, 64)
    return Attention(
        0, 16, HEADS, num_kv_heads, HEAD_DIM, rotary, qk_norm=lambda width: RMSNorm(width, 1e-6), qk_norm_per_head=False
    )


def _read(source, full: torch.Tensor, name: str) -> torch.Tensor:
    """What the weight loader reads for `source` from a checkpoint holding `full` as `name`."""
    if isinstance(source, Shard):
        assert source.name == name and source.full == full.shape[0]
        return full.narrow(source.dim, source.start, source.stop - source.start)
    assert source == name
    return full


def _rank_main(rank, size, port, num_kv_heads, q, k, q_weight, k_weight, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        with tensor_parallel_context(TensorParallel(rank, size, dist.group.WORLD)) as tp:
            attention = _attention(num_kv_heads)
        layout = attention.checkpoint_layout()
        with torch.no_grad():
            attention.q_norm.weight.copy_(_read(layout["q_norm.weight"], q_weight, "q_norm.weight"))
            attention.k_norm.weight.copy_(_read(layout["k_norm.weight"], k_weight, "k_norm.weight"))
        (q0, q1), (k0, k1) = attention.q_heads, attention.kv_heads
        q_cols, k_cols = q[:, q0 * HEAD_DIM : q1 * HEAD_DIM], k[:, k0 * HEAD_DIM : k1 * HEAD_DIM]
        with torch.no_grad():
            out_q, out_k = rms_norm_across_ranks((q_cols, k_cols), (attention.q_norm, attention.k_norm), tp)
        results.put((rank, attention.kv_heads, out_q, out_k))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("num_kv_heads", [2, 1])  # KV heads split, or replicated on both ranks
def test_two_ranks_give_the_whole_rows_norm(num_kv_heads):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(TOKENS, HEADS * HEAD_DIM, generator=g)
    k = 3.0 * torch.randn(TOKENS, num_kv_heads * HEAD_DIM, generator=g)
    # Non-uniform weights: a rank reading another rank's slice gives other outputs.
    q_weight = torch.linspace(0.2, 2.0, HEADS * HEAD_DIM)
    k_weight = torch.linspace(-1.0, 1.5, num_kv_heads * HEAD_DIM)
    whole = _attention(num_kv_heads)
    with torch.no_grad():
        whole.q_norm.weight.copy_(q_weight)
        whole.k_norm.weight.copy_(k_weight)
        expected_q, expected_k = whole.q_norm(q), whole.k_norm(k)
    assert not torch.equal(*q_weight.chunk(2)) and not torch.equal(*k_weight.chunk(2))

    ctx = mp.get_context("spawn")
    results, port = ctx.Queue(), _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, 2, port, num_kv_heads, q, k, q_weight, k_weight, results))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        outputs = sorted((results.get(timeout=120) for _ in procs), key=lambda r: r[0])
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
    assert [p.exitcode for p in procs] == [0, 0]
    torch.testing.assert_close(torch.cat([o[2] for o in outputs], dim=-1), expected_q, rtol=0, atol=1e-6)
    for _, (k0, k1), _, out_k in outputs:  # a replicated KV head: each holder has it whole
        torch.testing.assert_close(out_k, expected_k[:, k0 * HEAD_DIM : k1 * HEAD_DIM], rtol=0, atol=1e-6)


def test_a_norm_without_a_summable_statistic_is_refused_under_tensor_parallelism():
    rotary = RotaryEmbedding(HEAD_DIM, {"rope_type": "default", "rope_theta": 100.0}, 64, 64)
    with tensor_parallel_context(TensorParallel(0, 2)), pytest.raises(MaxError, match="not LayerNorm"):
        Attention(0, 16, HEADS, 2, HEAD_DIM, rotary, qk_norm=torch.nn.LayerNorm, qk_norm_per_head=False)
