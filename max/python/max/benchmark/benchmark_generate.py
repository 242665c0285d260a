"""Offline generation benchmark: this engine against transformers `generate`, side by side.

Measures, in one run on one machine, for the same model and dtype:
- load time (ours from GGUF; transformers through its own GGUF loader, or from the folder);
- decode speed of one request (tokens/s after the first token) and its time to first token;
- aggregate throughput of N concurrent requests (ours: continuous batching; transformers:
  the requests one after another, and as one padded batch).

    ./bazelw run //max/python/max/benchmark:benchmark_generate -- [--model-path X] [--devices gpu]
        [--encodings float32,bfloat16,q8_0,q4_1 --hf-encodings float32,bfloat16 --llama-cpp]

With `--speculative-config JSON` ours runs twice, without and with speculation, on the same
prompts: the report gives both speeds, their ratio, whether the outputs were identical and
the drafts' acceptance. `--workload FILE` takes the prompts from a ShareGPT-format file
(e.g. benchmark/workloads/repetition_sharegpt.json, where answers copy their prompts); the
batch-1 row is then every prompt run alone in turn.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_result_file_arg
from max.errors import MaxError


@dataclass
class Result:
    """One row of the report."""

    name: str
    tokens: int
    seconds: float
    ttft: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List some good habits for writing maintainable software.",
    "What are the main causes of the French Revolution?",
    "Describe the water cycle in a few paragraphs.",
    "Give me a recipe for a simple vegetable soup.",
    "Why is the sky blue? Explain the physics.",
    "Summarize the plot of a famous novel of your choice.",
    "What should a beginner know before running a marathon?",
    "Compare cats and dogs as pets.",
    "How do vaccines train the immune system?",
    "Write a polite email asking for a deadline extension.",
    "What is the difference between weather and climate?",
    "Describe a day in the life of a medieval blacksmith.",
    "How does public-key cryptography work?",
    "Give advice to someone learning to play the guitar.",
]


def workload_prompts(path: str) -> list[str]:
    """The first human turn of each conversation of a ShareGPT-format JSON file."""
    with open(path) as f:
        entries = json.load(f)
    prompts = []
    for entry in entries:
        turns = entry.get("conversations") or []
        first = next((t.get("value") for t in turns if t.get("from") in ("human", "user")), None)
        if first:
            prompts.append(first)
    if not prompts:
        raise MaxError(f"--workload {path}: no conversation with a human turn")
    return prompts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ours(
    args, prompts_ids: list[list[int]], encoding: str | None = None, speculative: str | None = None
) -> tuple[float, Result, Result, dict]:
    """(load seconds, batch-1 row, concurrent row, details: outputs and spec_decode counts)."""
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model

    # `ENCODING+METHOD` adds --quantization METHOD (e.g. bfloat16+int8_dynamic).
    encoding, _, quantization = (encoding or "").partition("+")
    config = PipelineConfig(
        model_path=args.model_path,
        devices=args.devices,
        quantization_encoding=encoding or None,
        quantization=quantization or None,
        max_length=args.max_length,
        max_batch_size=max(args.concurrency, 1),
        kv_cache_page_size=args.page_size,
        speculative_config=speculative,
    )
    config.validate()
    start = time.perf_counter()
    resolved = resolve_model(config, register_all())
    engine = build_engine(resolved)
    _sync(config.device)
    load = time.perf_counter() - start
    label = f"ours {config.quantization_encoding or 'default'}"
    if quantization:
        label += f"+{quantization}"
    if config.quantization_encoding == "auto":  # say what auto stood for on this machine
        chosen = resolved.config
        label += f" (-> {chosen.quantization_encoding}{'+' + chosen.quantization if chosen.quantization else ''})"
    if speculative is not None:
        spec = config.speculative_config
        label += f" + {spec.method} k={spec.num_speculative_tokens}"
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    outputs: list[list[int]] = []

    def run(batch: list[list[int]]) -> tuple[int, float, float]:
        ids_of = [f"r{i}-{time.perf_counter_ns()}" for i in range(len(batch))]
        tokens: dict[str, list[int]] = {rid: [] for rid in ids_of}
        for rid, ids in zip(ids_of, batch):
            engine.add_request(rid, ids, params)
        t0 = time.perf_counter()
        first = None
        count = 0
        while engine.has_unfinished():
            for out in engine.step():
                count += len(out.new_token_ids)
                tokens[out.request_id].extend(out.new_token_ids)
                if first is None and out.new_token_ids:
                    first = time.perf_counter()
        _sync(config.device)
        outputs.extend(tokens[rid] for rid in ids_of)
        return count, time.perf_counter() - t0, first - t0

    run([prompts_ids[0]])  # warm-up
    outputs.clear()
    spec_before = engine.stats().spec_decode
    # Batch 1: the first prompt, or every workload prompt alone in turn.
    decoded, seconds, ttfts = 0, 0.0, []
    for ids in prompts_ids[: len(args.workload_prompts)] if args.workload_prompts else [prompts_ids[0]]:
        n, total, ttft = run([ids])
        decoded, seconds = decoded + n - 1, seconds + total - ttft
        ttfts.append(ttft)
    single = Result(f"{label}, 1 request (decode)", decoded, seconds, sum(ttfts) / len(ttfts))
    spec_single = engine.stats().spec_decode - spec_before
    n, total, _ = run(prompts_ids[: args.concurrency])
    many = Result(f"{label}, {args.concurrency} concurrent requests", n, total)
    details = {"outputs": outputs}
    if engine.speculator is not None:
        details["spec_decode_batch1"] = spec_single.to_json()
    engine.close()
    return load, single, many, details


class _TimingStreamer:
    """A transformers streamer that notes when each new token arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # the first call carries the prompt
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def bench_transformers(
    args, prompts_ids: list[list[int]], gguf_file: str | None, directory: str, encoding: str = "float32"
) -> tuple[float, Result, Result | None, Result]:
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[encoding]
    label = f"transformers {encoding}"
    device = torch.device("cuda" if args.devices.startswith("gpu") else "cpu")
    start = time.perf_counter()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs).to(device).eval()
    load = time.perf_counter() - start
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    def one(ids: list[int]) -> tuple[int, float, float]:
        streamer = _TimingStreamer()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=device), streamer=streamer, **gen)
        _sync(device)
        return out.shape[1] - len(ids), time.perf_counter() - t0, streamer.times[0] - t0

    one(prompts_ids[0])  # warm-up
    n, total, ttft = one(prompts_ids[0])
    single = Result(f"{label}, 1 request (decode)", n - 1, total - ttft, ttft)
    sequential = None
    if args.hf_sequential:
        t0 = time.perf_counter()
        count = sum(one(ids)[0] for ids in prompts_ids[: args.concurrency])
        sequential = Result(f"{label}, {args.concurrency} requests one by one", count, time.perf_counter() - t0)
    batch = prompts_ids[: args.concurrency]
    width = max(len(p) for p in batch)
    pad = 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=mask, pad_token_id=pad, **gen)
    _sync(device)
    padded = Result(
        f"{label}, {args.concurrency} requests as one padded batch",
        (out.shape[1] - width) * len(batch),
        time.perf_counter() - t0,
    )
    return load, single, sequential, padded


def bench_llama_cpp(args, prompts_ids: list[list[int]], gguf_path: str) -> tuple[float, Result] | None:
    """llama.cpp (llama-cpp-python) on the same GGUF file, batch 1, greedy, EOS ignored; None
    when the package is not installed (it is not a pinned requirement: see BENCHMARKS.md)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print(
            "llama.cpp column skipped: llama-cpp-python is not installed "
            "(pip install llama-cpp-python; it compiles llama.cpp)",
            file=sys.stderr,
        )
        return None
    start = time.perf_counter()
    llm = Llama(model_path=gguf_path, n_ctx=args.max_length, n_threads=torch.get_num_threads(), verbose=False)
    load = time.perf_counter() - start

    def one(ids: list[int]) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        first = None
        count = 0
        for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):  # never stops by itself
            count += 1
            if first is None:
                first = time.perf_counter()
            if count >= args.new_tokens:
                break
        return count, time.perf_counter() - t0, first - t0

    one(prompts_ids[0])  # warm-up
    n, total, ttft = one(prompts_ids[0])
    return load, Result("llama.cpp (same GGUF), 1 request (decode)", n - 1, total - ttft, ttft)


def main(argv: list[str] | None = None) -> int:
    """Runs both frameworks and prints a Markdown report (and JSON with --result-file).
    Offline by default: the embedded model needs no download."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", help="default: the embedded SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--devices", default="cpu")
    parser.add_argument(
        "--encoding",
        default=None,
        help="one encoding for both ours and transformers (default: ours float32, transformers float32)",
    )
    parser.add_argument(
        "--encodings",
        help="ours in each of these, comma-separated (e.g. auto,float32,bfloat16,q8_0,q4_1; "
        "ENCODING+METHOD adds --quantization METHOD, e.g. bfloat16+int8_dynamic)",
    )
    parser.add_argument("--hf-encodings", help="transformers in each of these (e.g. float32,bfloat16)")
    parser.add_argument(
        "--llama-cpp", action="store_true", help="add llama.cpp (llama-cpp-python) on the same GGUF, batch 1"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--page-size", type=int, default=128)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--speculative-config", metavar="JSON",
        help="ours also with speculative decoding (vLLM's JSON, see --help of generate), side by side with plain",
    )  # fmt: skip
    parser.add_argument("--workload", metavar="FILE", help="ShareGPT-format JSON whose first human turns are the prompts")
    parser.add_argument(
        "--no-hf-sequential",
        dest="hf_sequential",
        action="store_false",
        help="skip transformers' N requests one after another (its padded batch still runs)",
    )
    add_result_file_arg(parser, "also write the results here as JSON", json_alias=True)
    args = parser.parse_args(argv)
    return run_main(_run, args, hub_offline=True)


def _run(args: argparse.Namespace) -> int:
    from max.pipelines.lib import TextTokenizer, resolve_model_source

    source = resolve_model_source(args.model_path)
    tokenizer = TextTokenizer.from_source(source)
    args.workload_prompts = workload_prompts(args.workload) if args.workload else None
    prompts_ids = [
        tokenizer.encode_chat([{"role": "user", "content": p}]) if tokenizer.has_chat_template else tokenizer.encode(p)
        for p in (args.workload_prompts or PROMPTS)
    ]
    while len(prompts_ids) < args.concurrency:
        prompts_ids += prompts_ids
    print(f"model: {source.name}; device: {args.devices}; torch threads: {torch.get_num_threads()}", file=sys.stderr)
    ours_encodings = (args.encodings or args.encoding or "float32").split(",")
    hf_encodings = (args.hf_encodings or args.encoding or "float32").split(",")
    rows: list[Result] = []
    loads: dict[str, float] = {}
    singles: dict[str, Result] = {}
    speculation: dict[str, dict] = {}
    for enc in ours_encodings:
        load, single, many, plain = bench_ours(args, prompts_ids, enc)
        rows += [single, many]
        loads[f"ours {enc}"] = load
        singles[f"ours {enc}"] = single
        if args.speculative_config:
            _, spec_single, spec_many, spec = bench_ours(args, prompts_ids, enc, args.speculative_config)
            rows += [spec_single, spec_many]
            singles[spec_single.name.split(",")[0]] = spec_single
            speculation[enc] = {
                "batch1_speedup": spec_single.tokens_per_second / single.tokens_per_second,
                "concurrent_speedup": spec_many.tokens_per_second / many.tokens_per_second,
                "outputs_identical": spec["outputs"] == plain["outputs"],
                "spec_decode_batch1": spec["spec_decode_batch1"],
            }
    if not args.skip_transformers:
        gguf = source.gguf_file.name if source.gguf_file else None
        for enc in hf_encodings:
            hf_load, hf_single, hf_seq, hf_padded = bench_transformers(args, prompts_ids, gguf, str(source.directory), enc)
            rows += [r for r in (hf_single, hf_seq, hf_padded) if r is not None]
            loads[f"transformers {enc}"] = hf_load
            singles[f"transformers {enc}"] = hf_single
    if args.llama_cpp and source.gguf_file is not None:
        result = bench_llama_cpp(args, prompts_ids, str(source.gguf_file))
        if result is not None:
            loads["llama.cpp"], singles["llama.cpp"] = result
            rows.append(result[1])
    print("| run | tokens | seconds | tokens/s | time to first token |")
    print("|---|---|---|---|---|")
    for r in rows:
        ttft = f"{r.ttft * 1000:.0f} ms" if r.ttft is not None else ""
        print(f"| {r.name} | {r.tokens} | {r.seconds:.2f} | {r.tokens_per_second:.1f} | {ttft} |")
    print()
    for name, seconds in loads.items():
        print(f"load time, {name}: {seconds:.2f} s")
    print()
    print("batch 1 decode, ms per token: " + ", ".join(f"{k} {1000 / r.tokens_per_second:.1f}" for k, r in singles.items()))
    for enc, s in speculation.items():
        spec = s["spec_decode_batch1"]
        print(
            f"speculation, ours {enc}: batch 1 {s['batch1_speedup']:.2f}x, {args.concurrency} concurrent "
            f"{s['concurrent_speedup']:.2f}x the plain tokens/s; outputs identical: {s['outputs_identical']}; "
            f"batch 1 acceptance rate {spec['acceptance_rate']:.3f}, mean accepted length {spec['mean_accepted_length']:.2f}, "
            f"accepted per position {spec['accepted_per_pos']}"
        )
    if args.result_file:
        with open(args.result_file, "w") as f:
            rows_json = [asdict(r) | {"tokens_per_second": r.tokens_per_second} for r in rows]
            json.dump({"rows": rows_json, "load_seconds": loads, "speculation": speculation}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
