"""Embeddings throughput: our engine and sentence-transformers on the same texts, in one run.

`--num-texts` short synthetic texts (5 to 20 words each, fixed seed) are embedded by both
sides from the same weights in the same dtype, tokenization included, after a warm-up;
the table gives texts/s and prompt tokens/s of each and their ratio, and the largest
difference between the two sides' vectors.

- Default (CPU): the embedded SmolLM2-135M (its GGUF weights decoded once into a float
  Hugging Face folder under a temporary directory) made a sentence-transformers model
  (last-token pooling, normalized); our engine serves that folder with `--task auto`.
- `--load-format dummy` (GPU, a real shape): `--model-path` a config folder, e.g.
  `max/python/max/benchmark/configs/Qwen3-8B`; both sides get the same random weights
  (our engine's, copied into transformers' model), texts are tokenized with the embedded
  SmolLM2 tokenizer (ids valid in any larger vocabulary). The reference is then
  sentence-transformers' recipe run on transformers (`encode` sorts by length, pads
  batches of `--st-batch-size`, runs the model, pools, normalizes), since no checkpoint
  exists for sentence-transformers to load.

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.benchmark_embeddings   # CPU
    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.benchmark_embeddings \\
        --model-path max/python/max/benchmark/configs/Qwen3-8B --load-format dummy --devices gpu \\
        --gpu-memory-utilization 0.6 --max-batch-size 512 --max-num-batched-tokens 8192 --result-file emb.json

(`--gpu-memory-utilization 0.6` leaves room for transformers' copy of the weights.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from max.entrypoints.process_setup import run_main
from max.errors import MaxError

_WORDS = (
    "the a model serves texts quickly over pages of cache with batches tokens vectors search "
    "query document river mountain city coffee music learning network engine paper result "
    "small large fast slow bright quiet ancient modern simple complex happy careful open"
).split()


def synthetic_texts(count: int, seed: int) -> list[str]:
    """`count` short texts of 5 to 20 words."""
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(_WORDS, int(rng.integers(5, 21)))).capitalize() + "."
        for _ in range(count)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_embed(engine, tokenizer, texts: list[str]) -> tuple[np.ndarray, int]:
    """Every text's embedding through the engine (all added at once), and the prompt tokens."""
    from max.pipelines.lib import SamplingParams
    from max.pipelines.lib.pooling.pooling_params import PoolingParams

    prompts = tokenizer(texts)["input_ids"]
    params = SamplingParams(pooling=PoolingParams())
    tag = time.monotonic_ns()
    for i, ids in enumerate(prompts):
        engine.add_request(f"e{tag}-{i}", ids, params)
    vectors: dict[str, list[float]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.error:
                raise MaxError(f"request {out.request_id} failed: {out.error}")
            if out.embedding is not None:
                vectors[out.request_id] = out.embedding
    return np.array([vectors[f"e{tag}-{i}"] for i in range(len(prompts))], dtype=np.float32), sum(
        map(len, prompts)
    )


def recipe_embed(
    model, tokenizer, texts: list[str], batch_size: int, mode: str, normalize: bool
) -> np.ndarray:
    """sentence-transformers' `encode` on a transformers model: longest texts first,
    padded batches, the model's last hidden states pooled, L2-normalized."""
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt").to(
                device
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"]
            if mode == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            elif mode == "cls":
                pooled = hidden[:, 0]
            else:  # the last real token (padding on the right)
                pooled = hidden[torch.arange(hidden.shape[0], device=device), mask.sum(1) - 1]
            pooled = pooled.float()
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for i, row in zip(rows, pooled.cpu().numpy()):
                out[i] = row
    return np.array(out, dtype=np.float32)


def _timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def _embedded_model_folder(tmp: Path, dtype: torch.dtype) -> Path:
    """The embedded SmolLM2 as a float Hugging Face folder that is a sentence-transformers
    model too (last-token pooling, normalized)."""
    import shutil

    from transformers import AutoModelForCausalLM

    from max.pipelines.lib.hub.embedded_models import DEFAULT_MODEL
    from max.testing.tiny_embedding_model import write_sentence_transformers_files
    from max.testing.tiny_tokenizer import tokenizer_dir

    gguf = DEFAULT_MODEL.path()
    decoded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=dtype
    )
    # A model read from GGUF cannot be saved as is: the same weights in a plain one can.
    config = decoded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(decoded.state_dict())
    folder = tmp / "model"
    model.save_pretrained(str(folder), safe_serialization=True)
    for f in tokenizer_dir().iterdir():
        if f.name != "chat_template.jinja":  # sentence-transformers 6 would wrap texts in it
            shutil.copy(f, folder / f.name)
    return write_sentence_transformers_files(folder, "last", True)


# Our fused projections and the transformers weights they stack, in order.
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def unfused_weights(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Our network's weights under transformers' names and shapes (`theirs` gives them):
    the fused q/k/v and gate/up projections split back into their parts."""
    out = {}
    for fused, parts in _FUSED.items():
        for name in [n for n in ours if f".{fused}." in n]:
            offset = 0
            for part in parts:
                target = name.replace(fused, part)
                size = theirs[target].shape[0]
                out[target] = ours[name][offset : offset + size]
                offset += size
    for name in theirs:
        if name not in out:
            if name not in ours:
                raise MaxError(
                    f"cannot copy the dummy weights into transformers' model: no {name!r}"
                )
            out[name] = ours[name]
    return out


def _reference(args, resolved, engine, tokenizer, texts, device):
    """The reference side: (name, embed function)."""
    pooling = engine.pooling
    if args.load_format == "dummy":
        from transformers import AutoModel

        with torch.device(device):  # random init on the device: seconds, not minutes, at 8B
            try:
                model = AutoModel.from_config(resolved.hf_config, dtype=resolved.dtype)
            except TypeError:  # transformers before 4.56 names it torch_dtype
                model = AutoModel.from_config(resolved.hf_config, torch_dtype=resolved.dtype)
        model.eval()
        model.load_state_dict(
            unfused_weights(engine.model.model.state_dict(), model.state_dict()), strict=True
        )
        return "sentence-transformers recipe", lambda: recipe_embed(
            model, tokenizer, texts, args.st_batch_size, pooling.mode, pooling.normalize
        )
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(
        str(resolved.source.directory), device=str(device), model_kwargs={"dtype": resolved.dtype}
    )
    return "sentence-transformers", lambda: st.encode(
        texts, batch_size=args.st_batch_size, convert_to_numpy=True
    )


def _run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from max.entrypoints.cli_args import pipeline_config_from_args
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import build_engine, resolve_model
    from max.testing.tiny_tokenizer import tokenizer_dir

    config = pipeline_config_from_args(args)
    texts = synthetic_texts(args.num_texts, args.seed)
    with tempfile.TemporaryDirectory(prefix="max-emb-bench-") as tmp:
        if config.model_path is None:
            probe = resolve_model(dataclasses.replace(config, task="generate"), register_all())
            config = dataclasses.replace(
                config, model_path=str(_embedded_model_folder(Path(tmp), probe.dtype))
            )
        if args.load_format == "dummy" and config.task == "auto":
            config = dataclasses.replace(config, task="embed")
        resolved = resolve_model(config, register_all())
        if resolved.config.task != "embed":
            raise MaxError(
                f"{resolved.source.name} is not an embedding model here: pass --task embed"
            )
        device = resolved.config.device
        # Dummy weights: `--tokenizer` if given, else the embedded SmolLM2's (ids valid in any
        # larger vocabulary); real weights: the model's own.
        if args.load_format == "dummy":
            tokenizer_path = args.tokenizer or tokenizer_dir()
        else:
            tokenizer_path = resolved.source.directory
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        engine = build_engine(resolved)
        name, reference = _reference(args, resolved, engine, tokenizer, texts, device)
        warm = texts[: min(len(texts), 64)]
        engine_embed(engine, tokenizer, warm)
        (ours, tokens), ours_s = _timed(lambda: engine_embed(engine, tokenizer, texts), device)
        reference()  # warm-up
        theirs, theirs_s = _timed(reference, device)
        engine.close()
    diff = float(np.abs(ours - theirs).max())
    rows = {"max engine": ours_s, name: theirs_s}
    print(
        f"{len(texts)} texts, {tokens} prompt tokens, {resolved.source.name} on {device}, {resolved.dtype}"
    )
    print(f"{'side':<32}{'texts/s':>10}{'tokens/s':>12}{'elapsed s':>11}")
    for side, seconds in rows.items():
        print(f"{side:<32}{len(texts) / seconds:>10.1f}{tokens / seconds:>12.0f}{seconds:>11.2f}")
    print(f"engine / {name}: {theirs_s / ours_s:.2f}x; max |difference| of the vectors: {diff:.2e}")
    if args.result_file:
        record = {"model": resolved.source.name, "devices": str(device), "dtype": str(resolved.dtype), "args": vars(args),
                  "texts": len(texts), "prompt_tokens": tokens, "engine_s": ours_s, "reference": name,
                  "reference_s": theirs_s, "speedup": theirs_s / ours_s, "max_abs_diff": diff}  # fmt: skip
        Path(args.result_file).write_text(json.dumps(record, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags: the workload's, plus every model and engine flag of `serve`."""
    from max.entrypoints.cli_args import add_model_args

    parser = argparse.ArgumentParser(
        prog="benchmark_embeddings", description=__doc__.split("\n\n")[0]
    )
    add_model_args(parser)
    parser.add_argument("--num-texts", type=int, default=1000)
    parser.add_argument(
        "--st-batch-size",
        type=int,
        default=32,
        help="sentence-transformers' batch size (its default: 32)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-file", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs both sides and prints them side by side."""
    return run_main(_run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
