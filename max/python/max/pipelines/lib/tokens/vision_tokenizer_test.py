"""VisionLanguageTokenizer against transformers' own Qwen2_5_VLProcessor (built from the same
tokenizer and image processor): identical input_ids, pixel_values and image_grid_thw for
chats with no, one and two images of different sizes; each ImageInput sits on its run of
image tokens; text-only chats render as the plain text tokenizer renders them; image
tokens typed into the text and images the processor cannot take are MaxErrors."""

import json
import types

import numpy as np
import pytest
from PIL import Image

from max.errors import MaxError
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.model.multimodal import check_images
from max.pipelines.lib.tokens.tokenizer import TextTokenizer
from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer
from max.pipelines.lib.weights import WeightsFormat
from max.testing.tiny_vl_processor import (
    IMAGE_TOKEN_ID,
    MAX_PIXELS,
    VISION_END_TOKEN_ID,
    write_vl_processor_files,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_vl_processor_files(tmp_path_factory.mktemp("vl"))


@pytest.fixture(scope="module")
def tokenizer(folder):
    config = types.SimpleNamespace(image_token_id=IMAGE_TOKEN_ID, eos_token_id=2)
    return VisionLanguageTokenizer.from_source(ModelSource("tiny-vl", folder, WeightsFormat.safetensors), config)


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        # The processor checks each part's class; the video processor's base class needs
        # torchvision, which is not installed (and no video is processed here).
        def check_argument_for_proper_class(self, argument_name, argument):
            return None

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    images = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    return ImageOnlyProcessor(image_processor=images, tokenizer=hf, video_processor=None, chat_template=hf.chat_template)


def _picture(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _expected(reference, messages, images):
    text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return reference(text=[text], images=images or None, return_tensors="np")


def _check_against_reference(tokenizer, reference, messages, images):
    ids, inputs = tokenizer.encode_chat_with_images(messages, images)
    want = _expected(reference, messages, images)
    assert ids == want["input_ids"][0].tolist()
    assert len(inputs) == len(images)
    check_images(inputs, ids, IMAGE_TOKEN_ID)
    if images:
        assert [image.grid_thw for image in inputs] == [tuple(g) for g in want["image_grid_thw"].tolist()]
        pixels = np.concatenate([image.pixel_values for image in inputs])
        np.testing.assert_array_equal(pixels, want["pixel_values"])
        assert sum(image.num_tokens for image in inputs) == ids.count(IMAGE_TOKEN_ID)
        for image in inputs:
            t, h, w = image.grid_thw
            assert image.num_tokens == t * h * w // 4 and image.pixel_values.shape[0] == t * h * w
            assert ids[image.offset - 1] != IMAGE_TOKEN_ID and ids[image.end] == VISION_END_TOKEN_ID
    return ids, inputs


def test_text_only_chat_matches_transformers_and_the_text_tokenizer(tokenizer, reference, folder):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    ids, inputs = _check_against_reference(tokenizer, reference, messages, [])
    assert inputs == []
    plain = TextTokenizer.from_source(ModelSource("tiny-vl", folder, WeightsFormat.safetensors))
    assert tokenizer.encode_chat(messages) == plain.encode_chat(messages) == ids
    assert tokenizer.takes_images and not plain.takes_images


def test_one_image_matches_transformers(tokenizer, reference):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]}]
    ids, (image,) = _check_against_reference(tokenizer, reference, messages, [_picture(100, 60, 0)])
    assert image.num_tokens > 1  # a real expansion, not one placeholder


def test_two_images_of_different_sizes_match_transformers(tokenizer, reference):
    messages = [
        {"role": "system", "content": "You compare pictures."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}, {"type": "text", "text": "Which is larger?"}]},
        {"role": "assistant", "content": "The second."},
        {"role": "user", "content": "Why?"},
    ]  # fmt: skip
    images = [_picture(64, 64, 1), _picture(300, 120, 2)]
    _, inputs = _check_against_reference(tokenizer, reference, messages, images)
    assert inputs[0].grid_thw != inputs[1].grid_thw
    assert inputs[0].content_hash != inputs[1].content_hash
    # min_pixels / max_pixels of preprocessor_config.json are honoured: a big image is
    # scaled down to the budget, a tiny one up to the minimum.
    _, (big,) = _check_against_reference(tokenizer, reference, [{"role": "user", "content": [{"type": "image"}]}], [_picture(1000, 800, 3)])
    _, (tiny,) = _check_against_reference(tokenizer, reference, [{"role": "user", "content": [{"type": "image"}]}], [_picture(10, 10, 4)])
    assert big.num_tokens * 14 * 14 * 4 <= MAX_PIXELS and tiny.num_tokens == 4


def test_typed_image_tokens_and_mismatched_images_are_refused(tokenizer):
    with pytest.raises(MaxError, match="may not contain"):
        tokenizer.encode_chat([{"role": "user", "content": "look: <|image_pad|>"}])
    with pytest.raises(MaxError, match="image parts"):
        tokenizer.encode_chat_with_images([{"role": "user", "content": [{"type": "image"}]}], [])
    with pytest.raises(MaxError, match="image processor"):
        tokenizer.encode_chat_with_images([{"role": "user", "content": [{"type": "image"}]}], [_picture(600, 2, 5)])


def test_image_token_from_the_vocabulary_when_the_config_has_none(folder):
    tokenizer = VisionLanguageTokenizer.from_source(ModelSource("tiny-vl", folder, WeightsFormat.safetensors), None)
    assert tokenizer.image_token_id == IMAGE_TOKEN_ID


def test_a_folder_without_an_image_processor_is_a_clear_error(folder, tmp_path):
    for f in folder.iterdir():
        if f.name != "preprocessor_config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(MaxError, match="preprocessor_config.json"):
        VisionLanguageTokenizer.from_source(ModelSource("x", tmp_path, WeightsFormat.safetensors), None)
    assert json.loads((folder / "preprocessor_config.json").read_text())["merge_size"] == 2


def test_chat_template_from_chat_template_json(folder, tmp_path):
    from max.testing.tiny_vl_processor import CHAT_TEMPLATE

    for f in folder.iterdir():
        if f.name != "chat_template.jinja":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    source = ModelSource("x", tmp_path, WeightsFormat.safetensors)
    assert not TextTokenizer.from_source(source).has_chat_template
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    tokenizer = VisionLanguageTokenizer.from_source(source, None)
    assert tokenizer.hf.chat_template == CHAT_TEMPLATE
    ids, (image,) = tokenizer.encode_chat_with_images([{"role": "user", "content": [{"type": "image"}]}], [_picture(30, 30, 0)])
    assert ids.count(IMAGE_TOKEN_ID) == image.num_tokens
