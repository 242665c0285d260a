"""Chat prompts with images, for vision-language models (Qwen2.5-VL's layout).

`VisionLanguageTokenizer` is a `TextTokenizer` that also holds the model's image processor
(transformers', from the model folder's preprocessor_config.json). A chat message's images
are content parts `{"type": "image"}` in place; the chat template renders each as one
image placeholder token (inside the model's vision start/end tokens). Encoding expands each
placeholder to the number of tokens the vision encoder makes of that image
(`t * h * w // merge_size**2` of its patch grid) and returns one `ImageInput` per image,
which is what the engine takes. The result matches transformers' own processor
(`Qwen2_5_VLProcessor`) token for token and pixel for pixel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from max.errors import MaxError
from max.pipelines.lib.hub.hf_config import eos_token_ids
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.tokens.tokenizer import TextTokenizer, load_hf_tokenizer

IMAGE_TOKEN = "<|image_pad|>"  # Qwen2-VL and Qwen2.5-VL's image placeholder
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def count_image_parts(messages: Sequence[dict[str, Any]]) -> int:
    """How many `{"type": "image"}` content parts the messages hold."""
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )


class VisionLanguageTokenizer(TextTokenizer):
    """A text tokenizer plus the model's image processor and image token; see the module
    docstring."""

    def __init__(self, hf_tokenizer: Any, eos_ids: set[int], image_processor: Any, image_token_id: int) -> None:
        super().__init__(hf_tokenizer, eos_ids)
        self.image_processor = image_processor
        self.image_token_id = int(image_token_id)
        self.merge_size = int(getattr(image_processor, "merge_size", 2))

    @classmethod
    def from_source(
        cls, source: ModelSource, hf_config: Any = None, trust_remote_code: bool = False
    ) -> VisionLanguageTokenizer:
        """The tokenizer and image processor of a model folder."""
        hf = load_hf_tokenizer(source, trust_remote_code)
        if not getattr(hf, "chat_template", None):
            hf.chat_template = _processor_chat_template(source)
        processor = _load_image_processor(source, trust_remote_code)
        image_token_id = getattr(hf_config, "image_token_id", None) if hf_config is not None else None
        if image_token_id is None:
            image_token_id = hf.convert_tokens_to_ids(IMAGE_TOKEN)
            if image_token_id is None or image_token_id == hf.unk_token_id:
                raise MaxError(f"the model's config has no image_token_id and its tokenizer has no {IMAGE_TOKEN} token")
        if not 0 <= int(image_token_id) < len(hf):
            raise MaxError(f"the image token id {image_token_id} is outside the tokenizer's vocabulary ({len(hf)})")
        eos = eos_token_ids(hf_config) if hf_config is not None else set()
        return cls(hf, eos, processor, int(image_token_id))

    @property
    def takes_images(self) -> bool:
        """Chat messages may hold images."""
        return True

    def encode_chat(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """Token ids of a chat without images (image tokens typed into the text are refused)."""
        return self.encode_chat_with_images(messages, [], template_kwargs)[0]

    def encode_chat_with_images(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[Any],
        template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> tuple[list[int], list[ImageInput]]:
        """Token ids of the chat prompt, each image's placeholder expanded to its tokens,
        and one `ImageInput` per image. `images` are PIL images (RGB), in the order of the
        messages' `{"type": "image"}` parts. Raises MaxError."""
        if count_image_parts(messages) != len(images):
            raise MaxError(f"the messages hold {count_image_parts(messages)} image parts for {len(images)} images")
        text = self.render_chat(messages, add_generation_prompt, template_kwargs)
        ids = self.encode(text, add_special_tokens=False)
        placeholders = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(placeholders) != len(images):
            # The text itself holds the image token (typed by the client), or the template
            # dropped an image part: either way no image could be placed.
            token = self.hf.convert_ids_to_tokens(self.image_token_id)
            raise MaxError(
                f"the prompt holds {len(placeholders)} image placeholder(s) ({token}) for {len(images)} image(s); "
                f"the text of a message may not contain {token}"
            )
        if not images:
            return ids, []
        pixel_values, grids = self.process_images(images)
        out: list[int] = []
        inputs: list[ImageInput] = []
        row = 0
        previous = 0
        for position, grid in zip(placeholders, grids, strict=True):
            t, h, w = grid
            num_tokens = t * h * w // self.merge_size**2
            out.extend(ids[previous:position])
            inputs.append(ImageInput.create(pixel_values[row : row + t * h * w], grid, len(out), num_tokens))
            out.extend([self.image_token_id] * num_tokens)
            row += t * h * w
            previous = position + 1
        out.extend(ids[previous:])
        return out, inputs

    def process_images(self, images: Sequence[Any]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """The image processor's pixel_values (every image's patch rows, concatenated) and
        each image's patch grid (t, h, w). Raises MaxError for an image it cannot take
        (e.g. an aspect ratio above 200)."""
        try:
            out = self.image_processor(images=list(images), return_tensors="np")
        except Exception as e:  # the processor raises ValueError and friends on odd images
            raise MaxError(f"the image processor cannot take an image: {str(e).splitlines()[0][:200]}") from None
        pixel_values = np.asarray(out["pixel_values"], dtype=np.float32)
        grids = [tuple(int(g) for g in row) for row in np.asarray(out["image_grid_thw"])]
        return pixel_values, grids


def _processor_chat_template(source: ModelSource) -> str | None:
    """The chat template some vision-language repos keep beside the processor
    (chat_template.json) rather than in the tokenizer's files."""
    path = source.directory / "chat_template.json"
    try:
        template = json.loads(path.read_text()).get("chat_template") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        raise MaxError(f"{path} is not a JSON object with a 'chat_template'") from None
    return template if isinstance(template, str) else None


def _load_image_processor(source: ModelSource, trust_remote_code: bool) -> Any:
    """transformers' image processor of the model folder (its preprocessor_config.json:
    patching, resizing bounds min_pixels/max_pixels, normalization)."""
    from transformers import AutoImageProcessor

    directory = source.directory
    if not (directory / PREPROCESSOR_CONFIG).is_file():
        raise MaxError(f"{directory} has no {PREPROCESSOR_CONFIG}: a vision-language model needs its image processor")
    try:
        return AutoImageProcessor.from_pretrained(
            str(directory), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise MaxError(f"cannot load the image processor from {directory}: {e}") from None
