"""The server on the real SmolLM2-135M-Instruct: coherent answers, stop strings, and greedy
output identical to what the `generate` command prints."""

import openai
import pytest

from max.testing.cli import run_cli
from max.testing.server_process import ServerProcess

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--max-length", "2048", "--kv-cache-page-size", "16") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_chat_answers_and_matches_generate(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    text = reply.choices[0].message.content
    assert "Paris" in text
    cli = run_cli("generate", "--prompt", QUESTION, "--max-new-tokens", "24", "--max-length", "2048")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == text + "\n"


def test_stop_string_ends_the_answer(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0, stop=["Paris"]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert "Paris" not in choice.message.content and choice.message.content.startswith("The capital")


def test_streamed_completion_with_system_prompt(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text
