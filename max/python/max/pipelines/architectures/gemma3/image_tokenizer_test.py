"""Gemma3ImageTokenizer against transformers' own Gemma3Processor (from the same tokenizer
and image processor files): identical input_ids, and pixels equal to the processor's
pixel_values cut into patch rows, for chats with no, one and two images of other sizes;
each ImageInput sits on its run of image tokens; image tokens typed into the text are
MaxErrors."""

import numpy as np
import pytest
from transformers import AutoConfig

from max.errors import MaxError
from max.pipelines.architectures.gemma3.image_tokenizer import Gemma3ImageTokenizer, patch_rows
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.model.multimodal import check_images
from max.pipelines.lib.weights import WeightsFormat
from max.testing.images import random_picture
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_gemma3_vl_processor import write_gemma3_processor_files

CONFIG = TINY_CONFIGS["gemma3_vl"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_gemma3_processor_files(tmp_path_factory.mktemp("gemma3_vl"), CONFIG)


@pytest.fixture(scope="module")
def tokenizer(folder):
    fields = {k: v for k, v in CONFIG.items() if k != "model_type"}
    hf_config = AutoConfig.for_model("gemma3", **fields)
    return Gemma3ImageTokenizer.from_source(ModelSource("tiny-gemma3-vl", folder, WeightsFormat.safetensors), hf_config)


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(folder), local_files_only=True)


def chat(*parts):
    content = [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize(
    "parts,sizes",
    [
        (("Hello there",), []),
        ((None, "What is this?"), [(60, 40)]),
        (("Compare", None, "with", None, "please"), [(30, 50), (100, 100)]),
    ],
)
def test_matches_transformers_processor(tokenizer, reference, parts, sizes):
    messages = chat(*parts)
    pictures = [random_picture(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    ids, images = tokenizer.encode_chat_with_images(messages, pictures)
    text = reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = reference(text=text, images=pictures or None, add_special_tokens=False, return_tensors="np")
    assert ids == expected["input_ids"][0].tolist()
    image_token = CONFIG["image_token_index"]
    assert sum(t == image_token for t in ids) == CONFIG["mm_tokens_per_image"] * len(sizes)
    check_images(images, ids, image_token)
    if sizes:
        patch = CONFIG["vision_config"]["patch_size"]
        rows = patch_rows(expected["pixel_values"], patch)
        for image, want in zip(images, rows):
            np.testing.assert_array_equal(image.pixel_values, want)
            assert image.grid_thw == (1, 6, 6) and image.num_tokens == CONFIG["mm_tokens_per_image"]


def test_typed_image_tokens_are_refused(tokenizer):
    with pytest.raises(MaxError):
        tokenizer.encode_chat_with_images(chat("look: <start_of_image>"), [])
    with pytest.raises(MaxError):
        tokenizer.encode_chat_with_images(chat(None, "and <image_soft_token>"), [random_picture(20, 20, 0)])
