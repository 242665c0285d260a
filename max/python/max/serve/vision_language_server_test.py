"""Image chats through `serve` on the tiny Qwen2.5-VL (float32) with the official `openai`
client give transformers' own greedy tokens: one image, two images of different sizes,
text only, and the same prompt with another image (prefix caching keyed by the image)."""


import pytest
import torch
from PIL import Image

from max.testing.image_chats import assert_image_chats_match
from max.testing.images import random_picture
from max.testing.tiny_checkpoints import reference_class, write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

MODEL = "tiny-vl"
STEPS = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("vl"), TINY_CONFIGS["qwen2_5_vl"], seed=3, with_tokenizer=True)


def transformers_tokens(checkpoint, images: list[Image.Image], text: str) -> tuple[list[int], int]:
    """transformers' greedy tokens for the chat, through its own processor and generate."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    class Processor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, name, argument):  # no torchvision video processor here
            return None

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    processor = Processor(image_processor=AutoImageProcessor.from_pretrained(str(checkpoint)), tokenizer=tokenizer,
                          video_processor=None, chat_template=tokenizer.chat_template)  # fmt: skip
    model = reference_class("Qwen2_5_VLForConditionalGeneration").from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    n = inputs["input_ids"].shape[1]
    return out[0, n:].tolist(), n


def test_image_chats_give_transformers_tokens(checkpoint):
    cases = [
        ([random_picture(100, 60, 0)], "What is this?"),
        ([random_picture(64, 64, 1), random_picture(200, 50, 2)], "Compare them."),
        ([], "Just text."),
        ([random_picture(100, 60, 5)], "What is this?"),  # the first prompt, another image
    ]
    assert_image_chats_match(checkpoint, MODEL, STEPS, cases, lambda images, text: transformers_tokens(checkpoint, images, text))
