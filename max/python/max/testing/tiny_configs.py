"""Configs of the tiny random checkpoints, one per architecture folder.

Each exercises what is special about its architecture (GQA, rope scaling, biases, q/k
norms, sliding windows, experts...) at a size that runs in milliseconds.
"""

from __future__ import annotations

from typing import Any

from max.testing.tiny_checkpoints import llama_config

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3": llama_config(
        num_hidden_layers=3,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
}
