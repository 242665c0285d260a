"""The chat request model: one validation gives the conversation the template renders, the
images, the tools, and each choice's sampling parameters; what is wrong is a 400 naming it."""

import pytest

from max.pipelines.lib import SamplingParams
from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.serve.api_errors import ApiError
from max.serve.chat_request import ChatCompletionRequest

USER = {"role": "user", "content": "Hi"}


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.from_json({"model": "m", "messages": [USER], **fields})


def _error(**fields) -> ApiError:
    with pytest.raises(ApiError) as info:
        _chat(**fields)
    return info.value


def test_to_sampling_params_takes_every_sampling_field():
    chat = _chat(
        temperature=0.5, top_p=0.9, top_k=-1, min_p=0.1, seed=7, repetition_penalty=1.1, frequency_penalty=0.5,
        presence_penalty=-0.5, stop="END", stop_token_ids=[3], ignore_eos=True, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    assert chat.to_sampling_params(max_new_tokens=5, choice=2) == SamplingParams(
        max_new_tokens=5, temperature=0.5, top_k=0, top_p=0.9, min_p=0.1, seed=9, repetition_penalty=1.1,
        frequency_penalty=0.5, presence_penalty=-0.5, stop=["END"], stop_token_ids=[3], ignore_eos=True, logprobs=2,
    )  # fmt: skip


def test_defaults_and_the_output_constraint():
    chat = _chat(response_format={"type": "json_object"})
    params = chat.to_sampling_params()
    assert params == SamplingParams(structured_output=StructuredOutput("json_object"))
    assert chat.output_constraint == ("response_format", StructuredOutput("json_object"))
    assert (chat.n, chat.stream, chat.include_usage, chat.max_tokens, chat.logprob_alternatives) == (1, False, False, None, None)
    forced = StructuredOutput("lark", "start: 'x'")
    assert chat.to_sampling_params(structured_output=forced).structured_output == forced
    assert _chat(logprobs=True).to_sampling_params().logprobs == 0
    assert _chat(max_completion_tokens=4, max_tokens=9).max_tokens == 4


def test_the_conversation_as_the_template_takes_it():
    chat = _chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": "data:x"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ]
    )
    assert chat.conversation == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image"}]},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    assert [(i.url, i.param) for i in chat.images] == [("data:x", "messages[2].content[1].image_url")]
    assert chat.prompt_chars() == len("Be brief.") + len("ab") + len("see") + len("42")  # images count in tokens


def test_tools_keep_the_order_their_keys_were_sent_in():
    function = {"parameters": {"type": "object"}, "name": "lookup", "strict": True}
    chat = _chat(tools=[{"type": "function", "function": function}])
    assert chat.tool_specs == [{"type": "function", "function": function}]
    assert list(chat.tool_specs[0]["function"]) == ["parameters", "name", "strict"]
    assert chat.tool_choice == "auto" and chat.uses_tools and not chat.forces_tool_calls and chat.parallel_tool_calls
    named = _chat(tools=[{"function": {"name": "a"}}, {"function": {"name": "b"}}], tool_choice={"type": "function", "function": {"name": "b"}})
    assert named.forces_tool_calls and [t["function"]["name"] for t in named.callable_tools] == ["b"]
    assert not _chat(tools=[{"function": {"name": "a"}}], tool_choice="none").uses_tools


@pytest.mark.parametrize(
    "fields, param, message",
    [
        ({"n": True}, "n", "'n' must be an integer, not a boolean"),
        ({"n": "2"}, "n", "'n' must be an integer, got str"),
        ({"temperature": 7}, "temperature", "'temperature' must be between 0.0 and 2.0, got 7.0"),
        ({"stream": "yes"}, "stream", "'stream' must be a boolean, got str"),
        ({"top_logprobs": 2}, "top_logprobs", "'top_logprobs' needs 'logprobs': true"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "unknown role 'wizard'"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text",
         "'messages[0].content[0].text': Input should be a valid string"),
        ({"tool_choice": "required"}, "tool_choice", "'tool_choice': 'required' needs 'tools'"),
        ({"stream_options": {"include_usage": None}}, "stream_options", "'stream_options.include_usage' must be a boolean"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice",
         "only one output constraint per request (guided_regex, guided_choice given)"),
    ],
)  # fmt: skip
def test_what_is_wrong_is_named(fields, param, message):
    error = _error(**fields)
    assert (error.status, error.param, error.message) == (400, param, message)


def test_not_a_json_object():
    with pytest.raises(ApiError) as info:
        ChatCompletionRequest.from_json([USER])
    assert (info.value.code, info.value.message) == ("invalid_json", "the request body must be a JSON object")
