"""OutputStream: outputs a slow handler has not taken yet are merged, never reordered or
lost; errors and finished outputs are not merged into; requests with stop strings keep one
output per step."""

import asyncio

from max.pipelines.lib import RequestOutput, TokenLogprob
from max.serve.engine_client import OutputStream


def _drain(stream: OutputStream, count: int) -> list[RequestOutput]:
    async def take():
        return [await stream.get() for _ in range(count)]

    return asyncio.run(take())


def test_outputs_waiting_for_the_handler_are_merged_in_order():
    stream = OutputStream()
    stream.put(RequestOutput("r", [1], num_prompt_tokens=5, logprobs=[TokenLogprob(1, -0.1, [])]))
    stream.put(RequestOutput("r", [2], logprobs=[TokenLogprob(2, -0.2, [])]))
    stream.put(RequestOutput("r", [3], True, "length", logprobs=[TokenLogprob(3, -0.3, [])]))
    (merged,) = _drain(stream, 1)
    assert merged.new_token_ids == [1, 2, 3]
    assert [e.token_id for e in merged.logprobs] == [1, 2, 3]
    assert merged.finished and merged.finish_reason == "length" and merged.num_prompt_tokens == 5


def test_an_output_taken_already_is_not_merged_into():
    async def run():
        stream = OutputStream()
        stream.put(RequestOutput("r", [1]))
        first = await stream.get()
        waiter = asyncio.ensure_future(stream.get())
        await asyncio.sleep(0)
        stream.put(RequestOutput("r", [2]))
        return first, await waiter

    first, second = asyncio.run(run())
    assert first.new_token_ids == [1] and second.new_token_ids == [2]


def test_errors_and_what_follows_a_finish_stay_separate():
    stream = OutputStream()
    stream.put(RequestOutput("r", [1]))
    stream.put(RequestOutput("r", [], True, "error", error="engine failed", server_error=True))
    tokens, error = _drain(stream, 2)
    assert tokens.new_token_ids == [1] and not tokens.finished
    assert error.error == "engine failed"


def test_requests_with_stop_strings_keep_one_output_per_step():
    stream = OutputStream(merge=False)
    for token in (1, 2, 3):
        stream.put(RequestOutput("r", [token]))
    assert [o.new_token_ids for o in _drain(stream, 3)] == [[1], [2], [3]]
