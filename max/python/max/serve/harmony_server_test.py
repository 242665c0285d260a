"""A harmony model (gpt-oss format) through the real server: the final channel is
`message.content`, the analysis channel `message.reasoning_content` (streamed as
`delta.reasoning_content`), and `reasoning_effort` reaches the chat template. The model is
a tiny gpt-oss checkpoint scripted to answer in harmony (see max.testing.harmony_model)."""

import json

import httpx
import openai
import pytest

from max.testing.harmony_model import write_harmony_model
from max.testing.server_process import ServerProcess

MESSAGES = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_harmony_model(tmp_path_factory.mktemp("harmony"))
    with ServerProcess("--model-path", str(path), "--max-length", "128", "--served-model-name", "oss") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _chat(server, **extra):
    body = {"model": "oss", "messages": MESSAGES, "max_tokens": 20, "temperature": 0, **extra}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def test_final_is_content_and_analysis_is_reasoning(server):
    reply = _chat(server)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Four", "reasoning_content": " me think"}
    assert choice["finish_reason"] == "stop"


def test_streamed_channels_arrive_as_their_own_deltas(server):
    body = {"model": "oss", "messages": MESSAGES, "max_tokens": 20, "temperature": 0, "stream": True}
    deltas = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                deltas.extend(c["delta"] for c in json.loads(line[6:])["choices"])
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert (content, reasoning) == ("Four", " me think")
    kinds = [k for d in deltas for k in d if k in ("content", "reasoning_content") and d[k]]
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # thinking first, then the answer


def test_reasoning_effort_reaches_the_template(server):
    low = _chat(server, reasoning_effort="low").json()
    # At low effort the template opens the final channel itself: no analysis at all.
    assert low["choices"][0]["message"] == {"role": "assistant", "content": "Four", "reasoning_content": None}
    high = _chat(server, reasoning_effort="high").json()
    assert high["choices"][0]["message"]["reasoning_content"] == " me think"
    bad = _chat(server, reasoning_effort="extreme")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_effort"


def test_openai_client_reads_reasoning_content(client):
    reply = client.chat.completions.create(model="oss", messages=MESSAGES, max_tokens=20, temperature=0, reasoning_effort="medium")
    message = reply.choices[0].message
    assert message.content == "Four" and message.reasoning_content == " me think"
    stream = client.chat.completions.create(model="oss", messages=MESSAGES, max_tokens=20, temperature=0, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Four"
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == " me think"
