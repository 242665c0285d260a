"""Image chats through `serve` on the tiny Gemma 3 with images (float32) with the official
`openai` client give transformers' own greedy tokens (its Gemma3Processor and generate,
image tokens attending both ways): one image, two images, and text only."""

import pytest
import torch
from PIL import Image

from max.testing.image_chats import assert_image_chats_match
from max.testing.images import random_picture
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

MODEL = "tiny-gemma3-vl"
STEPS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("gemma3_vl"), TINY_CONFIGS["gemma3_vl"], seed=3, with_tokenizer=True)


def transformers_tokens(checkpoint, images: list[Image.Image], text: str) -> tuple[list[int], int]:
    """transformers' greedy tokens for the chat, through its own processor and generate."""
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    model = Gemma3ForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}]
    prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images or None, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    n = inputs["input_ids"].shape[1]
    return out[0, n:].tolist(), n


def test_image_chats_give_transformers_tokens(checkpoint):
    cases = [
        ([random_picture(100, 60, 0)], "What is this?"),
        ([random_picture(64, 64, 1), random_picture(200, 50, 2)], "Compare them."),
        ([], "Just text."),
    ]
    assert_image_chats_match(checkpoint, MODEL, STEPS, cases, lambda images, text: transformers_tokens(checkpoint, images, text))
