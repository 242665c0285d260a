"""Where a decode step's time goes: host milliseconds, kernel launches and GPU time per step.

Builds the engine (any model; `--load-format dummy` for real shapes without weights), fills
a batch of `--batch-size` requests, lets them reach steady decoding, then measures
`--steps` decode steps: wall time of `LLMEngine.step()` (the host's share when the GPU keeps
up), the launch calls the host makes (kernels, graph launches, copies) and the kernels the
GPU runs, with torch.profiler. Run it once per mode to see what graphs, kernels and
overlap each change:

    python3 -m max.benchmark.profile_step --model-path max/python/max/benchmark/configs/Llama-3.1-8B \\
        --load-format dummy --devices gpu --batch-size 1 [--kernels torch] [--enforce-eager] [--no-async-scheduling]

`--lora-rank R --lora-adapters N` profiles LoRA serving: N random rank-R adapters on every
projection (`benchmark_lora.write_random_adapter`), the requests spread over them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from max.entrypoints.cli_args import add_model_args, pipeline_config_from_args
from max.entrypoints.process_setup import run_main

# Profiler event names of launches made by the host (runtime and driver API).
_LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


def _decode_ready(engine, batch_size: int, prompt_len: int, vocab: int, loras: list[str] | None = None) -> None:
    from max.pipelines.lib import SamplingParams

    # Requests that outlast the measurement (EOS ignored, no length reached).
    params = SamplingParams(max_new_tokens=None, temperature=0.0, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    for i in range(batch_size):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=g).tolist()
        engine.add_request(f"p{i}", prompt, params, lora=loras[i % len(loras)] if loras else None)
    # Prefill everyone and decode a few steps, so graphs and allocations are warm.
    for _ in range(12):
        engine.step()
    while engine.scheduler.waiting or any(r.num_uncomputed > 1 for r in engine.scheduler.running):
        engine.step()
    for _ in range(8):
        engine.step()


def measure(engine, steps: int, top_kernels: int = 0, trace: str | None = None) -> dict:
    """Host ms, launches and kernels per decode step (the engine is in steady decode)."""
    device = engine.model.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    times = []
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    sync()
    wall = (time.perf_counter() - start) / steps
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
        sync()
    if trace:  # a few steps only: a trace of many steps is tens of megabytes
        with profile(activities=activities) as short:
            for _ in range(5):
                engine.step()
            sync()
        short.export_chrome_trace(trace)
    launches = kernels = 0
    gpu_us = 0.0
    by_kernel: dict[str, list[float]] = {}
    for e in prof.events():
        if e.name in _LAUNCH_CALLS:
            launches += 1
        elif e.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
            gpu_us += e.device_time
            entry = by_kernel.setdefault(e.name[:80], [0, 0.0])
            entry[0] += 1
            entry[1] += e.device_time
    # Where the GPU time goes: the kernels taking most of it, per step.
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:top_kernels]
    return {
        "step_ms": 1000 * wall,
        "host_ms_median": 1000 * statistics.median(times),
        "host_ms_p90": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
        "host_ms_max": 1000 * max(times),
        "launch_calls_per_step": launches / steps,
        "kernels_per_step": kernels / steps,
        "gpu_ms_per_step": gpu_us / 1000 / steps,
        "batch_size": engine.stats().num_running,
        "top_kernels": [
            {"kernel": name, "per_step": n / steps, "us_per_step": us / steps} for name, (n, us) in top
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Builds the engine, measures, prints one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--label", default="")
    parser.add_argument("--top-kernels", type=int, default=0, help="also list the N kernels taking the most GPU time")
    parser.add_argument("--trace", help="write a Chrome trace of five more steps here")
    parser.add_argument("--lora-rank", type=int, default=0, help="serve random LoRA adapters of this rank (0: none)")
    parser.add_argument("--lora-adapters", type=int, default=1, help="how many, the requests spread over them")
    args = parser.parse_args(argv)
    if args.max_batch_size < args.batch_size:
        args.max_batch_size = args.batch_size
    return run_main(_run, args)


def _run(args: argparse.Namespace) -> int:
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import build_engine, resolve_model

    config = pipeline_config_from_args(args)
    with tempfile.TemporaryDirectory(prefix="max-profile-lora-") as tmp:
        resolved = resolve_model(config, register_all())
        names = _write_random_adapters(resolved.hf_config, args, Path(tmp))
        if names is not None:
            modules = [f"{n}={Path(tmp) / n}" for n in names]
            config = dataclasses.replace(
                resolved.config, enable_lora=True, lora_modules=modules, max_loras=len(names), max_lora_rank=args.lora_rank
            )
            resolved = resolve_model(config, register_all())
        engine = build_engine(resolved)
        _decode_ready(engine, args.batch_size, args.prompt_len, engine.vocab_size, names)
        result = measure(engine, args.steps, args.top_kernels, args.trace)
        engine.close()
    result["label"] = args.label
    result["tokens_per_second"] = result["batch_size"] * 1000 / result["step_ms"]
    print(json.dumps(result))
    return 0


def _write_random_adapters(hf_config, args: argparse.Namespace, folder: Path) -> list[str] | None:
    """With `--lora-rank`, writes the random adapters into `folder/<name>`; their names
    (None without)."""
    if args.lora_rank <= 0:
        return None
    from max.benchmark.benchmark_lora import write_random_adapter

    names = [f"adapter{i}" for i in range(args.lora_adapters)]
    for i, name in enumerate(names):
        write_random_adapter(folder / name, hf_config, args.lora_rank, i)
    return names


if __name__ == "__main__":
    sys.exit(main())
