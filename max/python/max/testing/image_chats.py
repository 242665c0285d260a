"""The shared check of the vision-language server tests: image chats sent through `serve`
with the official `openai` client get the greedy tokens (and prompt length) a reference
gives, and no KV page stays in use afterwards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from max.testing.images import png_data_url
from max.testing.server_process import ServerProcess

# (images, text) of one user turn.
ImageChat = tuple[list[Image.Image], str]
# The reference's (greedy tokens, prompt length) of one chat.
Reference = Callable[[list[Image.Image], str], tuple[list[int], int]]


def assert_image_chats_match(checkpoint: Path, model: str, steps: int, chats: Sequence[ImageChat], reference: Reference) -> None:
    """Serves `checkpoint` in float32 as `model`, sends each chat (images first, then the
    text) greedily for `steps` tokens, and asserts its tokens and prompt length equal
    `reference`'s."""
    import openai

    args = ("--model-path", str(checkpoint), "--served-model-name", model, "--max-length", "512",
            "--kv-cache-page-size", "8", "--quantization-encoding", "float32")  # fmt: skip
    with ServerProcess(*args) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        for images, text in chats:
            parts = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
                max_tokens=steps,
                temperature=0,
                extra_body={"ignore_eos": True, "return_token_ids": True},
            )
            expected, prompt_len = reference(images, text)
            assert reply.choices[0].model_extra["token_ids"] == expected, (len(images), text)
            assert reply.usage.prompt_tokens == prompt_len
        assert srv.metric("max_serve_kv_cache_pages_in_use") == 0
