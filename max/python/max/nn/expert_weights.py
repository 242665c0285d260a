"""How a mixture's expert weights are held, and the grouped product that reads them.

`max.nn.SparseMoE` routes tokens; the experts' weights belong to one of these schemes,
which registers the layer's parameters, says where the checkpoint keeps them, and runs
the experts:
- `DenseExpertWeights`: float weights stacked per projection ([E, 2I, H] gate then up,
  [E, H, I] down), read from the per-expert tensors most checkpoints have.
- `Mxfp4ExpertWeights`: gpt-oss's MXFP4 experts kept packed as the checkpoint stores them
  (e2m1 codes two per byte, one e8m0 scale per 32 inputs; gate and up rows interleaved),
  decoded inside the grouped kernel: a quarter of bfloat16's bytes.
`MoEConfig.expert_weights` names the scheme ("dense" or "mxfp4").
"""

from __future__ import annotations

import torch
from torch import nn

import max_kernels
from max.nn.checkpoint_layout import Concat, Stack, whole_or_shard

# Inputs per MXFP4 block (one scale each); bytes per block (two codes a byte).
MXFP4_BLOCK = 32
_BLOCK_BYTES = MXFP4_BLOCK // 2
# An e8m0 scale is 2 ** (byte - 127); dummy weights use 2 ** -7, so that e2m1 values (up to
# 6) become weights of about N(0, 0.02)'s size.
_DUMMY_SCALE = 127 - 7


class DenseExpertWeights:
    """Float expert weights, stacked per projection (see the module docstring)."""

    name = "dense"

    def create(self, moe: nn.Module, hidden: int, local: int, bias: bool) -> None:
        """Registers `experts_gate_up` [E, 2I, H], `experts_down` [E, H, I] (and biases)."""
        e = moe.config.num_experts
        moe.experts_gate_up = nn.Parameter(torch.empty(e, 2 * local, hidden))
        moe.experts_down = nn.Parameter(torch.empty(e, hidden, local))
        moe.experts_gate_up_bias = moe.experts_down_bias = None
        if bias:
            moe.experts_gate_up_bias = nn.Parameter(torch.empty(e, 2 * local))
            moe.experts_down_bias = nn.Parameter(torch.empty(e, hidden))

    def checkpoint_layout(self, moe: nn.Module) -> dict:
        """Checkpoints store each expert's gate, up and down projections apart."""
        experts = range(moe.config.num_experts)
        bounds, full = moe.intermediate, moe.config.moe_intermediate_size

        def rows(e: int, proj: str, kind: str = "weight"):
            return whole_or_shard(f"experts.{e}.{proj}_proj.{kind}", 0, bounds, full)

        layout = {
            "experts_gate_up": Stack(tuple(Concat((rows(e, "gate"), rows(e, "up"))) for e in experts)),
            "experts_down": Stack(
                tuple(whole_or_shard(f"experts.{e}.down_proj.weight", 1, bounds, full) for e in experts)
            ),
        }
        if moe.experts_gate_up_bias is not None:
            layout["experts_gate_up_bias"] = Stack(
                tuple(Concat((rows(e, "gate", "bias"), rows(e, "up", "bias"))) for e in experts)
            )
            layout["experts_down_bias"] = Stack(tuple(f"experts.{e}.down_proj.bias" for e in experts))
        return layout

    def run(self, moe: nn.Module, x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor, down_bias) -> torch.Tensor:
        """The chosen experts' gated MLPs, summed by router weight."""
        c = moe.config
        return max_kernels.fused_moe(
            x, moe.experts_gate_up, moe.experts_down, weights, chosen, activation=moe.activation,
            b_gate_up=moe.experts_gate_up_bias, b_down=down_bias, alpha=c.swiglu_alpha, limit=c.swiglu_limit,
        )  # fmt: skip

    def fill_dummy(self, name: str, value: torch.Tensor, generator: torch.Generator) -> bool:
        """Float weights take the loader's default random values."""
        return False


class Mxfp4ExpertWeights:
    """gpt-oss's MXFP4 experts, kept packed (see the module docstring).

    Parameters: `experts_gate_up_blocks` uint8 [E, 2I, H/32, 16] and `_scales` [E, 2I, H/32]
    (row 2j is gate feature j, row 2j + 1 up feature j, as stored, so a tensor-parallel
    rank's features are a contiguous run of rows), `experts_down_blocks` [E, H, I/32, 16]
    and `_scales` [E, H, I/32]; float biases `experts_gate_up_bias` [E, 2I] (interleaved
    likewise) and `experts_down_bias` [E, H]. They are read from the checkpoint's stacked
    tensors (`experts.gate_up_proj_blocks`...) without decoding.
    """

    name = "mxfp4"

    @staticmethod
    def supports(hidden: int, bounds: tuple[int, int]) -> bool:
        """Whether the packed layout can hold these shapes: the inputs of both projections
        (the hidden size, and this rank's intermediate features) in whole blocks."""
        return hidden % MXFP4_BLOCK == 0 and bounds[0] % MXFP4_BLOCK == 0 and bounds[1] % MXFP4_BLOCK == 0

    @staticmethod
    def scratch_bytes(num_experts: int, hidden: int, inter: int, dtype: torch.dtype, max_tokens: int) -> int:
        """Device memory a step of `max_tokens` tokens may take beyond its activations: from
        `max_kernels.mxfp4_moe.DEQUANT_MIN_TOKENS` tokens the kernel decodes one layer's
        experts at a time into a scratch of `dtype`."""
        if max_tokens < max_kernels.mxfp4_moe.DEQUANT_MIN_TOKENS:
            return 0
        return num_experts * 3 * inter * hidden * torch.empty((), dtype=dtype).element_size()

    def create(self, moe: nn.Module, hidden: int, local: int, bias: bool) -> None:
        """Registers the packed blocks and scales, and the float biases."""
        e = moe.config.num_experts
        u8 = dict(dtype=torch.uint8)
        moe.experts_gate_up_blocks = nn.Parameter(
            torch.empty(e, 2 * local, hidden // MXFP4_BLOCK, _BLOCK_BYTES, **u8), requires_grad=False
        )
        moe.experts_gate_up_scales = nn.Parameter(torch.empty(e, 2 * local, hidden // MXFP4_BLOCK, **u8), requires_grad=False)
        moe.experts_down_blocks = nn.Parameter(
            torch.empty(e, hidden, local // MXFP4_BLOCK, _BLOCK_BYTES, **u8), requires_grad=False
        )
        moe.experts_down_scales = nn.Parameter(torch.empty(e, hidden, local // MXFP4_BLOCK, **u8), requires_grad=False)
        moe.experts_gate_up_bias = moe.experts_down_bias = None
        if bias:
            moe.experts_gate_up_bias = nn.Parameter(torch.empty(e, 2 * local))
            moe.experts_down_bias = nn.Parameter(torch.empty(e, hidden))

    def checkpoint_layout(self, moe: nn.Module) -> dict:
        """The checkpoint's stacked tensors; a rank reads its rows of gate_up (2 per
        feature) and its blocks of down's inputs."""
        (i0, i1), full = moe.intermediate, moe.config.moe_intermediate_size
        pairs, groups = (2 * i0, 2 * i1), (i0 // MXFP4_BLOCK, i1 // MXFP4_BLOCK)
        layout = {
            "experts_gate_up_blocks": whole_or_shard("experts.gate_up_proj_blocks", 1, pairs, 2 * full),
            "experts_gate_up_scales": whole_or_shard("experts.gate_up_proj_scales", 1, pairs, 2 * full),
            "experts_down_blocks": whole_or_shard("experts.down_proj_blocks", 2, groups, full // MXFP4_BLOCK),
            "experts_down_scales": whole_or_shard("experts.down_proj_scales", 2, groups, full // MXFP4_BLOCK),
        }
        if moe.experts_gate_up_bias is not None:
            layout["experts_gate_up_bias"] = whole_or_shard("experts.gate_up_proj_bias", 1, pairs, 2 * full)
            layout["experts_down_bias"] = "experts.down_proj_bias"
        return layout

    def run(self, moe: nn.Module, x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor, down_bias) -> torch.Tensor:
        """The chosen experts' gated MLPs, decoded from MXFP4 inside the kernels."""
        c = moe.config
        return max_kernels.fused_moe_mxfp4(
            x, moe.experts_gate_up_blocks, moe.experts_gate_up_scales, moe.experts_down_blocks,
            moe.experts_down_scales, weights, chosen, activation=moe.activation,
            b_gate_up=moe.experts_gate_up_bias, b_down=down_bias, alpha=c.swiglu_alpha, limit=c.swiglu_limit,
        )  # fmt: skip

    def fill_dummy(self, name: str, value: torch.Tensor, generator: torch.Generator) -> bool:
        """Random codes with scales of 2 ** -7 (`--load-format dummy`): weights of about the
        size the loader's float dummies have."""
        if name.endswith("_blocks"):
            value.random_(0, 256, generator=generator)
            return True
        if name.endswith("_scales"):
            value.fill_(_DUMMY_SCALE)
            return True
        return False


EXPERT_WEIGHTS = {scheme.name: scheme for scheme in (DenseExpertWeights, Mxfp4ExpertWeights)}
