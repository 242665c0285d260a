"""Choosing tokens: per-request `SamplingParams`, the batched sampler on the device, and
structured outputs (grammar masks).
"""
