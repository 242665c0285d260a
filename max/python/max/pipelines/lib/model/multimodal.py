"""Images in prompts: what the processor hands the engine for each image of a request.

The serving side decodes an image, runs the model's image processor on it and expands the
image's placeholder in the prompt to `num_tokens` copies of the model's image token. The
engine receives the prompt's token ids and one `ImageInput` per image; the pipeline model's
vision encoder turns `pixel_values` into `num_tokens` embeddings that replace the
placeholder rows, once per image during prefill.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from max.errors import MaxError


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One image of a prompt, ready for the vision encoder (picklable: it crosses processes).

    `pixel_values` is the image processor's output for this image: float32
    [num_patches, channels * temporal_patch * patch * patch], patches in the order the
    processor emits them. `grid_thw` counts patches along time, height and width (a still
    image has t = 1 after the processor's temporal padding). `offset` is the index in the
    prompt of the first placeholder token; the image takes `num_tokens` consecutive
    positions from there. `content_hash` identifies the pixels (and grid): prefix caching
    mixes it into the keys of the pages that hold the image's tokens, so two prompts with
    the same text and different images never share those pages.
    """

    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    offset: int
    num_tokens: int
    content_hash: bytes

    @classmethod
    def create(cls, pixel_values: np.ndarray, grid_thw: tuple[int, int, int], offset: int, num_tokens: int) -> ImageInput:
        """An `ImageInput` whose `content_hash` is computed from the pixels and the grid."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        grid = tuple(int(g) for g in grid_thw)
        digest = hashlib.sha256(np.asarray(grid, dtype=np.int64).tobytes())
        digest.update(pixels.tobytes())
        return cls(pixels, grid, int(offset), int(num_tokens), digest.digest())

    @property
    def end(self) -> int:
        """One past the index of the image's last placeholder token."""
        return self.offset + self.num_tokens

    @property
    def key_token(self) -> int:
        """What the image's placeholder tokens stand as in prefix-cache keys: a negative
        number (no token id is negative) drawn from the content hash."""
        return -1 - int.from_bytes(self.content_hash[:7], "little")


class ImageKeyedTokens(Sequence[int]):
    """A prompt's tokens as the prefix cache keys them: each image's placeholder tokens
    replaced by its `key_token`, so that pages holding different images never match."""

    def __init__(self, tokens: Sequence[int], images: Sequence[ImageInput]) -> None:
        self._tokens = tokens
        self._images = images

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index):  # int or slice, as a list would answer
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self._tokens))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            out = list(self._tokens[start:stop])
            for image in self._images:
                lo, hi = max(image.offset, start), min(image.end, stop)
                if lo < hi:
                    out[lo - start : hi - start] = [image.key_token] * (hi - lo)
            return out
        i = range(len(self._tokens))[index]
        image = next((im for im in self._images if im.offset <= i < im.end), None)
        return self._tokens[i] if image is None else image.key_token


def check_images(images: Sequence[ImageInput], prompt_tokens: Sequence[int], image_token_id: int | None) -> None:
    """Raises MaxError unless the images sit, in order and without overlap, on runs of
    `image_token_id` inside the prompt, and the prompt holds no other image token (one
    without an image would have nothing to show)."""
    if image_token_id is None:
        if images:
            raise MaxError("this model does not take images")
        return
    expected = sum(image.num_tokens for image in images)
    found = sum(1 for t in prompt_tokens if t == image_token_id)
    if found != expected:
        raise MaxError(
            f"the prompt holds {found} image tokens (id {image_token_id}) where its {len(images)} image(s) take {expected}"
        )
    end = 0
    for i, image in enumerate(images):
        if image.num_tokens <= 0 or image.offset < end or image.end > len(prompt_tokens):
            raise MaxError(f"image {i} does not fit the prompt (tokens {image.offset}..{image.end})")
        if any(t != image_token_id for t in prompt_tokens[image.offset : image.end]):
            raise MaxError(f"image {i}: its prompt positions do not all hold the image token")
        end = image.end


def image_blocks(images: Sequence[ImageInput]) -> list[tuple[int, int]]:
    """The prompt spans [start, end) of consecutive image tokens: adjacent images make one
    block, as transformers groups a run of image tokens for its bidirectional mask."""
    blocks: list[tuple[int, int]] = []
    for image in images:
        if blocks and blocks[-1][1] == image.offset:
            blocks[-1] = (blocks[-1][0], image.end)
        else:
            blocks.append((image.offset, image.end))
    return blocks
