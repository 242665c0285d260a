"""The benchmark model configs: `configs/<name>/config.json`, the published Hugging Face
configs of real models (no weights, no tokenizer), served with `--load-format dummy`.

    --model-path max/python/max/benchmark/configs/Llama-3.1-8B --load-format dummy
"""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

# Name -> the published parameter count, for the configs' test.
BENCHMARK_MODELS: dict[str, float] = {
    "Llama-3.1-8B": 8.0e9,
    "Llama-3.1-70B": 70.6e9,
    "Qwen3-8B": 8.2e9,
    "Qwen3-30B-A3B": 30.5e9,
    "Gemma-3-12B": 11.8e9,
    "gpt-oss-20b": 20.9e9,
    "Qwen2.5-VL-7B": 8.29e9,  # vision tower included
}


def config_dir(name: str) -> Path:
    """The folder of a benchmark model's config.json."""
    return CONFIGS_DIR / name
