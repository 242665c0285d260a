"""The completion request model: prompts in every form, echo and prompt logprobs, and each
choice's sampling parameters."""

import pytest

from max.pipelines.lib import SamplingParams
from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.serve.api_errors import ApiError
from max.serve.completion_request import CompletionRequest


def _completion(**fields) -> CompletionRequest:
    return CompletionRequest.from_json({"model": "m", "prompt": "Hello", **fields})


def test_to_sampling_params_with_echo_scores_the_prompt_too():
    scored = _completion(echo=True, logprobs=2, max_tokens=0, seed=1, guided_regex="a+")
    assert scored.to_sampling_params(max_new_tokens=0, choice=1) == SamplingParams(
        max_new_tokens=0, seed=2, logprobs=2, prompt_logprobs=2, structured_output=StructuredOutput("regex", "a+")
    )
    plain = _completion(logprobs=3)
    assert (plain.to_sampling_params().logprobs, plain.to_sampling_params().prompt_logprobs) == (3, None)
    assert plain.max_tokens == 16  # OpenAI's default for completions


@pytest.mark.parametrize(
    "prompt, prompts",
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_every_prompt_form_is_a_list_of_prompts(prompt, prompts):
    request = _completion(prompt=prompt)
    assert request.prompts == prompts
    assert request.prompt_chars() == sum(len(p) for p in prompts if isinstance(p, str))


@pytest.mark.parametrize(
    "fields, param, needle",
    [
        ({"prompt": [True, 1]}, "prompt", "'prompt' must be a string, a list of strings"),
        ({"prompt": [[1], "a"]}, "prompt[0]", "'prompt[0]': "),
        ({"prompt": ["a"] * 257}, "prompt", "at most 256 prompts"),
        ({"max_tokens": 0}, "max_tokens", "'max_tokens' may be 0 only with 'echo': true"),
        ({"logprobs": 21}, "logprobs", "'logprobs' must be between 0 and 20, got 21"),
        ({"seed": "abc"}, "seed", "'seed': Input should be a valid integer"),
    ],
)
def test_what_is_wrong_is_named(fields, param, needle):
    with pytest.raises(ApiError) as info:
        _completion(**fields)
    assert info.value.param == param and needle in info.value.message, info.value.message
