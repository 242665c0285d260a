"""The processor side of the tiny Gemma 3 with images: tokenizer, chat template, image processor.

`write_gemma3_processor_files` puts into a model folder what transformers'
`Gemma3Processor` (and our `Gemma3ImageTokenizer`) load: the SmolLM2 tokenizer with Gemma's
three image tokens added after its 49152 ids (named as Gemma's tokenizer names them, so the
processor finds them), a chat template in Gemma's style (an image part renders as
`<start_of_image>`), a preprocessor_config.json for `Gemma3ImageProcessor` at the tiny
tower's image size, and processor_config.json with the tokens per image.
"""

from __future__ import annotations

import json
from pathlib import Path

from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir

IMAGE_TOKENS = {
    "<start_of_image>": TOKENIZER_VOCAB,
    "<end_of_image>": TOKENIZER_VOCAB + 1,
    "<image_soft_token>": TOKENIZER_VOCAB + 2,
}

# Gemma 3's turns; content as a string or a list of text and image parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def preprocessor_config(image_size: int) -> dict:
    """preprocessor_config.json of the tiny model (Gemma3ImageProcessor's fields)."""
    return {
        "image_processor_type": "Gemma3ImageProcessor",
        "processor_class": "Gemma3Processor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,  # bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": None,
        "do_pan_and_scan": None,
    }


def write_gemma3_processor_files(directory: Path, config: dict) -> Path:
    """Writes the tokenizer (with the image tokens and the chat template),
    preprocessor_config.json and processor_config.json of a tiny Gemma 3 config."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)
    hf.add_tokens([AddedToken(token, special=True, normalized=False) for token in IMAGE_TOKENS], special_tokens=True)
    for token, expected in IMAGE_TOKENS.items():
        got = hf.convert_tokens_to_ids(token)
        assert got == expected, f"{token} got id {got}, expected {expected}"
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(directory))
    # The names transformers' Gemma3Processor reads off the tokenizer.
    path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(path.read_text())
    tokenizer_config["extra_special_tokens"] = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    path.write_text(json.dumps(tokenizer_config, indent=2))
    image_size = config["vision_config"]["image_size"]
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(image_size), indent=2))
    processor = {"processor_class": "Gemma3Processor", "image_seq_length": config["mm_tokens_per_image"]}
    (directory / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return directory
