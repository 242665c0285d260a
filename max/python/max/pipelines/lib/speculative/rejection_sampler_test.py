"""The verification rules keep the target's distribution: on a 5-token vocabulary, the
emitted tokens' frequencies match the target's probabilities, for the engine's rule
(deterministic drafts checked against the sampler's own seeded draws) and for the general
rule with a draft distribution q (accept with min(1, p/q), else draw from max(0, p - q))."""

import torch

from max.pipelines.lib.sampling.sampler import SamplingBatch, sample_on_device
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.speculative.rejection_sampler import accepted_draws, rejection_sample

V = 5
TRIALS = 4000


def _target_logits() -> torch.Tensor:
    # Two verified positions (one draft), shapes unlike each other and unlike uniform.
    return torch.tensor([[1.0, 0.2, -0.5, 0.8, 0.0], [-1.0, 0.5, 1.2, 0.0, 0.3]])


def _close(counts: torch.Tensor, probs: torch.Tensor, n: int) -> None:
    """Each frequency within 4.5 standard deviations of its probability."""
    freq = counts / n
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 4.5 * sigma + 1e-9).all(), (freq, probs)


def test_accepted_draws_takes_drafts_up_to_the_first_disagreement():
    assert accepted_draws([5, 6, 7], [5, 6, 9, 1]) == (2, [5, 6, 9])
    assert accepted_draws([5, 6], [5, 6, 8]) == (2, [5, 6, 8])
    assert accepted_draws([5], [4, 3]) == (0, [4])


def test_seeded_draws_at_each_position_keep_the_target_distribution():
    logits = _target_logits()
    probs = torch.softmax(logits / 0.9, dim=-1)
    draft = 3
    params = SamplingParams(temperature=0.9)
    first = torch.zeros(V)
    second = torch.zeros(V)
    accepted_count = 0
    # Each trial is a request with its own seed: verify [draft] at output positions 4, 5.
    batch = SamplingBatch(
        params=[params] * (2 * TRIALS),
        seeds=[s for s in range(TRIALS) for _ in range(2)],
        steps=[4, 5] * TRIALS,
        prompt_tokens=(),
        output_tokens=(),
    )
    draws = sample_on_device(logits.repeat(TRIALS, 1), batch).to_host().tokens
    for t in range(TRIALS):
        accepted, emitted = accepted_draws([draft], draws[2 * t : 2 * t + 2])
        first[emitted[0]] += 1
        if accepted:
            accepted_count += 1
            second[emitted[1]] += 1
    _close(first, probs[0], TRIALS)  # the first emitted token follows p_0
    _close(torch.tensor([accepted_count]), probs[0, draft : draft + 1], TRIALS)  # accepted with p_0(d)
    _close(second, probs[1], accepted_count)  # after an acceptance, the bonus follows p_1


def test_general_rejection_sampling_keeps_the_target_distribution():
    target = torch.softmax(_target_logits(), dim=-1)
    q = torch.softmax(torch.tensor([[0.0, 1.5, 0.0, -1.0, 0.5]]), dim=-1)
    gen = torch.Generator().manual_seed(0)
    first = torch.zeros(V)
    second = torch.zeros(V)
    accepted_count = 0
    for _ in range(TRIALS):
        draft = int(torch.multinomial(q[0], 1, generator=gen))
        accepted, emitted = rejection_sample(target, q, [draft], gen)
        first[emitted[0]] += 1
        if accepted:
            accepted_count += 1
            second[emitted[1]] += 1
    _close(first, target[0], TRIALS)
    _close(second, target[1], accepted_count)
    expected_acceptance = torch.minimum(target[0], q[0]).sum()  # sum_x min(p, q)
    _close(torch.tensor([accepted_count]), expected_acceptance.reshape(1), TRIALS)
