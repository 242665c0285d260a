"""The new API routes through the real `serve` process and engine, on a tiny checkpoint
(SmolLM2's tokenizer): Anthropic's Messages and OpenAI's Responses answer greedily the
same text as the chat completion of the same conversation, streamed and not;
`prompt_tokens_details.cached_tokens` reports the prefix cache's hits on a repeated
prompt; `logit_bias` steers the engine's sampler (a token outside the vocabulary is a 400);
and --reasoning-parser and --scheduling-policy are accepted on the command line.
"""

import anthropic
import openai
import pytest

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

MODEL = "tiny"
QUESTION = "Tell me a story about a cat and a dog who are friends"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", llama_config(), seed=3, with_tokenizer=True)
    srv = ServerProcess(
        "--model-path", str(path), "--served-model-name", MODEL, "--max-length", "256", "--kv-cache-page-size", "4",
        "--quantization-encoding", "float32", "--reasoning-parser", "qwen3", "--scheduling-policy", "priority",
    )  # fmt: skip
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def chat_text(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0
    )
    return reply.choices[0].message.content, reply.usage


def test_cached_tokens_count_the_prefix_cache_hits(server, chat_text):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    again = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=2, temperature=0)
    first_usage = chat_text[1]
    assert first_usage.prompt_tokens_details.cached_tokens == 0
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < again.usage.prompt_tokens and cached % 4 == 0  # whole pages of the shared prompt


def test_anthropic_messages_match_the_chat(server, chat_text):
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    # This client version has no `temperature` argument: the field still reaches the server.
    ask = dict(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": QUESTION}], extra_body={"temperature": 0})
    reply = client.messages.create(**ask)
    assert reply.content[0].text == chat_text[0] and reply.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(**ask) as stream:
        assert "".join(stream.text_stream) == chat_text[0]
    assert client.messages.count_tokens(model=MODEL, messages=ask["messages"]).input_tokens == chat_text[1].prompt_tokens


def test_openai_responses_match_the_chat(server, chat_text):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0)
    assert response.output_text == chat_text[0]
    with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0) as stream:
        assert stream.get_final_response().output_text == chat_text[0]
    assert client.responses.retrieve(response.id).output_text == chat_text[0]


def test_logit_bias_steers_the_sampler(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    ask = dict(model=MODEL, prompt=QUESTION, max_tokens=3, temperature=0, extra_body={"return_token_ids": True, "priority": 2})
    forced = client.completions.create(logit_bias={"42": 100}, **ask)
    assert forced.choices[0].model_extra["token_ids"] == [42, 42, 42]
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(logit_bias={"999999": 1}, **ask)


def test_prompt_logprobs_on_completions(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    ask = dict(model=MODEL, prompt="Hello there my friend", max_tokens=1, temperature=0)
    echoed = client.completions.create(echo=True, logprobs=0, **ask).choices[0].logprobs
    reply = client.completions.create(extra_body={"prompt_logprobs": 2, "return_token_ids": True}, **ask)
    extra = reply.choices[0].model_extra
    positions, ids = extra["prompt_logprobs"], extra["prompt_token_ids"]
    assert len(positions) == len(ids) and positions[0] is None
    for token_id, position, expected in zip(ids[1:], positions[1:], echoed.token_logprobs[1 : len(ids)]):
        assert position[str(token_id)]["logprob"] == pytest.approx(expected, abs=1e-5)
        ranked = sorted((v["rank"], v["logprob"]) for v in position.values() if v["rank"] is not None)
        assert [r for r, _ in ranked] == [1, 2] and ranked[0][1] >= ranked[1][1]
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        client.completions.create(extra_body={"prompt_logprobs": 21}, **ask)
