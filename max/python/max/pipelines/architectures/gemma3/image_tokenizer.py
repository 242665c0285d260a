"""Chat prompts with images for Gemma 3 (`Gemma3ForConditionalGeneration`).

Gemma 3's chat template renders each image part as its begin-of-image token. As
transformers' `Gemma3Processor` does, each of those becomes, in the text, two blank lines,
the begin-of-image token, `mm_tokens_per_image` image tokens, the end-of-image token and two
blank lines, and the text is tokenized after that (so the blank lines tokenize with their
neighbours exactly as the reference's do). Each image goes through the model's image
processor (transformers' `Gemma3ImageProcessor`: resized to the vision tower's square,
rescaled, normalized; pan-and-scan is off) and is cut into the tower's patch rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from max.errors import MaxError
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer, count_image_parts


def patch_rows(pixel_values: np.ndarray, patch_size: int) -> np.ndarray:
    """Images [N, C, H, W] -> patch rows [N, (H/P) * (W/P), C*P*P]: patches row by row,
    each patch's pixels channel-major, as the tower's Conv2d weight reads them."""
    n, c, h, w = pixel_values.shape
    p = patch_size
    grid = pixel_values.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(grid.reshape(n, (h // p) * (w // p), c * p * p), dtype=np.float32)


def images_from_patch_rows(rows: np.ndarray, patch_size: int, channels: int = 3) -> np.ndarray:
    """The inverse of `patch_rows` for square images: [N, n * n, C*P*P] -> [N, C, n*P, n*P]
    (transformers' `pixel_values`, which the reference model takes)."""
    count, patches, _ = rows.shape
    n, p = round(patches**0.5), patch_size
    grid = rows.reshape(count, n, n, channels, p, p).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(grid.reshape(count, channels, n * p, n * p))


class Gemma3ImageTokenizer(VisionLanguageTokenizer):
    """Gemma 3's tokenizer, image processor and image token layout (see the module docstring)."""

    tokens_per_image = 256
    patch_size = 14
    boi_token = "<start_of_image>"
    eoi_token = "<end_of_image>"

    @classmethod
    def from_source(cls, source: ModelSource, hf_config: Any = None, trust_remote_code: bool = False) -> Gemma3ImageTokenizer:
        """The tokenizer and image processor of a model folder; the image token layout from
        its config (`mm_tokens_per_image`, `boi_token_index`, `eoi_token_index`)."""
        if hf_config is None or getattr(hf_config, "vision_config", None) is None:
            raise MaxError("Gemma 3's image tokenizer needs the model's config (with its vision_config)")
        tokenizer = super().from_source(source, hf_config, trust_remote_code)
        hf = tokenizer.hf
        tokenizer.tokens_per_image = int(hf_config.mm_tokens_per_image)
        tokenizer.patch_size = int(hf_config.vision_config.patch_size)
        tokenizer.boi_token = hf.convert_ids_to_tokens(int(hf_config.boi_token_index))
        tokenizer.eoi_token = hf.convert_ids_to_tokens(int(hf_config.eoi_token_index))
        return tokenizer

    @property
    def image_token(self) -> str:
        """The text of the image token."""
        return self.hf.convert_ids_to_tokens(self.image_token_id)

    def image_sequence(self) -> str:
        """What each begin-of-image token of the rendered chat becomes."""
        return f"\n\n{self.boi_token}{self.image_token * self.tokens_per_image}{self.eoi_token}\n\n"

    def encode_chat_with_images(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[Any],
        template_kwargs: dict[str, Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> tuple[list[int], list[ImageInput]]:
        """Token ids of the chat prompt with each image's tokens in place, and one
        `ImageInput` per image (PIL images, in the order of the messages' image parts).
        Raises MaxError."""
        if count_image_parts(messages) != len(images):
            raise MaxError(f"the messages hold {count_image_parts(messages)} image parts for {len(images)} images")
        text = self.render_chat(messages, add_generation_prompt, template_kwargs)
        if self.image_token in text or text.count(self.boi_token) != len(images):
            raise MaxError(
                f"the prompt holds {text.count(self.boi_token)} {self.boi_token} for {len(images)} image(s); "
                f"the text of a message may not contain {self.boi_token} or {self.image_token}"
            )
        ids = self.encode(text.replace(self.boi_token, self.image_sequence()), add_special_tokens=False)
        if not images:
            return ids, []
        pixels, grids = self.process_images(images)
        token = np.asarray(ids) == self.image_token_id
        starts = np.flatnonzero(token & ~np.concatenate([[False], token[:-1]]))
        if len(starts) != len(images) or int(token.sum()) != len(images) * self.tokens_per_image:
            raise MaxError("the tokenizer split the image tokens: the prompt cannot hold these images")
        size = grids[0][1] * grids[0][2]
        inputs = [
            ImageInput.create(pixels[i * size : (i + 1) * size], grid, int(start), self.tokens_per_image)
            for i, (start, grid) in enumerate(zip(starts, grids, strict=True))
        ]
        return ids, inputs

    def process_images(self, images: Sequence[Any]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Every image's patch rows (concatenated) and its grid (1, H/P, W/P) of patches.
        Raises MaxError for an image the processor cannot take."""
        try:
            out = self.image_processor(images=list(images), do_pan_and_scan=False, return_tensors="np")
        except Exception as e:  # the processor raises ValueError and friends on odd images
            raise MaxError(f"the image processor cannot take an image: {str(e).splitlines()[0][:200]}") from None
        pixel_values = np.asarray(out["pixel_values"], dtype=np.float32)
        rows = patch_rows(pixel_values, self.patch_size)
        _, _, h, w = pixel_values.shape
        grid = (1, h // self.patch_size, w // self.patch_size)
        return rows.reshape(-1, rows.shape[-1]), [grid] * len(images)
