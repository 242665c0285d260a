"""Random images for a vision-language workload: `--random-images-per-prompt N` appends N
images of `--random-image-size` pixels to each prompt of the random dataset.

An image is what the model's image processor would hand the engine (random pixel values
cut into patches, as `--load-format dummy` has random weights): its grid follows from the
size and the vision config, and it takes `t*h*w / merge^2` image tokens, wrapped in the
config's vision start and end tokens, after the prompt's text. Gemma 3's images are its
tower's fixed square, `mm_tokens_per_image` tokens each, wrapped in its image tokens.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from max.benchmark.benchmark_dataset import SampleRequest
from max.errors import MaxError
from max.pipelines.lib.model.multimodal import ImageInput


def add_image_args(parser: argparse.ArgumentParser) -> None:
    """The image flags of the random workload."""
    g = parser.add_argument_group("images (vision-language models)")
    g.add_argument("--random-images-per-prompt", type=int, default=0, help="images after each random prompt (default 0)")
    g.add_argument("--random-image-size", default="448x448", help="WIDTHxHEIGHT in pixels (default 448x448)")


def parse_size(text: str) -> tuple[int, int]:
    """'448x448' -> (448, 448)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MaxError(f"--random-image-size must be WIDTHxHEIGHT, e.g. 448x448 (got {text!r})") from None
    if width < 1 or height < 1:
        raise MaxError(f"--random-image-size must be positive (got {text!r})")
    return width, height


def strip_image_tokens(requests: list[SampleRequest], hf_config: Any) -> None:
    """Random token prompts for a vision-language model must not hold its image token
    (which marks images only): such ids become 0."""
    image_token = getattr(hf_config, "image_token_id", None)
    if image_token is None:
        return
    for request in requests:
        if isinstance(request.prompt, list):
            request.prompt = [0 if t == image_token else t for t in request.prompt]


def add_random_images(
    requests: list[SampleRequest], hf_config: Any, per_prompt: int, size: tuple[int, int], seed: int = 0
) -> None:
    """Appends `per_prompt` random images of `size` (width, height) to each request's token
    prompt (in place). The prompts must hold no image token already (`strip_image_tokens`)."""
    vision = getattr(hf_config, "vision_config", None)
    image_token = getattr(hf_config, "image_token_id", None)
    if vision is None or image_token is None:
        raise MaxError("--random-images-per-prompt needs a vision-language model (its config has no vision_config)")
    if getattr(hf_config, "mm_tokens_per_image", None) is not None:
        # Gemma 3: every image is the tower's square, `mm_tokens_per_image` tokens (the size
        # flag does not apply), wrapped in its begin and end of image tokens.
        patch, side = vision.patch_size, vision.image_size // vision.patch_size
        grid, num_tokens = (1, side, side), int(hf_config.mm_tokens_per_image)
        columns = getattr(vision, "num_channels", 3) * patch * patch
        start, end = hf_config.boi_token_index, hf_config.eoi_token_index
    else:
        patch, merge, temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        unit = patch * merge
        width, height = size
        if width % unit or height % unit:
            raise MaxError(f"--random-image-size must be a multiple of {unit} pixels on each side for this model")
        grid = (1, height // patch, width // patch)
        num_tokens = grid[1] * grid[2] // merge**2
        columns = vision.in_channels * temporal * patch * patch
        start, end = hf_config.vision_start_token_id, hf_config.vision_end_token_id
    rng = np.random.default_rng(seed)
    for request in requests:
        if not isinstance(request.prompt, list):
            raise MaxError("random images go with token-id prompts (the random dataset)")
        ids = list(request.prompt)
        images = []
        for _ in range(per_prompt):
            pixels = rng.standard_normal((grid[0] * grid[1] * grid[2], columns), dtype=np.float32)
            ids.append(start)
            images.append(ImageInput.create(pixels, grid, len(ids), num_tokens))
            ids += [image_token] * num_tokens
            ids.append(end)
        request.prompt = ids
        request.prompt_len = len(ids)
        request.images = images
