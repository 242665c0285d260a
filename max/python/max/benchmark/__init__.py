"""Benchmarks: offline generation against transformers, and the serving benchmark client."""
