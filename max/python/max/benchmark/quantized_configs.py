"""Config-only folders of pre-quantized checkpoints, for benchmarks with `--load-format dummy`.

A benchmark config (`configs/<name>/config.json`) with a `quantization_config` added, as a
checkpoint of that format ships it: served with `--load-format dummy`, the model takes the
checkpoint path (detection, plan, quantized layers and kernels) with random weights
quantized on load (FP8 per row; int4 round-to-nearest in the config's groups), so the
formats' speed can be measured without their files.

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.quantized_configs \\
        --base Llama-3.1-8B --kind gptq --output /tmp/Llama-3.1-8B-GPTQ-Int4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from max.benchmark.model_configs import config_dir
from max.entrypoints.process_setup import run_main

QUANTIZATION_CONFIGS: dict[str, dict] = {
    # llmcompressor's FP8_DYNAMIC: e4m3 weights per channel, activations per token.
    "fp8": {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True},
            }
        },
        "ignore": ["lm_head"],
    },
    # transformers' fine-grained FP8 (Qwen3-FP8, DeepSeek): 128 x 128 blocks.
    "fp8-block": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False, "checkpoint_format": "gptq"},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
}


def write_quantized_config(base: str, kind: str, output: Path) -> Path:
    """Writes `output/config.json`: the benchmark config `base` with the `kind` quantization."""
    config = json.loads((config_dir(base) / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIGS[kind]
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(config, indent=2))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="Llama-3.1-8B", help="a folder of max/python/max/benchmark/configs")
    parser.add_argument("--kind", choices=sorted(QUANTIZATION_CONFIGS), required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    print(write_quantized_config(args.base, args.kind, args.output))


if __name__ == "__main__":
    sys.exit(run_main(main))
