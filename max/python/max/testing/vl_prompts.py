"""Prompts with images for the tiny Qwen2.5-VL checkpoint (`TINY_CONFIGS["qwen2_5_vl"]`):
token ids with image placeholders and the matching `ImageInput`s (random pixels standing
for the image processor's output), shared by the CPU and GPU parity tests."""

from __future__ import annotations

import numpy as np

from max.pipelines.lib.model.multimodal import ImageInput
from max.testing.tiny_configs import TINY_CONFIGS

_CONFIG = TINY_CONFIGS["qwen2_5_vl"]
START, END, IMAGE = _CONFIG["vision_start_token_id"], _CONFIG["vision_end_token_id"], _CONFIG["image_token_id"]
PATCH_WIDTH = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


def pixels(grid: tuple[int, int, int], seed: int) -> np.ndarray:
    """Random 'processor output' for an image of `grid` patches."""
    t, h, w = grid
    return np.random.default_rng(seed).standard_normal((t * h * w, PATCH_WIDTH), dtype=np.float32)


def prompt(*parts) -> tuple[list[int], list[ImageInput]]:
    """Token ids and images of a prompt made of token lists and (grid, seed) images, each
    image wrapped in vision start/end tokens as the chat template writes it."""
    ids: list[int] = []
    images = []
    for part in parts:
        if isinstance(part, list):
            ids += part
            continue
        grid, seed = part
        n = grid[0] * grid[1] * grid[2] // 4
        ids.append(START)
        images.append(ImageInput.create(pixels(grid, seed), grid, len(ids), n))
        ids += [IMAGE] * n
        ids.append(END)
    return ids, images


ONE_IMAGE = prompt([1, 15, 300], ((1, 4, 6), 0), [7, 2048, 17])
# Three images: 6 x 10 patches make 3 x 5 merge blocks, cut by windows of 2 x 2 unevenly.
THREE_IMAGES = prompt([1, 9000], ((1, 6, 10), 1), [44, 5], ((1, 4, 4), 2), ((1, 8, 4), 3), [6, 7, 1200, 33])
IMAGE_LAST = prompt([1, 4, 812], ((1, 4, 4), 4))
MULTIMODAL = [ONE_IMAGE, THREE_IMAGES, IMAGE_LAST]
