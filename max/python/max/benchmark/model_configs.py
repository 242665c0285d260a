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
    "Gemma-3-4B": 4.30e9,  # gemma-3-4b-it, SigLIP tower included
    "Mistral-7B-v0.3": 7.25e9,
    "Phi-3-mini-4k": 3.82e9,
    "Phi-3-mini-128k": 3.82e9,
    "OLMo-2-1124-7B": 7.30e9,
    "DeepSeek-V2-Lite": 15.7e9,
}


def config_dir(name: str) -> Path:
    """The folder of a benchmark model's config.json."""
    return CONFIGS_DIR / name
