"""Prompts with images for the tiny Gemma 3 checkpoint (`TINY_CONFIGS["gemma3_vl"]`): token
ids with each image's tokens in place and the matching `ImageInput`s (random pixels standing
for the image processor's output), shared by the CPU and GPU tests; and the same images as
transformers' `Gemma3ForConditionalGeneration` takes them."""

from __future__ import annotations

import numpy as np
import torch

from max.pipelines.architectures.gemma3.image_tokenizer import images_from_patch_rows, patch_rows
from max.pipelines.lib.model.multimodal import ImageInput
from max.testing.tiny_configs import TINY_CONFIGS

CONFIG = TINY_CONFIGS["gemma3_vl"]
BOI, EOI, IMAGE = CONFIG["boi_token_index"], CONFIG["eoi_token_index"], CONFIG["image_token_index"]
TOKENS_PER_IMAGE = CONFIG["mm_tokens_per_image"]
_VISION = CONFIG["vision_config"]
SIDE, PATCH = _VISION["image_size"], _VISION["patch_size"]


def picture(seed: int) -> np.ndarray:
    """A random 'processor output' image [3, SIDE, SIDE]."""
    return np.random.default_rng(seed).standard_normal((3, SIDE, SIDE), dtype=np.float32)


def prompt(*parts) -> tuple[list[int], list[ImageInput]]:
    """Token ids and images of a prompt made of token lists and image seeds, each image as
    its begin token, its image tokens and its end token."""
    ids: list[int] = []
    images = []
    grid = (1, SIDE // PATCH, SIDE // PATCH)
    for part in parts:
        if isinstance(part, list):
            ids += part
            continue
        ids.append(BOI)
        rows = patch_rows(picture(part)[None], PATCH)[0]
        images.append(ImageInput.create(rows, grid, len(ids), TOKENS_PER_IMAGE))
        ids += [IMAGE] * TOKENS_PER_IMAGE
        ids.append(EOI)
    return ids, images


def reference_pixels(images: list[ImageInput]) -> torch.Tensor:
    """The images as transformers takes them: [N, 3, SIDE, SIDE], undoing `patch_rows`."""
    return torch.from_numpy(images_from_patch_rows(np.stack([im.pixel_values for im in images]), PATCH))


ONE_IMAGE = prompt([1, 15, 300], 0, [7, 2048, 17])
# Two images apart, text between and after; longer than the sliding window and the pages.
TWO_IMAGES = prompt([1, 9000], 1, [44, 5, 6], 2, [6, 7, 1200, 33, 812, 99])
IMAGE_LAST = prompt([1, 4, 812], 3)
MULTIMODAL = [ONE_IMAGE, TWO_IMAGES, IMAGE_LAST]
