"""How a streaming response catches up: deltas that waited for the handler are sent as one
chunk per choice, in order, with errors and finished deltas left alone."""

from max.pipelines.lib import TextDelta, TokenLogprob
from max.serve.generation_handler import merge_waiting


def _delta(text, ids, finished=False, reason=None, logprobs=None):
    return TextDelta(text, ids, logprobs, finished, reason)


def test_consecutive_deltas_of_a_choice_become_one():
    a, b = object(), object()
    waiting = [
        (a, _delta("He", [1], logprobs=[TokenLogprob(1, -0.5, [])])),
        (a, _delta("llo", [2], logprobs=[TokenLogprob(2, -0.25, [])])),
        (a, _delta("!", [3], True, "length", logprobs=[TokenLogprob(3, -1.0, [])])),
        (b, _delta("x", [7])),
        (b, None),  # an error stays on its own
    ]
    merged = merge_waiting(waiting)
    assert [choice for choice, _ in merged] == [a, b, b]
    first = merged[0][1]
    assert (first.text, first.token_ids, first.finished, first.finish_reason) == ("Hello!", [1, 2, 3], True, "length")
    assert [e.token_id for e in first.logprobs] == [1, 2, 3]
    assert merged[1][1].text == "x" and merged[2][1] is None


def test_nothing_is_merged_into_a_finished_delta_or_across_choices():
    a, b = object(), object()
    waiting = [(a, _delta("x", [1], True, "stop")), (a, _delta("", [], True, "stop")), (b, _delta("y", [2])), (a, _delta("z", [3]))]
    assert [d.text for _, d in merge_waiting(waiting)] == ["x", "", "y", "z"]
