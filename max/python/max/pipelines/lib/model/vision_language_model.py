"""`VisionLanguageModel`: a `PipelineModel` whose prompts may hold images (Qwen2-VL style).

A prompt carries each image as a run of placeholder tokens and an `ImageInput` (see
`multimodal`). During prefill the network's vision encoder (`network.visual`) turns the
image's pixels into one embedding per placeholder; the step replaces those rows' token
embeddings with them. The encoder runs once per image: its output is kept on the request
until the chunk that holds the image's last placeholder has run, so a chunked prefill that
cuts an image in parts does not recompute it.

Positions follow M-RoPE: a text token has one position, repeated on the three axes; an
image token has (time, row, column) positions counted from the image's start, and the
image advances the text positions by its larger side (in merged tokens) rather than by its
token count. Text tokens after an image thus rotate by their cache index plus an offset.
Steps with image tokens carry the [3, T] positions (and run eagerly); every other step,
decode included, carries 1-D positions, so CUDA graphs replay them as for text models.

Models of other families set two switches: `mrope = False` (Gemma 3: an image token's
position is its index, as for text) and `bidirectional_images = True` (Gemma 3: an image's
tokens attend to each other both ways). The step then carries each token's last visible
key (`RaggedLayout.key_limit`), and the scheduler keeps each image whole within one chunk,
since a token cannot see keys that a later chunk would compute. Such a model also
overrides the hooks that know its encoder's input: `encode_images`, `check_image_input`
and `encoder_activation_bytes`.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import torch

from max.errors import MaxError
from max.pipelines.lib.engine.request import Request
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.model.multimodal import ImageInput, image_blocks
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.runner.device_transfer import upload
from max.pipelines.lib.runner.input_batch import EncoderOutputs


def mrope_positions(images: Sequence[ImageInput], merge: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotary positions of prompt tokens start .. start + count - 1: 1-D [count] and M-RoPE
    [3, count].

    In the 1-D positions an image token stands at its index plus the offset that applies
    after its image: the decode step that follows a prompt ending in an image derives the
    next position from the last one.
    """
    index = np.arange(start, start + count, dtype=np.int64)
    flat = index.copy()
    three = np.repeat(index[None, :], 3, axis=0)
    offset = 0
    for image in images:
        if image.offset >= start + count:
            break
        _, h, w = image.grid_thw
        rows, cols = h // merge, w // merge
        j = index - image.offset
        inside = (j >= 0) & (j < image.num_tokens)
        first = image.offset + offset  # the image's first rotary position
        k = j[inside]
        three[0, inside] = first + k // (rows * cols)
        three[1, inside] = first + (k // cols) % rows
        three[2, inside] = first + k % cols
        offset += max(rows, cols) - image.num_tokens
        later = j >= 0
        flat[later] = index[later] + offset
        after = j >= image.num_tokens
        three[:, after] = index[after] + offset
    return flat, three


def key_limits(images: Sequence[ImageInput], start: int, count: int) -> np.ndarray:
    """The last key position [count] that each prompt token start .. start + count - 1 may
    attend to when an image's tokens see each other both ways: an image token sees up to
    its block's last token, any other token up to itself. Raises MaxError if the chunk
    ends inside an image (its last keys would be missing)."""
    index = np.arange(start, start + count, dtype=np.int64)
    limit = index.copy()
    for first, end in image_blocks(images):
        if first < start + count < end:
            raise MaxError(f"a prefill chunk ends inside the image at tokens {first}..{end}: it must run whole")
        inside = (index >= first) & (index < end)
        limit[inside] = end - 1
    return limit


class EncoderTimer:
    """Time spent in the vision encoder, for benchmarks: CUDA events on a GPU (no sync on
    the step's path; spans are added up once they have completed, so a long-running server
    keeps only the few still in flight), the host clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.images = 0
        self._spans: collections.deque = collections.deque()
        self._done_s = 0.0

    @contextlib.contextmanager
    def measure(self, images: int) -> Iterator[None]:
        """Times the enclosed encoder call over `images` images."""
        self.images += images
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._fold()
            self._spans.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._done_s += time.perf_counter() - t0

    def _fold(self) -> None:
        """Adds up the spans whose work has completed (without waiting)."""
        while self._spans and self._spans[0][1].query():
            start, end = self._spans.popleft()
            self._done_s += start.elapsed_time(end) / 1000.0

    @property
    def seconds(self) -> float:
        """Total encoder time so far (waits for the device)."""
        if self._spans:
            self._spans[-1][1].synchronize()
            self._fold()
        return self._done_s


class VisionLanguageModel(PipelineModel):
    """Base of the models that take images: see the module docstring. The network is a
    `max.nn.Transformer` with M-RoPE rotary embeddings and a `visual` encoder
    ((pixels, grids) -> embeddings); the config names `image_token_id` and `vision`."""

    # Text positions follow M-RoPE (Qwen2-VL's family); False: 1-D positions throughout.
    mrope: ClassVar[bool] = True
    # An image's tokens attend to each other both ways (Gemma 3); False: causally.
    bidirectional_images: ClassVar[bool] = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image_token_id = int(self.model_config.image_token_id)
        if self.mrope:
            self.spatial_merge = int(self.model_config.vision.spatial_merge_size)
        self.encoder_timer = EncoderTimer(self.device)

    def estimate_activation_memory(self, max_batch_tokens: int, max_batch_size: int) -> int:
        """The text model's bound plus the vision encoder's."""
        text = super().estimate_activation_memory(max_batch_tokens, max_batch_size)
        return text + self.encoder_activation_bytes(max_batch_tokens)

    def encoder_activation_bytes(self, max_batch_tokens: int) -> int:
        """The vision encoder's share of a step's activations: a step may hold up to
        `max_batch_tokens` image tokens, each `merge^2` patches wide through the encoder."""
        v = self.model_config.vision
        elem = torch.empty((), dtype=self.dtype).element_size()
        patches = max_batch_tokens * v.spatial_merge_size**2
        width = 8 * v.hidden_size + 3 * v.intermediate_size + v.in_channels * v.temporal_patch_size * v.patch_size**2
        return patches * width * elem

    def check_images(self, images: Sequence[ImageInput], prompt_tokens: Sequence[int]) -> None:
        """Also checks each image's pixels against the encoder (`check_image_input`) and,
        where images must run whole in one chunk, its size against the step's token budget."""
        super().check_images(images, prompt_tokens)
        for i, image in enumerate(images):
            self.check_image_input(i, image)
        if self.bidirectional_images:
            budget = self.plan.token_budget
            for start, end in image_blocks(images):
                if end - start > budget:
                    raise MaxError(
                        f"an image takes {end - start} tokens, more than one step's budget of {budget} "
                        "(--max-num-batched-tokens)"
                    )

    def check_image_input(self, i: int, image: ImageInput) -> None:
        """Raises MaxError unless image `i`'s pixels fit its grid and the encoder's patch size."""
        vision = self.model_config.vision
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        t, h, w = image.grid_thw
        if min(t, h, w) < 1 or h % self.spatial_merge or w % self.spatial_merge:
            raise MaxError(f"image {i}: grid {image.grid_thw} is not whole merge blocks of {self.spatial_merge}")
        if image.pixel_values.shape != (t * h * w, width):
            raise MaxError(f"image {i}: pixel_values has shape {image.pixel_values.shape}, expected {(t * h * w, width)}")
        if image.num_tokens != vision.num_tokens(image.grid_thw):
            raise MaxError(f"image {i}: {image.num_tokens} placeholder tokens for a grid that makes {vision.num_tokens(image.grid_thw)}")

    def rotary_positions(self, batch: Sequence[ScheduledChunk], cache_index: np.ndarray) -> np.ndarray:
        """Cache indices for requests without images; M-RoPE's 1-D positions (the text
        after an image offset) for those with."""
        if not self.mrope or not any(c.request.images for c in batch):
            return cache_index
        return np.concatenate([self._mrope(c)[0] for c in batch])

    def encoder_outputs(self, batch: Sequence[ScheduledChunk]) -> EncoderOutputs | None:
        """Where the step runs image tokens: their embeddings (the vision encoder runs on
        the images it has not seen yet) and every token's 3-D positions."""
        if not any(c.request.images for c in batch):
            return None
        self._encode_missing(batch)
        rows, vectors = [], []
        first_row = 0
        for chunk in batch:
            request, start, count = chunk.request, chunk.start, chunk.num_tokens
            for i, image in enumerate(request.images):
                lo, hi = max(image.offset, start), min(image.end, start + count)
                if lo >= hi:
                    continue
                rows.append(np.arange(first_row + lo - start, first_row + hi - start))
                vectors.append(request.encoder_cache[i][lo - image.offset : hi - image.offset])
                if hi == image.end:
                    del request.encoder_cache[i]  # no later chunk reads this image
            first_row += count
        if not rows:
            return None
        threes = np.concatenate([self._mrope(c)[1] for c in batch], axis=1) if self.mrope else None
        limits = np.concatenate([key_limits(c.request.images, c.start, c.num_tokens) for c in batch]) if self.bidirectional_images else None
        return EncoderOutputs(threes, np.concatenate(rows), torch.cat(vectors), limits)

    def _mrope(self, chunk: ScheduledChunk) -> tuple[np.ndarray, np.ndarray]:
        """`mrope_positions` of a chunk's tokens."""
        return mrope_positions(chunk.request.images, self.spatial_merge, chunk.start, chunk.num_tokens)

    def _encode_missing(self, batch: Sequence[ScheduledChunk]) -> None:
        """Runs the vision encoder, in one call, on every image this step reads that the
        request has no embeddings of yet."""
        todo: list[tuple[Request, int, ImageInput]] = []
        for chunk in batch:
            request, stop = chunk.request, chunk.start + chunk.num_tokens
            for i, image in enumerate(request.images):
                if image.offset < stop and image.end > chunk.start and i not in request.encoder_cache:
                    todo.append((request, i, image))
        if not todo:
            return
        # Through pinned memory: a pageable copy would make the host wait for the GPU.
        pixels = upload(np.concatenate([image.pixel_values for _, _, image in todo]), self.device)
        with torch.inference_mode(), self.encoder_timer.measure(len(todo)):
            embeddings = self.encode_images(pixels, [image for _, _, image in todo])
        parts = embeddings.split([image.num_tokens for _, _, image in todo])
        for (request, i, _), part in zip(todo, parts):
            request.encoder_cache[i] = part

    def encode_images(self, pixels: torch.Tensor, images: Sequence[ImageInput]) -> torch.Tensor:
        """The encoder's embeddings [sum of num_tokens, hidden] of `images`, whose pixel rows
        `pixels` holds (concatenated, on the device)."""
        return self.model.visual(pixels.to(self.dtype), [image.grid_thw for image in images])
