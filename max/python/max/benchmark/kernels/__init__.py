"""Benchmarks of the kernel library (`max_kernels`) on a CUDA GPU: each kernel at real shapes
beside its torch reference (`bench`), and sweeps of one kernel's launch configurations
(`fp8_bench`, `gemv_bench`, `mxfp4_moe_bench`; `sampling_moe_bench`'s MoE decode table).
They depend on the kernels, never the reverse; `bench_harness` holds their timing helpers.
"""
