"""Images through the real `serve` command: its flags, the HTTP process, the engine process.

The model is a tiny random Llama with the tiny Qwen2.5-VL processor files (vocabulary
49160, image token 49154), served by a test architecture (--custom-architectures) that
declares the VisionLanguageTokenizer and an image token, and writes down the images each
request brings to its first prefill chunk. So the test sees, in the engine process, the
ImageInputs that crossed the process boundary: their offsets, token counts, grids and
content hashes must be those the tokenizer makes of the same messages. Flags: the allowed
local directory, the per-prompt image limit, the fetch timeout; a text-only server refuses
image parts.
"""

import json
import os

import httpx
import openai
import pytest
from PIL import Image

from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer
from max.pipelines.lib.weights import WeightsFormat
from max.testing.images import png_data_url as _data_url
from max.testing.images import random_picture as _picture
from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_vl_processor import IMAGE_TOKEN_ID, VOCAB_SIZE, write_vl_processor_files

MODEL = "tiny-vl"

IMAGE_RECORDING_LLAMA = f'''
"""LlamaForCausalLM that takes images (it ignores them) and logs the ones each request brings."""

import dataclasses
import json
import os

from max.pipelines.architectures.llama3 import llama3_arch
from max.pipelines.architectures.llama3.model import Llama3Model
from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer


class ImageRecordingLlama(Llama3Model):
    image_token_id = {IMAGE_TOKEN_ID}

    def encoder_outputs(self, batch):
        with open(os.environ["IMAGE_LOG"], "a") as log:
            for chunk in batch:
                if chunk.start == 0 and chunk.request.images:
                    images = [[i.offset, i.num_tokens, list(i.grid_thw), i.content_hash.hex()] for i in chunk.request.images]
                    log.write(json.dumps({{"prompt": list(chunk.request.tokens[: chunk.request.num_prompt_tokens]),
                                           "images": images}}) + "\\n")
        return super().encoder_outputs(batch)


ARCHITECTURES = [dataclasses.replace(llama3_arch, pipeline_model=ImageRecordingLlama, tokenizer=VisionLanguageTokenizer)]
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl")
    write_tiny_checkpoint(root / "ckpt", llama_config(vocab_size=VOCAB_SIZE), seed=4)
    write_vl_processor_files(root / "ckpt")
    (root / "image_llama.py").write_text(IMAGE_RECORDING_LLAMA)
    (root / "media").mkdir()
    _picture(90, 70, 7).save(root / "media" / "chart.png")
    return root


@pytest.fixture(scope="module")
def server(model_dir):
    log = model_dir / "images.jsonl"
    with ServerProcess(
        "--model-path", str(model_dir / "ckpt"), "--custom-architectures", str(model_dir / "image_llama.py"),
        "--served-model-name", MODEL, "--max-length", "256", "--kv-cache-page-size", "8",
        "--quantization-encoding", "float32", "--allowed-local-media-path", str(model_dir / "media"),
        "--limit-mm-per-prompt", '{"image": 2}', "--media-fetch-timeout", "1",
        env={"IMAGE_LOG": str(log)},
    ) as srv:  # fmt: skip
        srv.image_log = log
        yield srv


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    source = ModelSource(MODEL, model_dir / "ckpt", WeightsFormat.safetensors)
    return VisionLanguageTokenizer.from_source(source, None)


def _logged(server) -> list[dict]:
    return [json.loads(line) for line in server.image_log.read_text().splitlines()]


def test_images_reach_the_engine_process(server, model_dir, tokenizer):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    first, chart = _picture(120, 40, 3), Image.open(model_dir / "media" / "chart.png").convert("RGB")
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(first)}},
            {"type": "text", "text": "and"},
            {"type": "image_url", "image_url": {"url": (model_dir / "media" / "chart.png").as_uri()}},
        ]}],
        max_tokens=4, temperature=0,
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "length"
    ids, images = tokenizer.encode_chat_with_images(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]}],
        [first, chart],
    )  # fmt: skip
    assert reply.usage.prompt_tokens == len(ids)
    (entry,) = _logged(server)
    assert entry["prompt"] == ids
    assert entry["images"] == [[i.offset, i.num_tokens, list(i.grid_thw), i.content_hash.hex()] for i in images]


def test_the_flags_apply(server, model_dir):
    def chat(*urls):
        parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        body = {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 2}
        return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)

    small = _data_url(_picture(20, 20, 1))
    too_many = chat(small, small, small)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_images", too_many.text
    outside = chat((model_dir / "image_llama.py").as_uri())
    assert outside.status_code == 400 and outside.json()["error"]["code"] == "invalid_image_url", outside.text
    assert chat(small, small).status_code == 200
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}


def test_a_text_only_model_refuses_images(model_dir):
    with ServerProcess(
        "--model-path", str(model_dir / "ckpt"), "--served-model-name", MODEL, "--max-length", "128",
        "--kv-cache-page-size", "8",
    ) as srv:  # fmt: skip
        parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": _data_url(_picture(20, 20, 1))}}]
        body = {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 2}
        reply = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == "images_not_supported"
        assert reply.json()["error"]["param"] == "messages[0].content[1]"
        assert os.path.exists(model_dir / "ckpt" / "preprocessor_config.json")  # a VL folder, a text architecture
