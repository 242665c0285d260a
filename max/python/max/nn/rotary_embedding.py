"""Rotary position embeddings (RoPE) and the frequency schedules of their scaling variants.

The rope parameters come as Hugging Face standardizes them (`config.rope_parameters`):
`rope_type` one of default, linear, llama3, yarn, longrope; `rope_theta`; and the type's own
keys.
Frequencies are computed in the same order and dtype as transformers does, so that float32
logits match the reference to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from max.errors import MaxError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


# Frequencies are always computed on the CPU (explicitly, even while a model is being
# shaped on the meta device) and then moved.
_CPU = torch.device("cpu")


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=_CPU).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, params: Mapping) -> torch.Tensor:
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context_len = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by the factor, short ones kept, the middle band blended.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(
    base: float, dim: int, params: Mapping, max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    factor = params.get("factor")
    original_max = params.get("original_max_position_embeddings") or max_position_embeddings
    if factor is None:
        factor = max_position_embeddings / original_max

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoids a division by zero in the ramp
    ramp = torch.arange(dim // 2, dtype=torch.float32, device=_CPU)
    ramp = torch.clamp((ramp - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, device=_CPU).float() / dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (factor * pos_freqs)
    inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
    return inv_freq, float(attention_factor)


def _longrope_inv_freq(
    base: float, dim: int, params: Mapping, max_position_embeddings: int, served_len: int | None
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Phi-3): per-frequency divisors, `long_factor` for a context longer than
    `original_max_position_embeddings`, `short_factor` otherwise; cos and sin scaled by
    sqrt(1 + log(factor) / log(original)) unless the config sets `attention_factor`.

    transformers picks the set by the length of the sequence at hand, and re-prefills a
    sequence that grows past the original length. A paged cache shared across requests and
    steps needs one set for every position, so the set is chosen once, by the longest
    sequence served (`served_len`): a server limited to the original length uses the short
    factors, one serving longer contexts the long ones (as llama.cpp chooses by context size).
    """
    original = int(params["original_max_position_embeddings"])
    factor = params.get("factor") or max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    key = "long_factor" if served_len is not None and served_len > original else "short_factor"
    ext = torch.tensor(params[key], dtype=torch.float32, device=_CPU)
    if ext.shape[0] != dim // 2:
        raise MaxError(f"rope {key} has {ext.shape[0]} entries; the rotary width {dim} needs {dim // 2}")
    return 1.0 / (ext * base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=_CPU).float() / dim)), float(
        attention_factor
    )


def rope_frequencies(
    rope_parameters: Mapping, head_dim: int, max_position_embeddings: int, served_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [rotary_dim // 2] and the cos/sin scaling factor of a rope config.

    `served_len`, the longest sequence the model will serve, matters only to longrope."""
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    if rope_type == "su":  # LongRoPE's first name (early Phi-3 configs)
        rope_type = "longrope"
    base = float(rope_parameters["rope_theta"])
    dim = int(head_dim * rope_parameters.get("partial_rotary_factor", 1.0))
    if rope_type == "default":
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "linear":
        return _base_inv_freq(base, dim) / rope_parameters["factor"], 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(_base_inv_freq(base, dim), rope_parameters), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(base, dim, rope_parameters, max_position_embeddings)
    if rope_type == "longrope":
        return _longrope_inv_freq(base, dim, rope_parameters, max_position_embeddings, served_len)
    raise MaxError(
        f"rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Maps the halves (a, b) of the last dimension to (-b, a)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to queries and keys by absolute position (the "rotate half" layout).

    cos and sin tables are precomputed once for `max_positions` positions; a step indexes
    them with the positions of its tokens.
    """

    def __init__(
        self,
        head_dim: int,
        rope_parameters: Mapping,
        max_position_embeddings: int,
        max_positions: int,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rope_parameters = dict(rope_parameters)
        self.max_position_embeddings = max_position_embeddings
        self.max_positions = max_positions
        self.init_buffers(_CPU)

    def init_buffers(self, device: torch.device | str) -> None:
        """(Re)computes the cos/sin tables, e.g. after the module moved off the meta device."""
        inv_freq, self.scaling = rope_frequencies(
            self.rope_parameters, self.head_dim, self.max_position_embeddings, self.max_positions
        )
        self.rotary_dim = 2 * inv_freq.shape[0]
        self._init_tables(inv_freq, device)

    def _init_tables(self, inv_freq: torch.Tensor, device: torch.device | str) -> None:
        """The cos/sin tables of every position, from the frequencies (on the CPU)."""
        positions = torch.arange(self.max_positions, dtype=torch.float32, device=_CPU)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", (emb.cos() * self.scaling).to(device), persistent=False)
        self.register_buffer("sin", (emb.sin() * self.scaling).to(device), persistent=False)

    def step_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, cos, sin) for a step whose tokens sit at `positions`: token i rotates by
        row indices[i] of the cos and sin tables (the rope kernels take them so)."""
        return positions, self.cos, self.sin

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates q [T, Hq, D] and k [T, Hkv, D] by the positions of their tokens."""
        positions, cos_table, sin_table = self.step_tables(positions)
        cos = cos_table[positions].unsqueeze(1).to(q.dtype)
        sin = sin_table[positions].unsqueeze(1).to(q.dtype)
        if self.rotary_dim == q.shape[-1]:
            return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        r = self.rotary_dim  # partial rotary: only the first r channels rotate
        q_rot = q[..., :r] * cos + rotate_half(q[..., :r]) * sin
        k_rot = k[..., :r] * cos + rotate_half(k[..., :r]) * sin
        return torch.cat((q_rot, q[..., r:]), -1), torch.cat((k_rot, k[..., r:]), -1)


class MultimodalRotaryEmbedding(RotaryEmbedding):
    """M-RoPE (Qwen2-VL, Qwen2.5-VL): a token has three positions (time, height, width), and
    the rotary frequencies are cut into three consecutive sections (`mrope_section`, which
    sums to rotary_dim / 2): section i turns with position i.

    A text token's three positions are equal, which makes it plain RoPE at that position; so
    a step of text tokens (every decode step) passes positions [T] and reads the shared
    tables, and only a step that holds image tokens passes positions [3, T], for which
    tables of its own tokens are computed (once per step: every layer reuses them).
    """

    def __init__(
        self,
        head_dim: int,
        rope_parameters: Mapping,
        max_position_embeddings: int,
        max_positions: int,
        mrope_section: list[int],
    ) -> None:
        self.mrope_section = [int(s) for s in mrope_section]
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        super().__init__(head_dim, rope_parameters, max_position_embeddings, max_positions)

    def _init_tables(self, inv_freq: torch.Tensor, device: torch.device | str) -> None:
        """The shared tables, plus the frequencies and each frequency's section."""
        super()._init_tables(inv_freq, device)
        if sum(self.mrope_section) != inv_freq.shape[0]:
            raise MaxError(
                f"mrope_section {self.mrope_section} must sum to half the rotary width ({inv_freq.shape[0]})"
            )
        section = torch.repeat_interleave(torch.arange(3, device=_CPU), torch.tensor(self.mrope_section, device=_CPU))
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        self.register_buffer("section", section.to(device), persistent=False)

    def step_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions [T]: the shared tables. Positions [3, T]: tables of these T tokens (row i
        for token i), computed as the reference does: angle = position of the frequency's
        section x frequency, in float32."""
        if positions.dim() == 1:
            return super().step_tables(positions)
        if self._last is not None and self._last[0] is positions:
            return self._last[1]
        freqs = positions[self.section].t().float() * self.inv_freq  # [T, rotary_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)
        rows = torch.arange(positions.shape[1], device=positions.device)
        tables = (rows, angles.cos() * self.scaling, angles.sin() * self.scaling)
        self._last = (positions, tables)
        return tables
