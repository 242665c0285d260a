"""The processor side of a tiny Qwen2.5-VL checkpoint: tokenizer, chat template, image processor.

`write_vl_processor_files` puts into a model folder what transformers' `Qwen2_5_VLProcessor`
(and our `VisionLanguageTokenizer`) load: the SmolLM2 tokenizer with Qwen's four vision
tokens added after its 49152 ids, a chat template in Qwen2-VL's style (ChatML roles; an
image part renders as `<|vision_start|><|image_pad|><|vision_end|>`), and a
preprocessor_config.json for `Qwen2VLImageProcessor` with Qwen's patching and
normalization but a small pixel budget, so that test images take few tokens
(56x56 .. 28x28x64 pixels: 4 to 64 image tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir

VISION_START_TOKEN_ID = TOKENIZER_VOCAB  # 49152
VISION_END_TOKEN_ID = TOKENIZER_VOCAB + 1
IMAGE_TOKEN_ID = TOKENIZER_VOCAB + 2
VIDEO_TOKEN_ID = TOKENIZER_VOCAB + 3
VOCAB_SIZE = TOKENIZER_VOCAB + 8  # the tiny model's vocab_size: 49160, room past the added ids
VISION_TOKENS = {
    "<|vision_start|>": VISION_START_TOKEN_ID,
    "<|vision_end|>": VISION_END_TOKEN_ID,
    "<|image_pad|>": IMAGE_TOKEN_ID,
    "<|video_pad|>": VIDEO_TOKEN_ID,
}

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 64
# OpenAI CLIP's normalization, which Qwen2-VL and Qwen2.5-VL use.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# Qwen2-VL's template: ChatML turns, a default system turn, content given as a string or as
# a list of parts (text, image, video) rendered in place.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def preprocessor_config() -> dict:
    """The preprocessor_config.json of the tiny model (Qwen2VLImageProcessor's fields)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "do_convert_rgb": True,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
    }


def write_vl_processor_files(directory: Path) -> Path:
    """Writes the tokenizer (with the vision tokens and the chat template) and
    preprocessor_config.json of the tiny Qwen2.5-VL into `directory`."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)
    hf.add_tokens([AddedToken(token, special=True, normalized=False) for token in VISION_TOKENS], special_tokens=True)
    for token, expected in VISION_TOKENS.items():
        got = hf.convert_tokens_to_ids(token)
        assert got == expected, f"{token} got id {got}, expected {expected}"
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    return directory
