"""Step 2 of `bring-up`: logits of this framework against transformers for each encoding
(verify_pipelines' procedure and thresholds), and on failure the per-layer divergence
finder (compare_layers), which names the first module that parts from the reference."""

from __future__ import annotations

import time

from max.entrypoints.bring_up_step import (
    ACCURACY,
    FAILED,
    PASSED,
    TITLES,
    TOOLS,
    BringUpOptions,
    ModelFacts,
    Progress,
    StepResult,
    command,
)

# compare_layers' relative error that counts as divergence: its own default in float32;
# a 16-bit run rounds every layer by about 1e-2, so only larger errors mean a bug there.
_LAYER_THRESHOLDS = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


def _settings(opts: BringUpOptions, facts: ModelFacts, encoding: str):
    from max.verification.frameworks import FrameworkSettings
    from max.verification.named_pipelines import kv_cache_dtype_of, split_encoding

    base, quantization = split_encoding(encoding)
    return FrameworkSettings(
        model_path=facts.model_path,
        # A pre-quantized named pipeline's reference reads its dequantized copy.
        reference_model_path=facts.pipeline.reference_path() if facts.pipeline is not None else None,
        device=opts.devices,
        encoding=base,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype_of(encoding),
        num_steps=opts.num_steps,
        max_length=facts.max_length,
        trust_remote_code=opts.trust_remote_code,
        custom_architectures=list(opts.custom_architectures),
    )


def _thresholds(facts: ModelFacts, encoding: str):
    from max.verification.named_pipelines import default_thresholds

    if facts.pipeline is not None and encoding in facts.pipeline.thresholds:
        return facts.pipeline.thresholds[encoding]
    return default_thresholds(encoding)


def _prompts(facts: ModelFacts):
    from max.verification.prompts import DEFAULT_PROMPTS, VerificationPrompt, default_image_prompts

    if facts.pipeline is not None:
        return facts.pipeline.prompts()
    return default_image_prompts() if facts.takes_images else [VerificationPrompt(p) for p in DEFAULT_PROMPTS]


def _commands(opts: BringUpOptions, facts: ModelFacts, encoding: str, limits) -> list[str]:
    common = ["--pipeline", facts.model_path, "--device", opts.devices, "--encoding", encoding,
              "--num-steps", str(opts.num_steps), *opts.custom_flags()]  # fmt: skip
    if facts.max_length is not None:
        common += ["--max-length", str(facts.max_length)]
    torch_file, max_file = f"torch-{encoding}.json", f"max-{encoding}.json"
    return [
        command(f"{TOOLS}:generate_llm_logits --", "--framework", "torch", *common, "--output", torch_file),
        command(f"{TOOLS}:generate_llm_logits --", "--framework", "max", *common, "--output", max_file,
                "--reference", torch_file),  # fmt: skip
        command(f"{ACCURACY}:verify --", "--eval-metric", "kl,cos", "--kl-div-threshold", f"{limits.kl:g}",
                "--cos-dist-threshold", f"{limits.cos:g}", max_file, torch_file),  # fmt: skip
    ]


def _find_layer(opts: BringUpOptions, facts: ModelFacts, encoding: str, prompt) -> tuple[dict, str, str]:
    """Runs the divergence finder on the first prompt; (details, Markdown, command)."""
    from max.verification.frameworks import tokenize_prompts
    from max.verification.layer_comparison import compare_layers

    layer_encoding = encoding if encoding in _LAYER_THRESHOLDS else "float32"
    threshold = _LAYER_THRESHOLDS[layer_encoding]
    settings = _settings(opts, facts, layer_encoding)
    (encoded,) = tokenize_prompts(settings, [prompt])
    report = compare_layers(settings, encoded.ids, threshold)
    first = report.first_divergence
    cmd = command(f"{TOOLS}:compare_layers --", "--pipeline", facts.model_path, "--device", opts.devices,
                  "--encoding", layer_encoding, "--threshold", f"{threshold:g}", "--prompt", prompt.text,
                  *opts.custom_flags())  # fmt: skip
    details = {
        "encoding": layer_encoding,
        "threshold": threshold,
        "first_divergence": None if first is None else {"module": first.name, "rel_err": first.rel_err, "max_abs": first.max_abs},
        "modules_compared": len(report.modules),
    }
    return details, f"Per-layer comparison ({layer_encoding}, first prompt):\n\n```\n{report.format()}\n```", cmd


def _layer_name(module: str) -> str:
    """`layers.3.self_attn.o_proj` -> `decoder layer 3 (layers.3.self_attn.o_proj)`."""
    parts = module.split(".")
    if parts[0] == "layers" and len(parts) > 1:
        return f"decoder layer {parts[1]} ({module})"
    return module


def verify_encoding(opts: BringUpOptions, facts: ModelFacts, encoding: str, progress: Progress) -> dict:
    """One encoding: reference, ours teacher-forced, the comparison; the finder on failure."""
    from max.verification.frameworks import run_framework
    from max.verification.logit_metrics import Criteria, compare, format_report

    limits = _thresholds(facts, encoding)
    settings = _settings(opts, facts, encoding)
    prompts = _prompts(facts)
    entry = {"encoding": encoding, "kl_threshold": limits.kl, "cos_threshold": limits.cos,
             "commands": _commands(opts, facts, encoding, limits)}  # fmt: skip
    start = time.perf_counter()
    try:
        progress.advance(f"{encoding}: transformers logits")
        reference = run_framework("torch", settings, prompts)
        progress.advance(f"{encoding}: our logits (teacher-forced)")
        target = run_framework("max", settings, prompts, reference)
        result = compare(target, reference, Criteria(metrics=("kl", "cos"), kl_threshold=limits.kl, cos_threshold=limits.cos))
    except Exception as e:  # one encoding's crash is its verdict; the others still run
        entry.update(status="error", error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)
        entry["markdown"] = f"ERROR: {type(e).__name__}: {e}"
        return entry
    entry.update(
        status="OK" if result.passed else "INVALID",
        max_kl=result.max_kl,
        max_cos=result.max_cos,
        failures=result.failures,
        markdown=f"```\n{format_report(result)}\n```",
    )
    if not result.passed:
        progress.advance(f"{encoding}: per-layer divergence finder")
        try:
            layers, text, cmd = _find_layer(opts, facts, encoding, prompts[0])
            entry["layers"] = layers
            entry["markdown"] += "\n\n" + text
            entry["commands"].append(cmd)
        except Exception as e:
            entry["layers"] = {"error": f"{type(e).__name__}: {e}"}
    entry["seconds"] = time.perf_counter() - start
    return entry


def run_verify(opts: BringUpOptions, facts: ModelFacts) -> StepResult:
    """Runs step 2 over the encodings the folder accepts."""
    result = StepResult("verify", TITLES["verify"])
    start = time.perf_counter()
    progress = Progress("verify", 2 * len(facts.encodings))
    entries = [verify_encoding(opts, facts, enc, progress) for enc in facts.encodings]
    progress.finish()
    rows = ["| encoding | status | max KL | max cos dist | KL threshold | cos threshold | first diverging layer | time |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    notes, firsts = [], []
    for e in entries:
        first = (e.get("layers") or {}).get("first_divergence")
        where = _layer_name(first["module"]) if first else ("-" if "layers" not in e else "none found")
        if first:
            firsts.append(f"{e['encoding']}: {where}")

        def num(key: str, e=e) -> str:
            return f"{e[key]:.2e}" if key in e else "-"

        rows.append(
            f"| {e['encoding']} | {e['status']} | {num('max_kl')} | {num('max_cos')} | {e['kl_threshold']:.0e} | "
            f"{e['cos_threshold']:.0e} | {where} | {e['seconds']:.0f} s |"
        )
        notes.append(f"#### {e['encoding']}\n\n{e['markdown']}")
        result.commands += e["commands"]
    result.markdown = "\n".join(rows) + "\n\n" + "\n\n".join(notes)
    result.details = {"encodings": [{k: v for k, v in e.items() if k not in ("markdown", "commands")} for e in entries]}
    failed = [e["encoding"] for e in entries if e["status"] != "OK"]
    result.status = FAILED if failed or not entries else PASSED
    if not entries:
        result.summary = "no encoding to verify"
    elif failed:
        result.summary = f"{', '.join(failed)} failed" + (f"; first diverging: {'; '.join(firsts)}" if firsts else "")
    else:
        result.summary = ", ".join(f"{e['encoding']} max KL {e['max_kl']:.1e}" for e in entries)
    result.seconds = time.perf_counter() - start
    return result
