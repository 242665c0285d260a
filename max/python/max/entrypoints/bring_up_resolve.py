"""Step 1 of `bring-up`: find the model's architecture (registered, or from
--custom-architectures), or say which `new-architecture` command would start one; then read
the model's config the way the architecture folder does, for each encoding asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

from max.entrypoints.bring_up_step import (
    FAILED,
    PASSED,
    TITLES,
    BringUpOptions,
    ModelFacts,
    P,
    StepResult,
    command,
)
from max.errors import MaxError

# model_type fragments of Hugging Face configs -> the folder to start from, first match
# wins; a folder that is not registered (yet) is passed over.
_CLOSEST = (
    ("gpt_oss", "gpt_oss"),
    ("qwen2_5_vl", "qwen2_5_vl"),
    ("qwen2_vl", "qwen2_5_vl"),
    ("qwen3", "qwen3"),
    ("qwen", "qwen2"),
    ("gemma", "gemma3"),
    ("deepseek", "deepseek_v2"),
    ("mistral", "mistral"),
    ("phi", "phi3"),
    ("olmo", "olmo2"),
)


def _builtin_folders() -> set[str]:
    from max.pipelines.architectures import ARCHITECTURES

    return {a.pipeline_model.__module__.split(".")[3] for a in ARCHITECTURES}


def closest_folder(model_type: str) -> str:
    """The registered folder a new architecture of this `model_type` is best copied from."""
    key, folders = model_type.lower(), _builtin_folders()
    return next((folder for fragment, folder in _CLOSEST if fragment in key and folder in folders), "llama3")


def scaffold_hint(architecture: str, model_type: str, custom: list[str]) -> str:
    """What to run when the architecture is not registered."""
    folder = closest_folder(model_type)
    package = "".join(f"_{c.lower()}" if c.isupper() else c for c in architecture.removesuffix("ForCausalLM"))
    package = package.strip("_") or "my_model"
    cmd = command(P, "new-architecture", "--from", folder, "--name", architecture, "--output", f"./{package}")
    tried = f" (the --custom-architectures folders given do not declare it either: {', '.join(custom)})" if custom else ""
    return (
        f"architecture {architecture} is not registered{tried}. Start one from the closest folder with:\n"
        f"  {cmd}\nthen run bring-up again with --custom-architectures ./{package}"
    )


def _model_type(directory: Path) -> str:
    try:
        return str(json.loads((directory / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def _named_pipeline(model_path: str):
    """(the path the tools take, the named pipeline) for a named pipeline, an embedded model
    (alias or repo id) or any other path."""
    from max.pipelines.lib import find_embedded_model
    from max.verification.named_pipelines import find_pipeline

    pipeline = find_pipeline(model_path)
    embedded = find_embedded_model(model_path)
    if pipeline is None and embedded is not None:
        pipeline = find_pipeline(embedded.alias)
    if pipeline is not None and embedded is None:
        return pipeline.model_path(), pipeline  # a tiny random checkpoint, written on first use
    return model_path, pipeline


def _config_rows(resolved) -> list[tuple[str, str]]:
    """The fields of the architecture's internal config a reviewer checks first."""
    arch = resolved.architecture
    cfg = arch.pipeline_model.config_class.from_huggingface(resolved.hf_config, resolved.max_seq_len)
    kinds = {t: cfg.layer_types.count(t) for t in dict.fromkeys(cfg.layer_types)}
    return [
        ("layers", str(cfg.num_layers)),
        ("hidden size / intermediate", f"{cfg.hidden_size} / {cfg.intermediate_size}"),
        ("heads / KV heads / head dim", f"{cfg.num_heads} / {cfg.num_kv_heads} / {cfg.head_dim}"),
        ("vocabulary", str(cfg.vocab_size)),
        ("rope", json.dumps(cfg.rope_parameters, sort_keys=True, default=str)),
        ("norm eps", f"{cfg.norm_eps:g}"),
        ("tied embeddings", str(cfg.tie_word_embeddings)),
        ("layer types", ", ".join(f"{n} {k}" for k, n in kinds.items()) or "-"),
        ("sliding window", str(cfg.sliding_window)),
        ("experts", "-" if cfg.moe is None else str(cfg.moe)),
        ("max sequence length", str(resolved.max_seq_len)),
    ]


def run_resolve(opts: BringUpOptions) -> tuple[StepResult, ModelFacts | None]:
    """Runs step 1; the facts are None when the later steps cannot run."""
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import (
        PipelineConfig,
        register_custom_architectures,
        resolve_model,
        resolve_model_source,
    )
    from max.pipelines.lib.hub.hf_config import architecture_name
    from max.pipelines.lib.model.vision_language_model import VisionLanguageModel

    result = StepResult("resolve", TITLES["resolve"])
    result.commands.append(command(P, "list", *opts.custom_flags()))
    start = time.perf_counter()
    registry = register_all()
    builtin = {a.name: a for a in registry.architectures()}
    register_custom_architectures(opts.custom_architectures, registry)
    model_path, pipeline = _named_pipeline(opts.model_path)
    source = resolve_model_source(model_path)
    name = architecture_name(source)
    if name not in registry:
        result.status = FAILED
        result.summary = f"{name} is not registered: start it with new-architecture (see the report)"
        result.markdown = "```\n" + scaffold_hint(name, _model_type(source.directory), opts.custom_architectures) + "\n```"
        result.details = {"architecture": name, "registered": False}
        result.seconds = time.perf_counter() - start
        return result, None
    arch = registry.retrieve(name)
    custom = builtin.get(name) is not arch
    rows, per_encoding, errors = [], {}, []
    resolved = None
    for encoding in opts.encodings:
        config = PipelineConfig(
            model_path=model_path,
            devices=opts.devices,
            quantization_encoding=encoding,
            custom_architectures=list(opts.custom_architectures),
            trust_remote_code=opts.trust_remote_code,
            max_length=pipeline.max_length if pipeline is not None else None,
        )
        try:
            resolved = resolve_model(config, registry)
            rows = rows or _config_rows(resolved)
            per_encoding[encoding] = "supported"
        except MaxError as e:
            per_encoding[encoding] = f"refused: {e}"
            errors.append(f"{encoding}: {e}")
    module = arch.pipeline_model.__module__.rsplit(".", 1)[0]
    facts = ModelFacts(
        model_path=model_path,
        directory=str(source.directory),
        gguf_file=source.gguf_file.name if source.gguf_file is not None else None,
        architecture=name,
        folder=module,
        custom=custom,
        takes_images=issubclass(arch.pipeline_model, VisionLanguageModel),
        encodings=[e for e, verdict in per_encoding.items() if verdict == "supported"],
        pipeline=pipeline,
        max_length=pipeline.max_length if pipeline is not None else None,
        max_seq_len=resolved.max_seq_len if resolved is not None else 1024,
    )
    origin = f"custom, {module}" if custom else f"registered, {module}"
    lines = [
        f"- model: `{opts.model_path}` -> `{source.gguf_file or source.directory}` ({source.weights_format.value})",
        f"- architecture: `{name}` ({origin}); encodings it declares: {', '.join(arch.supported_encodings)}",
        f"- verification pipeline: {pipeline.display_name if pipeline else 'none (default thresholds)'}",
        "",
        "| encoding | |",
        "|---|---|",
        *(f"| {enc} | {verdict} |" for enc, verdict in per_encoding.items()),
    ]
    if rows:
        lines += ["", "| config field (as the folder reads it) | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    result.markdown = "\n".join(lines)
    result.details = {
        "architecture": name,
        "registered": True,
        "custom": custom,
        "module": module,
        "weights_format": source.weights_format.value,
        "encodings": per_encoding,
        "config": dict(rows),
    }
    result.status = FAILED if errors or resolved is None else PASSED
    result.summary = f"{name} ({origin})" + (f"; {len(errors)} encoding(s) refused" if errors else "")
    result.seconds = time.perf_counter() - start
    return result, facts if resolved is not None else None
