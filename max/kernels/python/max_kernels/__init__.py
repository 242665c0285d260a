"""The kernel library: operations the model layers call, each with a pure-torch reference.

Every kernel here has a reference implementation in plain torch that runs on any device and
defines the expected result; faster device kernels (Triton on CUDA) must match it and are
checked against it in tests. Layers in `max.nn` call the public functions below, which pick
the implementation for the tensors' device.
"""

from max_kernels.paged_attention import paged_attention, write_kv_cache
from max_kernels.ragged_layout import RaggedLayout

__all__ = ["RaggedLayout", "paged_attention", "write_kv_cache"]
