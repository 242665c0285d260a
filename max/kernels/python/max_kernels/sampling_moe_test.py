"""Sampling and fused-MoE kernels under Triton's interpreter, against their references.

`sample_tokens_reference` and `apply_penalties_reference` are checked against the batched
sampler's formulas as they were before the sampler called these kernels (copied here as an
oracle, since the sampler now calls this module), and the Triton `sample_tokens` against
both, token for token: greedy, temperature only, top-k, top-p, min-p and mixes, per row, over
several seeds and steps, with blocks small enough that every pass loops. The support
tests run hot rows whose few kept tokens are nearly equally likely, so that a cutoff one
token off would show within a few draws.

Tolerances: token ids must be equal. apply_penalties in float32: bit-exact (the same IEEE
operations in the same order). fused_moe: float32 rtol/atol 1e-5 (sums in another order);
float16 1e-3 / 2e-3; bfloat16 2e-2 / 6e-2, because the interpreter truncates float32 to
bfloat16 where torch rounds to nearest, which can move an intermediate (gate, up, act, h)
by one bfloat16 ulp (2**-8 relative), and the reference accumulates the k weighted
outputs in bfloat16 where the kernel sums them in float32.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max_kernels.mixture_of_experts import (
    MoeBlocks,
    _fused_moe,
    fused_moe,
    fused_moe_reference,
)
from max_kernels.sampling import (
    _launch_sample,
    apply_penalties,
    apply_penalties_reference,
    hash32,
    sample_tokens,
    sample_tokens_reference,
    uniform_noise,
)

MOE_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=6e-2),
}

# Rows as (temperature, top_k, top_p, min_p): every filter alone and mixed.
ROWS = [
    (0.0, 0, 1.0, 0.0),  # greedy
    (1.0, 0, 1.0, 0.0),  # temperature only
    (0.7, 0, 1.0, 0.0),
    (1.0, 1, 1.0, 0.0),  # top_k 1 is greedy even when hot
    (1.3, 40, 1.0, 0.0),  # top-k
    (0.9, 0, 0.8, 0.0),  # top-p
    (1.0, 0, 1.0, 0.05),  # min-p
    (1.5, 30, 0.9, 0.0),  # top-k then top-p
    (2.0, 0, 0.95, 0.02),  # top-p and min-p
    (1.1, 25, 0.7, 0.01),  # all three
    (0.0, 10, 0.5, 0.1),  # greedy wins over the filters
    (1.0, 5000, 1.0, 0.0),  # top_k beyond the vocabulary: off
    (1.0, -1, 1.0, 0.0),  # top_k -1: off
]


def _row_tensors(rows, seeds, steps):
    temp, top_k, top_p, min_p = zip(*rows)
    return (
        torch.tensor(temp, dtype=torch.float32),
        torch.tensor(top_k, dtype=torch.int32),
        torch.tensor(top_p, dtype=torch.float32),
        torch.tensor(min_p, dtype=torch.float32),
        torch.tensor(seeds, dtype=torch.int64),
        torch.tensor(steps, dtype=torch.int64),
    )


def _logits(n, vocab, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * scale


# ----------------------------------------------------------------------------- sampling


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_and_noise_match_plain_integer_math():
    # Python integers, independent of torch's int64 arithmetic in `hash32`.
    values = [0, 1, 12345, 2**31, 2**32 - 1]
    assert hash32(torch.tensor(values)).tolist() == [_lowbias32(v) for v in values]
    seeds = [0, 7, -(2**63), 2**63 - 1, -1]
    steps = [0, 3, 1, 2**40, 9]
    noise = uniform_noise(torch.tensor(seeds), torch.tensor(steps), 257)
    for r, (seed, step) in enumerate(zip(seeds, steps)):
        row = _lowbias32((seed & 0xFFFFFFFF) ^ _lowbias32((seed >> 32) & 0xFFFFFFFF))
        row = _lowbias32(row ^ _lowbias32(step & 0xFFFFFFFF))
        for v in (0, 1, 128, 256):
            high = _lowbias32(row ^ _lowbias32(v)) >> 8
            # In float32, as the sampler and the kernel compute it (the + 0.5 rounds).
            u = (torch.tensor(high, dtype=torch.float32) + 0.5) * (1.0 / 2**24)
            assert noise[r, v].item() == u.item()


def test_noise_never_reaches_one_and_forbidden_tokens_never_win():
    # (2**24 - 1 + 0.5) / 2**24 rounds to 1.0 in float32: u == 1 made -log(-log(u)) = +inf,
    # so the token won whatever its logit, and a -inf (masked or filtered) one won as NaN.
    # Find a (seed, token) whose top 24 hash bits are all ones, then race on it.
    vocab = 1 << 16
    seeds = torch.arange(400)
    noise = uniform_noise(seeds, torch.zeros_like(seeds), vocab)
    assert (noise < 1.0).all()
    hits = (noise == noise.max()).nonzero()
    row, token = hits[0].tolist()
    assert noise[row, token].item() == 1.0 - 2.0**-24
    logits = torch.zeros(1, vocab)
    logits[0, token] = float("-inf")
    args = _row_tensors([(1.0, 0, 1.0, 0.0)], [row], [0])
    assert sample_tokens_reference(logits, *args).item() != token
    assert _launch_sample(logits, *args, 4096, 1024).item() != token


def test_race_on_flat_logits_follows_the_noise_bit_for_bit():
    # With equal logits the race is the argmax of the noise alone: the kernel's uint32 hash
    # must reproduce `uniform_noise` exactly for the winners to agree on every row.
    n, vocab = 24, 509
    logits = torch.full((n, vocab), 0.25)
    rows = [(1.0, 0, 1.0, 0.0)] * n
    seeds = [s * 0x9E3779B97F4A7C15 % 2**64 - 2**63 for s in range(n)]
    args = _row_tensors(rows, seeds, list(range(n)))
    expected = torch.argmax(uniform_noise(args[4], args[5], vocab), dim=-1)
    assert torch.equal(sample_tokens_reference(logits, *args), expected)
    assert torch.equal(_launch_sample(logits, *args, 128, 64), expected)


@pytest.mark.parametrize("vocab,block,search_block", [(300, 4096, 1024), (997, 256, 128)])
def test_sample_tokens_matches_reference(vocab, block, search_block):
    n = len(ROWS)
    for trial in range(2):
        logits = _logits(n, vocab, seed=trial)
        seeds = [1000 * trial + 17 * i - 50 for i in range(n)]
        steps = [trial * 5 + i for i in range(n)]
        args = _row_tensors(ROWS, seeds, steps)
        expected = sample_tokens_reference(logits, *args)
        got = _launch_sample(logits, *args, block, search_block)
        assert got.dtype == torch.int64
        assert torch.equal(got, expected), (trial, got.tolist(), expected.tolist())


def test_public_sample_tokens_on_a_mixed_batch():
    logits = _logits(len(ROWS), 640, seed=5)
    args = _row_tensors(ROWS, list(range(len(ROWS))), [3] * len(ROWS))
    assert torch.equal(sample_tokens(logits, *args), sample_tokens_reference(logits, *args))


@pytest.mark.parametrize(
    "row",
    [
        (50.0, 6, 1.0, 0.0),  # top-k: 6 of the 8
        (4.0, 0, 0.5, 0.0),  # top-p: about 4 of the 8
        (0.5, 0, 1.0, 0.4),  # min-p: the leads within a factor 0.4 of the best
        (4.0, 6, 0.6, 0.0),  # top-k then top-p: about 4
    ],
)
def test_hot_rows_keep_exactly_the_filtered_support(row):
    # Eight leading tokens (spread over the row) of similar weight, the rest far below: the
    # filters cut inside the leads, so a token on either side of a cutoff is drawn often and
    # a cutoff one token off shows.
    n, vocab = 24, 400
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(n, vocab, generator=g) - 30.0
    lead = torch.randperm(vocab, generator=g)[:8]
    logits[:, lead] = 10.0 + 0.3 * torch.randn(n, 8, generator=g)
    args = _row_tensors([row] * n, [3 * i + 1 for i in range(n)], [i % 4 for i in range(n)])
    expected = sample_tokens_reference(logits, *args)
    got = _launch_sample(logits, *args, 512, 256)
    assert torch.equal(got, expected)
    assert len(set(expected.tolist())) > 2  # the draws really spread over the support


def test_greedy_ties_take_the_first_index():
    logits = _logits(3, 300, seed=2)
    logits[0, [17, 250]] = 50.0
    logits[1, [0, 299]] = 50.0
    logits[2, [130, 131]] = 50.0
    args = _row_tensors([(0.0, 0, 1.0, 0.0)] * 3, [0, 0, 0], [0, 0, 0])
    assert _launch_sample(logits, *args, 128, 64).tolist() == [17, 0, 130]


def _sampler_before_kernels(logits, rows, seeds, steps):
    """The batched sampler as max.pipelines.lib.sampling.sampler computed it before it called these
    kernels (commit dd253ae), kept here as an independent oracle: Python lists of settings,
    a row subset for the sampled rows, the filter only when some sampled row asks for it."""
    vocab = logits.shape[1]
    tokens = torch.argmax(logits, dim=-1)
    sampled = [i for i, (t, k, _, _) in enumerate(rows) if not (t == 0.0 or k == 1)]
    if not sampled:
        return tokens
    sub_rows = [rows[i] for i in sampled]
    index = torch.tensor(sampled)
    sub = logits[index] / torch.tensor([r[0] for r in sub_rows])[:, None]
    if any(k > 0 or p < 1.0 or m > 0.0 for _, k, p, m in sub_rows):
        top_k = torch.tensor([k if k > 0 else vocab for _, k, _, _ in sub_rows])
        top_p = torch.tensor([p for _, _, p, _ in sub_rows])
        min_p = torch.tensor([m for _, _, _, m in sub_rows])
        sorted_logits, order = torch.sort(sub, dim=-1, descending=True)
        drop = torch.arange(vocab)[None, :] >= top_k[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop |= mass_before >= top_p[:, None]
        drop |= probs < min_p[:, None] * probs[:, :1]
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        sub = torch.empty_like(sub).scatter_(1, order, sorted_logits)
    noise = uniform_noise(
        torch.tensor([seeds[i] for i in sampled]), torch.tensor([steps[i] for i in sampled]), vocab
    )
    scores = torch.log_softmax(sub, dim=-1) - torch.log(-torch.log(noise))
    tokens[index] = torch.argmax(scores, dim=-1)
    return tokens


def test_reference_reproduces_the_sampler():
    for trial in range(2):
        logits = _logits(len(ROWS), 700, seed=20 + trial)
        seeds = [trial * 31 + i for i in range(len(ROWS))]
        steps = [i * trial for i in range(len(ROWS))]
        expected = _sampler_before_kernels(logits, ROWS, seeds, steps)
        args = _row_tensors(ROWS, seeds, steps)
        assert torch.equal(sample_tokens_reference(logits, *args), expected)
        assert torch.equal(_launch_sample(logits, *args, 1024, 512), expected)


def _penalty_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n, vocab = 5, 300
    logits = torch.randn(n, vocab, generator=g) * 4
    prompt = torch.randint(0, vocab, (n, 40), generator=g)
    output = torch.randint(0, 60, (n, 30), generator=g)  # small range: repeated tokens
    prompt[1, 25:] = -1
    prompt[3] = -1  # no prompt
    output[2, 10:] = -1
    output[4] = -1  # no output yet
    rep = torch.tensor([1.3, 1.0, 0.8, 2.0, 1.1])
    freq = torch.tensor([0.5, -0.4, 0.0, 1.2, 0.3])
    pres = torch.tensor([0.2, 0.7, -1.0, 0.0, 0.9])
    return logits, prompt, output, rep, freq, pres


def test_apply_penalties_matches_reference_exactly():
    args = _penalty_inputs()
    expected = apply_penalties_reference(*args)
    got = apply_penalties(*args)
    assert not torch.equal(expected, args[0])
    assert torch.equal(got, expected)


def _penalties_before_kernels(logits, prompts, outputs, rep, freq, pres):
    """The sampler's penalties before it called these kernels (commit dd253ae): id lists
    per row, counts by index_add, the prompt only where the repetition penalty is not 1."""
    n, vocab = logits.shape
    counts = torch.zeros(n, vocab)
    seen = torch.zeros(n, vocab, dtype=torch.bool)
    for i, (prompt, out) in enumerate(zip(prompts, outputs)):
        if out:
            counts[i].index_add_(0, torch.tensor(out), torch.ones(len(out)))
        if float(rep[i]) != 1.0 and prompt:
            seen[i, torch.tensor(prompt)] = True
    seen |= counts > 0
    penalized = torch.where(logits > 0, logits / rep[:, None], logits * rep[:, None])
    logits = torch.where(seen, penalized, logits)
    return logits - freq[:, None] * counts - pres[:, None] * (counts > 0).float()


def test_penalties_reference_reproduces_the_sampler():
    logits, prompt, output, rep, freq, pres = _penalty_inputs(seed=1)
    expected = _penalties_before_kernels(
        logits,
        [[t for t in row if t >= 0] for row in prompt.tolist()],
        [[t for t in row if t >= 0] for row in output.tolist()],
        rep,
        freq,
        pres,
    )
    got = apply_penalties_reference(logits, prompt, output, rep, freq, pres)
    assert torch.equal(got, expected)


def test_apply_penalties_without_ids():
    logits, _, _, rep, freq, pres = _penalty_inputs(seed=2)
    empty = torch.empty(logits.shape[0], 0, dtype=torch.int64)
    got = apply_penalties(logits, empty, empty, rep, freq, pres)
    assert torch.equal(got, logits)


# ----------------------------------------------------------------------------- MoE


def _moe_inputs(tokens, hidden, inter, experts, k, dtype, bias, seed=0, skip_experts=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    w_gate_up = (torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5).to(dtype)
    w_down = (torch.randn(experts, hidden, inter, generator=g) / inter**0.5).to(dtype)
    b_gate_up = torch.randn(experts, 2 * inter, generator=g).to(dtype) if bias else None
    b_down = torch.randn(experts, hidden, generator=g).to(dtype) if bias else None
    allowed = torch.tensor([e for e in range(experts) if e not in skip_experts])
    ids = torch.stack(
        [allowed[torch.randperm(len(allowed), generator=g)[:k]] for _ in range(tokens)]
    ).to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, k, generator=g), dim=-1)
    return x, w_gate_up, w_down, weights, ids, b_gate_up, b_down


def _check_moe(inputs, activation, dtype, blocks=None):
    x, w_gate_up, w_down, weights, ids, b_gate_up, b_down = inputs
    expected = fused_moe_reference(
        x,
        w_gate_up,
        w_down,
        weights,
        ids,
        activation=activation,
        b_gate_up=b_gate_up,
        b_down=b_down,
    )
    if blocks is None:
        got = fused_moe(
            x,
            w_gate_up,
            w_down,
            weights,
            ids,
            activation=activation,
            b_gate_up=b_gate_up,
            b_down=b_down,
        )
    else:
        got = _fused_moe(x, w_gate_up, w_down, weights, ids, activation, b_gate_up, b_down, blocks)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, expected, **MOE_TOL[dtype])


# Small tiles so that the K loops and the output slices iterate.
SMALL = MoeBlocks(16, 16, 32, 16, num_warps=4, num_stages=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_moe_matches_reference(dtype, bias, monkeypatch):
    # Poison the kernel's scratch (torch.empty) so unwritten rows cannot pass.
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)
    inputs = _moe_inputs(9, 64, 48, 6, 2, dtype, bias, seed=1, skip_experts=(2, 5))
    _check_moe(inputs, "silu", dtype, SMALL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_moe_gelu_tanh_with_biases(dtype):
    inputs = _moe_inputs(6, 32, 64, 4, 3, dtype, bias=True, seed=2)
    _check_moe(inputs, "gelu_tanh", dtype, SMALL)


def test_fused_moe_single_token():
    inputs = _moe_inputs(1, 64, 32, 8, 4, torch.bfloat16, bias=False, seed=3)
    _check_moe(inputs, "silu", torch.bfloat16)


def test_fused_moe_default_blocks_many_tokens_per_expert():
    # 40 tokens x 4 slots over 4 experts: 40 rows per expert take the 32-row blocks.
    inputs = _moe_inputs(40, 32, 32, 4, 4, torch.float16, bias=True, seed=4)
    _check_moe(inputs, "silu", torch.float16)


def _gpt_oss_experts(x, gate_up_proj, gate_up_bias, down_proj, down_bias, weights, ids, alpha, limit):
    """transformers' GptOssExperts loop (interleaved gate/up, [E, H, 2I] and [E, I, H]
    weights applied as x @ W), written out as the independent oracle."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(ids.shape[1]):
            e = int(ids[t, slot])
            gate_up = x[t] @ gate_up_proj[e] + gate_up_bias[e]
            gate, up = gate_up[::2].clamp(max=limit), gate_up[1::2].clamp(min=-limit, max=limit)
            h = (up + 1) * (gate * torch.sigmoid(gate * alpha))
            out[t] += (h @ down_proj[e] + down_bias[e]) * weights[t, slot]
    return out


def test_clamped_swiglu_reference_is_gpt_oss_experts():
    x, w_gate_up, w_down, weights, ids, b_gate_up, b_down = _moe_inputs(7, 32, 16, 4, 2, torch.float32, True, seed=5)
    x = x * 4  # so that both clamps bind
    alpha, limit = 1.702, 3.0
    expected = fused_moe_reference(
        x, w_gate_up, w_down, weights, ids, activation="clamped_swiglu", b_gate_up=b_gate_up, b_down=b_down,
        alpha=alpha, limit=limit,
    )  # fmt: skip
    # Our [gate | up] rows, interleaved back into transformers' [E, H, 2I] layout.
    inter = w_gate_up.shape[1] // 2
    interleaved = torch.stack((w_gate_up[:, :inter], w_gate_up[:, inter:]), dim=2).flatten(1, 2)
    bias = torch.stack((b_gate_up[:, :inter], b_gate_up[:, inter:]), dim=2).flatten(1, 2)
    oracle = _gpt_oss_experts(
        x, interleaved.transpose(1, 2), bias, w_down.transpose(1, 2), b_down, weights, ids, alpha, limit
    )
    torch.testing.assert_close(expected, oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_moe_clamped_swiglu(dtype):
    x, *rest = _moe_inputs(9, 48, 32, 5, 2, dtype, bias=True, seed=6, skip_experts=(1,))
    x = x * 3  # pushes gate and up past the clamp
    kwargs = dict(activation="clamped_swiglu", b_gate_up=rest[4], b_down=rest[5], alpha=1.702, limit=2.5)
    expected = fused_moe_reference(x, *rest[:4], **kwargs)
    got = _fused_moe(x, *rest[:4], "clamped_swiglu", rest[4], rest[5], SMALL, 1.702, 2.5)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, **MOE_TOL[dtype])
    torch.testing.assert_close(fused_moe(x, *rest[:4], **kwargs), expected, **MOE_TOL[dtype])
