"""The vision encoder of Qwen2.5-VL-style models: a ViT that turns an image's patches into
embeddings in the language model's width.

An image arrives as the image processor cut it: rows of `channels x temporal_patch x patch x
patch` pixels (a still image is repeated to `temporal_patch` frames), ordered so that each
`merge x merge` block of neighbouring patches is consecutive, with its grid (t, h, w) in
patches. The encoder embeds every patch (a linear map: the checkpoint's Conv3d with stride
equal to its kernel), runs `depth` blocks of pre-norm attention + gated MLP, and the merger
concatenates each merge block into one token and projects it. Attention is bidirectional
and never crosses images; most blocks attend only within windows of `window_size` pixels
(blocks in `fullatt_block_indexes` attend over the whole frame). Queries and keys rotate by
each patch's (row, column): 2-D rotary embeddings, the first half of the frequencies by
row, the second by column.

For window attention the patches are reordered window by window (in merge-block units,
as the reference does) and restored after the merger; a mask keeps each patch within its
window, or within its frame for the full-attention blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from max.nn.mlp import GatedMLP
from max.nn.norm import RMSNorm
from max.nn.parallel import TensorParallel, tensor_parallel_context
from max.nn.rotary_embedding import rotate_half

Grid = tuple[int, int, int]

# The most bytes of attention masks the encoder keeps between calls.
MASK_CACHE_BYTES = 256 * 2**20


@dataclass
class VisionConfig:
    """A Qwen2.5-VL vision tower's shape (`vision_config` of the Hugging Face config)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    window_size: int = 112
    fullatt_block_indexes: list[int] = field(default_factory=list)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def num_tokens(self, grid: Grid) -> int:
        """Embeddings (language-model tokens) an image of `grid` patches becomes."""
        t, h, w = grid
        return t * h * w // self.spatial_merge_size**2


class PatchEmbedding(nn.Module):
    """Patch pixels -> vectors. The checkpoint stores a Conv3d whose stride is its kernel,
    which on pre-cut patches is one matrix product."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, C*T*P*P] -> [N, hidden]."""
        weight = self.proj.weight
        return F.linear(pixels.to(weight.dtype), weight.reshape(weight.shape[0], -1))


@dataclass
class ImageRun:
    """Consecutive images of one grid, rows `rows` of the encoder's input: they attend as a
    batch, each image within itself, under `mask` [patches, patches] (None: no mask)."""

    rows: slice
    count: int
    mask: torch.Tensor | None


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention over the patches of each image (never across
    images), optionally masked (windows), with 2-D rotary embeddings applied in float32."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, runs: Sequence[ImageRun]) -> torch.Tensor:
        """x [N, hidden] of several images; each run of same-sized images attends image by
        image (one batched call per run), within its mask (None: all patches see all)."""
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype)
        out = torch.empty_like(q)
        for run in runs:
            # [images, heads, patches, head_dim] for SDPA, and back to rows.
            qi, ki, vi = (t[run.rows].view(run.count, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=run.mask)
            out[run.rows] = o.transpose(1, 2).reshape(-1, self.num_heads, self.head_dim)
        return self.proj(out.reshape(n, -1))


class VisionBlock(nn.Module):
    """norm -> attention -> residual, norm -> gated MLP (with biases) -> residual."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, config.norm_eps)
        self.norm2 = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = VisionAttention(config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=True)

    def forward(self, x, cos, sin, runs) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, runs)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Each merge block of patches (normalized, concatenated) -> one language-model token."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.width = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, config.norm_eps)
        # Named as the checkpoint's nn.Sequential: mlp.0 and mlp.2 (mlp.1 is the GELU).
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, config.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.width))


def patch_positions(grids: Sequence[Grid], merge: int) -> torch.Tensor:
    """(row, column) [N, 2] of every patch, in the processor's merge-block order."""
    out = []
    for t, h, w in grids:
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None, :].expand(h, w)
        blocks = [p.reshape(h // merge, merge, w // merge, merge).transpose(1, 2).flatten() for p in (rows, cols)]
        out.append(torch.stack(blocks, dim=-1).repeat(t, 1))
    return torch.cat(out)


def window_order(grids: Sequence[Grid], merge: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window-by-window order of the merge blocks of all images, and each merge block's
    window id (in that order).

    Windows tile each frame's grid of merge blocks in squares of `window` blocks (the last
    row and column of windows may be smaller); blocks are listed window after window, row
    by row inside a window.
    """
    order, window_ids = [], []
    first_block, first_window = 0, 0
    for t, h, w in grids:
        bh, bw = h // merge, w // merge
        index = torch.arange(t * bh * bw).reshape(t, bh, bw)
        wh, ww = -(-bh // window), -(-bw // window)  # windows down and across
        padded = F.pad(index, (0, ww * window - bw, 0, wh * window - bh), value=-1)
        tiles = padded.reshape(t, wh, window, ww, window).permute(0, 1, 3, 2, 4).reshape(t * wh * ww, window * window)
        ids = torch.arange(tiles.shape[0])[:, None].expand_as(tiles)
        keep = tiles >= 0
        order.append(tiles[keep] + first_block)
        window_ids.append(ids[keep] + first_window)
        first_block += t * bh * bw
        first_window += tiles.shape[0]
    return torch.cat(order), torch.cat(window_ids)


def image_masks(grid: Grid, merge: int, window: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which patches of an image of `grid` see which, in window order: in the windowed
    blocks (same window), and in the full-attention blocks (same frame); None where every
    patch sees every other."""
    order, windows = window_order([grid], merge, window)
    unit = merge * merge
    patch_order = (order[:, None] * unit + torch.arange(unit)).flatten()
    t, h, w = grid
    frames = torch.arange(t).repeat_interleave(h * w)[patch_order]
    masks = []
    for ids in (windows.repeat_interleave(unit), frames):
        masks.append(None if bool((ids == ids[0]).all()) else ids[:, None] == ids[None, :])
    return masks[0], masks[1]


def _runs(grids: Sequence[Grid]) -> list[tuple[Grid, int]]:
    """Consecutive equal grids, as (grid, how many)."""
    runs: list[tuple[Grid, int]] = []
    for grid in grids:
        if runs and runs[-1][0] == tuple(grid):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((tuple(grid), 1))
    return runs


class VisionTransformer(nn.Module):
    """The whole encoder: patches of several images in, one embedding per merge block out.

    Under tensor parallelism it is not split: rank 0 runs it alone while building a step's
    inputs, and the embeddings travel to the other ranks with the rest of the step.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        with tensor_parallel_context(TensorParallel()):  # whole on every rank (see above)
            self.patch_embed = PatchEmbedding(config)
            self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
            self.merger = PatchMerger(config)
        self._mask_cache: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._mask_cache_bytes = 0

    def _masks(self, grid: Grid, window: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`image_masks` of a grid on the device, kept for the next images of that size (a
        mask is patches^2 bytes: the cache is emptied before it would pass
        `MASK_CACHE_BYTES`, so clients sending many sizes cannot fill the device)."""
        key = (grid, window, device)
        if key not in self._mask_cache:
            masks = tuple(None if m is None else m.to(device) for m in image_masks(grid, self.config.spatial_merge_size, window))
            size = sum(m.numel() for m in masks if m is not None)
            if self._mask_cache_bytes + size > MASK_CACHE_BYTES:
                self._mask_cache.clear()
                self._mask_cache_bytes = 0
            self._mask_cache[key] = masks
            self._mask_cache_bytes += size
        return self._mask_cache[key]

    def rotary_tables(self, grids: Sequence[Grid], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin [N, 1, head_dim] of every patch (processor order): the first
        half of each head's frequencies turn with the row, the second with the column."""
        c = self.config
        dim = c.head_dim // 2
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = patch_positions(grids, c.spatial_merge_size)[..., None].float() * inv_freq  # [N, 2, dim/2]
        angles = freqs.flatten(1)
        angles = torch.cat((angles, angles), dim=-1)[:, None, :].to(device)
        return angles.cos(), angles.sin()

    def forward(self, pixels: torch.Tensor, grids: Sequence[Grid]) -> torch.Tensor:
        """pixels [N, C*T*P*P] of the images `grids` (concatenated) -> [N / merge^2, out_hidden],
        each image's embeddings in its placeholder tokens' order."""
        c = self.config
        unit = c.spatial_merge_size**2
        device = pixels.device
        window = c.window_size // c.spatial_merge_size // c.patch_size
        order, _ = window_order(grids, c.spatial_merge_size, window)
        patch_order = (order[:, None] * unit + torch.arange(unit)).flatten().to(device)
        window_runs, frame_runs = [], []
        first = 0
        for grid, count in _runs(grids):
            rows = slice(first, first + count * grid[0] * grid[1] * grid[2])
            window_mask, frame_mask = self._masks(grid, window, device)
            window_runs.append(ImageRun(rows, count, window_mask))
            frame_runs.append(ImageRun(rows, count, frame_mask))
            first = rows.stop

        x = self.patch_embed(pixels)[patch_order]
        cos, sin = self.rotary_tables(grids, device)
        cos, sin = cos[patch_order], sin[patch_order]
        full = set(c.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frame_runs if i in full else window_runs)
        merged = self.merger(x)
        return merged[torch.argsort(order.to(device))]
