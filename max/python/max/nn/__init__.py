"""Neural-network layers shared by the architectures.

Model code reads like the paper: `Transformer` -> `DecoderLayer` -> `Attention` /
`GatedMLP` / `RMSNorm`. Attention reads the step's batch layout and KV cache from the step
context, so layers never mention batching, pages or devices.
"""

from max.nn.attention import Attention
from max.nn.embedding import ScaledEmbedding, VocabParallelEmbedding, VocabParallelLMHead
from max.nn.mlp import GatedMLP, activation
from max.nn.moe import MoEConfig, SparseMoE
from max.nn.norm import GemmaRMSNorm, RMSNorm
from max.nn.parallel import (
    RowParallelLinear,
    TensorParallel,
    tensor_parallel,
    tensor_parallel_context,
)
from max.nn.rotary_embedding import RotaryEmbedding, rope_frequencies
from max.nn.sharded_norm import rms_norm_across_ranks
from max.nn.step_context import StepContext, current_step, step_context
from max.nn.transformer import DecoderConfig, DecoderLayer, Transformer

__all__ = [
    "Attention",
    "DecoderConfig",
    "DecoderLayer",
    "GatedMLP",
    "GemmaRMSNorm",
    "MoEConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "RowParallelLinear",
    "ScaledEmbedding",
    "SparseMoE",
    "StepContext",
    "TensorParallel",
    "Transformer",
    "VocabParallelEmbedding",
    "VocabParallelLMHead",
    "activation",
    "current_step",
    "rms_norm_across_ranks",
    "rope_frequencies",
    "step_context",
    "tensor_parallel",
    "tensor_parallel_context",
]
