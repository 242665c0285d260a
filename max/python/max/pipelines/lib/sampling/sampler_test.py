"""Token selection: greedy, filters, penalties, and the counter-based seeded noise."""

import math

import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib.sampling.sampler import SamplingBatch, hash32, sample, uniform_noise
from max.pipelines.lib.sampling.sampling_params import SamplingParams


def _batch(params, outputs=None, prompts=None, seeds=None, steps=None):
    n = len(params)
    return SamplingBatch(
        params=params,
        seeds=seeds or [7] * n,
        steps=steps or [0] * n,
        prompt_tokens=prompts or [[]] * n,
        output_tokens=outputs or [[]] * n,
    )


def test_greedy_takes_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, -1.0, 4.9]])
    out = sample(logits, _batch([SamplingParams(temperature=0.0)] * 2))
    assert out.tokens == [1, 0]


def test_top_k_one_is_greedy_even_when_hot():
    logits = torch.tensor([[0.1, 3.0, 0.2]])
    assert sample(logits, _batch([SamplingParams(temperature=5.0, top_k=1)])).tokens == [1]


def test_filters_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for params, allowed in [
        (SamplingParams(top_k=2), {0, 1}),
        (SamplingParams(top_p=0.7), {0, 1}),
        (SamplingParams(top_p=0.4), {0}),
        (SamplingParams(min_p=0.25), {0, 1, 2}),
    ]:
        seen = set()
        for seed in range(200):
            seen |= set(sample(logits, _batch([params], seeds=[seed])).tokens)
        assert seen == allowed, params


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = torch.log(probs)[None].repeat(4000, 1)
    params = [SamplingParams(temperature=1.0)] * 4000
    tokens = sample(logits, _batch(params, seeds=list(range(4000)))).tokens
    freq = torch.bincount(torch.tensor(tokens), minlength=3).float() / 4000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_noise_depends_only_on_seed_step_and_token():
    a = uniform_noise(torch.tensor([5, 5, 6]), torch.tensor([0, 1, 0]), 64)
    b = uniform_noise(torch.tensor([6]), torch.tensor([0]), 64)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    assert (a > 0).all() and (a < 1).all()
    # Negative and huge seeds are fine (seeds are 64-bit).
    uniform_noise(torch.tensor([-(2**63), 2**63 - 1]), torch.tensor([3, 4]), 8)


def test_hash32_known_values_and_range():
    x = torch.tensor([0, 1, 2**32 - 1], dtype=torch.int64)
    h = hash32(x)
    assert ((h >= 0) & (h < 2**32)).all()
    assert len(set(h.tolist())) == 3


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    rep = sample(logits.clone(), _batch([SamplingParams(temperature=0.0, repetition_penalty=4.0)], prompts=[[0]]))
    assert rep.tokens == [2]  # token 0: 2.0 / 4 = 0.5 < 1.0
    freq = sample(
        logits.clone(),
        _batch([SamplingParams(temperature=0.0, frequency_penalty=0.6)], outputs=[[0, 0]]),
    )
    assert freq.tokens == [2]  # 2.0 - 1.2 = 0.8 < 1.0
    pres = sample(
        logits.clone(),
        _batch([SamplingParams(temperature=0.0, presence_penalty=1.6)], outputs=[[0, 0, 2]]),
    )
    assert pres.tokens == [3]  # 0.5 beats 2.0 - 1.6 and 1.0 - 1.6


def test_logprobs_are_of_the_raw_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    out = sample(logits, _batch([SamplingParams(temperature=0.0, logprobs=2)]))
    expected = torch.log_softmax(logits, -1)[0]
    assert out.tokens == [2]
    assert out.logprobs[0] == pytest.approx(expected[2].item())
    assert out.top_ids[0] == [2, 1]
    assert out.top_logprobs[0][1] == pytest.approx(expected[1].item())
    assert math.isfinite(out.logprobs[0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"top_k": -3}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"logprobs": 50}, "logprobs"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(MaxError, match=message):
        SamplingParams(**kwargs).validate()
