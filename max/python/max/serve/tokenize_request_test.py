"""The /tokenize and /detokenize bodies: flags that default to true, prompt limits, ids."""

import pytest

from max.serve.api_errors import ApiError
from max.serve.tokenize_request import DetokenizeRequest, TokenizeRequest


def test_flags_default_to_true_and_null_is_refused():
    request = TokenizeRequest.from_json({"prompt": "Hi"})
    assert (request.is_chat, request.special_tokens(), request.generation_prompt()) == (False, True, True)
    assert TokenizeRequest.from_json({"prompt": "Hi", "add_special_tokens": False}).special_tokens() is False
    with pytest.raises(ApiError) as info:
        TokenizeRequest.from_json({"messages": None, "add_generation_prompt": None}).generation_prompt()
    assert info.value.param == "add_generation_prompt"
    assert TokenizeRequest.from_json({"messages": None}).is_chat


def test_prompt_text_and_token_ids():
    assert TokenizeRequest.from_json({"prompt": "Hi"}).prompt_text(limit=2) == "Hi"
    with pytest.raises(ApiError, match="more than the limit of 1"):
        TokenizeRequest.from_json({"prompt": "Hi"}).prompt_text(limit=1)
    with pytest.raises(ApiError, match="'prompt' \\(a string\\) or 'messages' is required"):
        TokenizeRequest.from_json({}).prompt_text(limit=10)
    assert DetokenizeRequest.from_json({"tokens": [1, 2]}).token_ids(vocab_size=3) == [1, 2]
    for tokens, needle in (([True], "must be a list of token ids"), ([3], "outside the vocabulary (size 3)")):
        with pytest.raises(ApiError) as info:
            DetokenizeRequest.from_json({"tokens": tokens}).token_ids(vocab_size=3)
        assert info.value.param == "tokens" and needle in info.value.message
