"""max: an LLM inference and serving framework.

Layers, from the bottom up (dependencies point one way):
`max_kernels` -> `max.nn` / `max.kv_cache` -> `max.pipelines.lib` -> `max.serve` ->
`max.entrypoints`. Architectures live in `max.pipelines.architectures`, one folder each.
"""

__version__ = "0.1.0"
