"""The Qwen2.5-Coder-0.5B-Instruct chat model through `serve` answers arithmetic."""

import openai

from max.testing.server_process import ServerProcess


def test_qwen_answers_12_plus_7():
    with ServerProcess("--model-path", "qwen2.5-0.5b", "--max-length", "1024", "--served-model-name", "qwen") as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=600)
        reply = client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "What is 12 + 7?"}], max_tokens=40, temperature=0
        )
        text = reply.choices[0].message.content
        assert "19" in text, text
