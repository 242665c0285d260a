"""Checkpoint formats (safetensors, GGUF) and loading them into models."""

from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor, WeightsFormat
from max.pipelines.lib.weights.gguf_checkpoint import open_gguf
from max.pipelines.lib.weights.gguf_config import gguf_hf_config
from max.pipelines.lib.weights.gguf_reader import GGUFFile
from max.pipelines.lib.weights.load_into_module import fill_dummy_weights, load_checkpoint_into
from max.pipelines.lib.weights.safetensors_checkpoint import open_safetensors

__all__ = [
    "Checkpoint",
    "CheckpointTensor",
    "GGUFFile",
    "WeightsFormat",
    "fill_dummy_weights",
    "gguf_hf_config",
    "load_checkpoint_into",
    "open_gguf",
    "open_safetensors",
]
