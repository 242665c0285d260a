"""LoRA serving cost: the same offline workload through the engine without LoRA, then with
random adapters, side by side; and batch-1 decode with and without an adapter.

Random rank-`--lora-rank` adapters (PEFT format, every projection of every layer, written
into a temporary folder from the model's config) are spread round-robin over the requests.
Phases, each after a warm-up: (1) the base engine (no `--enable-lora`): `--num-prompts`
requests of `--input-len` random prompt tokens and `--output-len` output tokens (greedy,
EOS ignored, all added at once), then one request's decode speed; (2) an engine with
`--enable-lora --max-loras N` and the adapters loaded: the same workload with adapters,
base-model requests on it, and one request's decode with an adapter; (3) with
`--load-while-streaming N`, N requests stream while one more adapter is loaded as the
server loads one (`run_load_while_streaming`). The issue's goals: adapters >= 85 % of the
base throughput, batch-1 decode with an adapter >= 90 %, and no stream stalled by a load
for longer than one step.

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.benchmark_lora \\
        --model-path max/python/max/benchmark/configs/Llama-3.1-8B --load-format dummy \\
        --devices gpu --num-prompts 1000 --input-len 200 --output-len 180 --num-adapters 8 \\
        --lora-rank 16 --max-batch-size 256 --load-while-streaming 64 --result-file lora.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from max.entrypoints.process_setup import run_main
from max.errors import MaxError

_MODULES = {  # PEFT module -> (input width, output width) from the text config
    "self_attn.q_proj": lambda c, d: (c.hidden_size, c.num_attention_heads * d),
    "self_attn.k_proj": lambda c, d: (c.hidden_size, c.num_key_value_heads * d),
    "self_attn.v_proj": lambda c, d: (c.hidden_size, c.num_key_value_heads * d),
    "self_attn.o_proj": lambda c, d: (c.num_attention_heads * d, c.hidden_size),
    "mlp.gate_proj": lambda c, d: (c.hidden_size, c.intermediate_size),
    "mlp.up_proj": lambda c, d: (c.hidden_size, c.intermediate_size),
    "mlp.down_proj": lambda c, d: (c.intermediate_size, c.hidden_size),
}


def write_random_adapter(folder: Path, hf_config, rank: int, seed: int) -> Path:
    """A PEFT adapter of random A and B (bfloat16) on every projection of every layer."""
    from safetensors.torch import save_file

    from max.pipelines.lib.hub.hf_config import head_dim, text_config

    config = text_config(hf_config)
    d = head_dim(config)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module, shape in _MODULES.items():
            fan_in, fan_out = shape(config, d)
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=g) * fan_in**-0.5).bfloat16()
            tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=g) * 0.01).bfloat16()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none", "target_modules": [m.split(".")[-1] for m in _MODULES]}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(engine, prompts: list[list[int]], output_len: int, loras: list[str | None]) -> dict:
    """All requests at once, run to the end: output tokens per second and elapsed time."""
    from max.pipelines.lib import SamplingParams

    params = SamplingParams(max_new_tokens=output_len, temperature=0.0, ignore_eos=True)
    engine.kv_cache.pool.reset_prefix_cache()
    device = engine.model.device
    _sync(device)
    start = time.perf_counter()
    for i, (prompt, lora) in enumerate(zip(prompts, loras)):
        engine.add_request(f"r{i}-{time.monotonic_ns()}", prompt, params, lora=lora)
    tokens = 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.error:
                raise MaxError(f"request {out.request_id} failed: {out.error}")
            tokens += len(out.new_token_ids)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"requests": len(prompts), "output_tokens": tokens, "elapsed_s": elapsed, "output_tok_s": tokens / elapsed}


def run_decode(engine, prompt: list[int], output_len: int, lora: str | None) -> dict:
    """One request: its decode speed after the first token."""
    from max.pipelines.lib import SamplingParams

    engine.kv_cache.pool.reset_prefix_cache()
    params = SamplingParams(max_new_tokens=output_len, temperature=0.0, ignore_eos=True)
    engine.add_request(f"decode-{time.monotonic_ns()}", prompt, params, lora=lora)
    first, tokens = None, 0
    while engine.has_unfinished():
        for out in engine.step():
            tokens += len(out.new_token_ids)
            if first is None and out.new_token_ids:
                first, first_count = time.perf_counter(), tokens
    _sync(engine.model.device)
    return {"decode_tok_s": (tokens - first_count) / (time.perf_counter() - first)}


def run_load_while_streaming(
    engine, prompts: list[list[int]], output_len: int, loras: list[str | None], new_name: str, new_path: str, after_steps: int = 4
) -> dict:
    """`prompts` stream (all added at once); `after_steps` steps after the last of them has
    its first token, adapter `new_path` is loaded as `new_name` the way the server's engine
    loop does it (`apply_lora_op`, then `finished_lora_ops` between steps: read in the
    background while the engine steps); once it is in, one request per adapter of the
    stream (base included) starts on it.

    Reports the median decode step before the load, the longest step while the adapter
    was read and the step that first ran it (its slot filled, the new requests' prefill),
    and the longest wait of any streaming request between two tokens from the load until
    two steps after the adapter is in (its first requests' prefill included), in units of
    that median: the issue's goal is that no request stalls longer than one step
    (a gap under about two steps)."""
    from max.pipelines.lib import SamplingParams
    from max.serve.engine_messages import LoRAAdapterOp
    from max.serve.lora_engine_op import apply_lora_op, finished_lora_ops

    params = SamplingParams(max_new_tokens=output_len, temperature=0.0, ignore_eos=True)
    engine.kv_cache.pool.reset_prefix_cache()
    device = engine.model.device
    streams = [f"s{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    stream_ids = set(streams)
    for rid, prompt, lora in zip(streams, prompts, loras):
        engine.add_request(rid, prompt, params, lora=lora)
    last_token: dict[str, float] = {}
    longest_gap = 0.0  # of a streaming request, from the load to two steps after it is in
    failed: list[str] = []
    step_s: list[float] = []
    decoding = load_at = load_done = None  # step indices
    new_requests = gap_step = 0
    while engine.has_unfinished() or load_done is None:
        step = len(step_s)
        if decoding is None and len(last_token) == len(streams):
            decoding, load_at = step, step + after_steps
        if step == load_at or (load_at is None and not engine.has_unfinished()):
            load_at = step
            answer = apply_lora_op(engine, LoRAAdapterOp("load-op", new_name, new_path))
            if answer is not None:  # refused at once
                raise MaxError(f"loading {new_name} failed: {answer.error}")
        t0 = time.perf_counter()
        outputs = engine.step() if engine.has_unfinished() else []
        for done in finished_lora_ops(engine, idle=not outputs):
            if done.error:
                raise MaxError(f"loading {new_name} failed: {done.error}")
            load_done = step
            new_requests = len(set(loras))
            for j, prompt in enumerate(prompts[:new_requests]):
                engine.add_request(f"new{j}-{time.monotonic_ns()}", prompt, params, lora=new_name)
        _sync(device)
        now = time.perf_counter()
        step_s.append(now - t0)
        for out in outputs:
            if out.error:
                failed.append(f"{out.request_id}: {out.error}")
            if out.new_token_ids and out.request_id in stream_ids:
                in_window = load_at is not None and step >= load_at and (load_done is None or step <= load_done + 2)
                if out.request_id in last_token and in_window:
                    if now - last_token[out.request_id] > longest_gap:
                        longest_gap, gap_step = now - last_token[out.request_id], step
                last_token[out.request_id] = now
    if failed:
        raise MaxError(f"{len(failed)} requests failed while an adapter loaded: {failed[:3]}")
    steady = sorted(step_s[(decoding or 0) + 1 : load_at]) or sorted(step_s)
    median = steady[len(steady) // 2]
    return {
        "streaming_requests": len(streams), "new_adapter_requests": new_requests, "steps": len(step_s),
        "median_step_ms": 1e3 * median, "load_steps": load_done - load_at + 1,
        "max_step_ms_while_reading": 1e3 * max(step_s[load_at : load_done + 1]),
        "first_step_with_it_ms": 1e3 * step_s[load_done + 1] if load_done + 1 < len(step_s) else None,
        "max_gap_ms": 1e3 * longest_gap, "max_gap_in_steps": longest_gap / median if median else float("inf"),
        "longest_gap_ends_at_step": gap_step - load_at, "steps_ms_from_load": [round(1e3 * t, 1) for t in step_s[load_at : load_done + 6]],
    }  # fmt: skip


def _engine(config):
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import build_engine, resolve_model

    return build_engine(resolve_model(config, register_all()))


def _release_memory(device: torch.device) -> None:
    """Gives a closed engine's device memory back (the caller has dropped its reference:
    the next engine sizes its KV cache by what is free)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _phase(engine, prompts, args, loras_cycle: list[str | None], decode_lora: str | None) -> dict:
    warm = min(len(prompts), 2 * args.max_batch_size)
    run_workload(engine, prompts[:warm], 8, [loras_cycle[i % len(loras_cycle)] for i in range(warm)])
    loras = [loras_cycle[i % len(loras_cycle)] for i in range(len(prompts))]
    result = run_workload(engine, prompts, args.output_len, loras)
    result.update(run_decode(engine, prompts[0], args.decode_len, decode_lora))
    if args.step_stats:
        result["profile"] = _profiled_workload(engine, prompts[: args.step_stats], args.output_len, loras)
    return result


def _profiled_workload(engine, prompts: list[list[int]], output_len: int, loras: list[str | None]) -> dict:
    """The first requests of the workload again, recorded step by step and under the
    kernel profiler (a separate run: the profiler slows the host down)."""
    from max.benchmark.step_stats import KernelProfile
    from max.pipelines.lib.engine.step_recorder import StepRecorder

    recorder = StepRecorder(engine)
    profile = KernelProfile(top=15) if engine.model.device.type == "cuda" else None
    try:
        if profile is not None:
            profile.__enter__()
        run_workload(engine, prompts, output_len, loras)
        if profile is not None:
            profile.__exit__(None, None, None)
        extra = {"step_stats": recorder.summarize()}
        if profile is not None:
            extra["kernel_profile"] = profile.summary()
    finally:
        recorder.close()
    extra["step_stats"].pop("timeline", None)
    return extra


def _run(args: argparse.Namespace) -> int:
    from max.entrypoints.cli_args import pipeline_config_from_args
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import resolve_model

    config = pipeline_config_from_args(args)
    resolved = resolve_model(config, register_all())
    config = resolved.config
    vocab = int(getattr(resolved.hf_config, "vocab_size", 0) or resolved.hf_config.get_text_config().vocab_size)
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(10, vocab - 10, args.input_len).tolist() for _ in range(args.num_prompts)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="max-lora-bench-") as tmp:
        names = [f"adapter{i}" for i in range(args.num_adapters)]
        paths = [write_random_adapter(Path(tmp) / n, resolved.hf_config, args.lora_rank, i) for i, n in enumerate(names)]
        print(f"{len(paths)} random rank-{args.lora_rank} adapters written", file=sys.stderr)
        engine = _engine(config)
        results["base engine, no adapters"] = _phase(engine, prompts, args, [None], None)
        engine.close()
        engine = None
        _release_memory(config.device)
        lora_config = dataclasses.replace(
            config, enable_lora=True, lora_modules=[f"{n}={p}" for n, p in zip(names, paths)],
            max_loras=args.num_adapters, max_lora_rank=args.lora_rank,
        )  # fmt: skip
        engine = _engine(lora_config)
        results[f"LoRA engine, {args.num_adapters} adapters"] = _phase(engine, prompts, args, list(names), names[0])
        results["LoRA engine, base requests"] = _phase(engine, prompts, args, [None], None)
        if args.load_while_streaming:
            extra = write_random_adapter(Path(tmp) / "loaded-late", resolved.hf_config, args.lora_rank, len(names))
            streams = [prompts[i % len(prompts)] for i in range(args.load_while_streaming)]
            cycle = [*names, None]
            results["load while streaming"] = run_load_while_streaming(
                engine, streams, args.output_len, [cycle[i % len(cycle)] for i in range(len(streams))], "loaded-late", str(extra)
            )
        engine.close()
    base = results["base engine, no adapters"]
    loading = results.pop("load while streaming", None)
    print(f"{'run':<34}{'output tok/s':>14}{'elapsed s':>11}{'batch-1 decode tok/s':>22}")
    for name, r in results.items():
        print(f"{name:<34}{r['output_tok_s']:>14.0f}{r['elapsed_s']:>11.2f}{r['decode_tok_s']:>22.1f}")
    adapters = results[f"LoRA engine, {args.num_adapters} adapters"]
    ratio, decode_ratio = adapters["output_tok_s"] / base["output_tok_s"], adapters["decode_tok_s"] / base["decode_tok_s"]
    if args.step_stats:
        from max.benchmark.step_stats import format_stats

        for name, r in results.items():
            print(f"\n{name}, first {args.step_stats} requests profiled:\n{format_stats(r['profile'])}")
    print(f"throughput with adapters: {ratio:.1%} of base (goal >= 85%); batch-1 decode: {decode_ratio:.1%} (goal >= 90%)")
    if loading is not None:
        results["load while streaming"] = loading
        print(
            f"an adapter loaded while {loading['streaming_requests']} requests streamed: 0 failed; read in "
            f"{loading['load_steps']} steps; median decode step before {loading['median_step_ms']:.1f} ms, longest step while "
            f"reading {loading['max_step_ms_while_reading']:.1f} ms, first step with it {loading['first_step_with_it_ms'] or 0:.1f} ms; "
            f"longest wait of a stream between two tokens meanwhile {loading['max_gap_ms']:.1f} ms = "
            f"{loading['max_gap_in_steps']:.2f} median steps (goal: no stall longer than one step)"
        )
    if args.result_file:
        record = {"model": resolved.source.name, "devices": config.devices, "dtype": str(resolved.dtype), "args": vars(args),
                  "results": results, "throughput_ratio": ratio, "decode_ratio": decode_ratio}  # fmt: skip
        Path(args.result_file).write_text(json.dumps(record, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags: the workload's, plus every model and engine flag of `serve`."""
    from max.entrypoints.cli_args import add_model_args

    parser = argparse.ArgumentParser(prog="benchmark_lora", description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--input-len", type=int, default=200)
    parser.add_argument("--output-len", type=int, default=180)
    parser.add_argument("--decode-len", type=int, default=256, help="tokens of the batch-1 decode runs")
    parser.add_argument("--num-adapters", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step-stats", type=int, default=0, metavar="N",
        help="after each phase, run its first N requests again under the step recorder and the kernel profiler",
    )  # fmt: skip
    parser.add_argument(
        "--load-while-streaming", type=int, default=0, metavar="N",
        help="after the phases, stream N requests and load one more adapter meanwhile (the server's way); report stalls",
    )  # fmt: skip
    parser.add_argument("--result-file", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the phases and prints them side by side."""
    return run_main(_run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
