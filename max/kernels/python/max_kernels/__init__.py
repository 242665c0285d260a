"""The kernel library: the operations model layers call, each a Triton kernel for CUDA with
its plain-torch reference beside it.

The reference defines the expected result and is the CPU path; the Triton kernel must match
it and is checked against it in tests (in CI through Triton's interpreter on small shapes,
on a GPU at full size). Layers in `max.nn` call the functions exported here, which pick the
implementation for the tensors' device in one module, `max_kernels.ops` (through
`backend.use_triton`). The benchmarks live apart, in `max.benchmark.kernels`.
"""

from max_kernels.backend import backend, configure, get_backend, set_backend
from max_kernels.lora_sgmv import LoRAGroups, LoRAStack
from max_kernels.ops import (
    apply_penalties,
    argmax_rows,
    fp8_linear,
    fused_moe,
    fused_moe_mxfp4,
    gelu_tanh_and_mul,
    int4_linear,
    int8_linear,
    linear,
    lora_add,
    lora_linear,
    mla_decode_attention,
    moe_route,
    paged_attention,
    rms_norm,
    rms_norm_qk,
    rope_and_write_kv,
    sample_tokens,
    silu_and_mul,
    write_kv_cache,
    write_latent_rows,
)
from max_kernels.ragged_layout import RaggedLayout
from max_kernels.sampling import hash32, uniform_noise

__all__ = [
    "LoRAGroups",
    "LoRAStack",
    "RaggedLayout",
    "apply_penalties",
    "argmax_rows",
    "backend",
    "configure",
    "fp8_linear",
    "fused_moe",
    "fused_moe_mxfp4",
    "gelu_tanh_and_mul",
    "get_backend",
    "hash32",
    "int4_linear",
    "int8_linear",
    "linear",
    "lora_add",
    "lora_linear",
    "mla_decode_attention",
    "moe_route",
    "paged_attention",
    "rms_norm",
    "rms_norm_qk",
    "rope_and_write_kv",
    "sample_tokens",
    "set_backend",
    "silu_and_mul",
    "uniform_noise",
    "write_kv_cache",
    "write_latent_rows",
]
