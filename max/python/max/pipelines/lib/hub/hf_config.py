"""Reading a model's Hugging Face config, and the fields whose defaults are easy to misread.

The config comes from `config.json` through transformers' `AutoConfig` (so every default is
the one transformers applies), or from GGUF metadata (see `weights.gguf_config`). The
helpers below read the fields that differ most between architectures and transformers
versions: head_dim, rope parameters, per-layer attention types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from max.errors import MaxError
from max.pipelines.lib.hub.hf_overrides import apply_hf_overrides, overridden_architecture
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.weights import GGUFFile, WeightsFormat, gguf_hf_config
from max.pipelines.lib.weights.gguf_config import GGUF_ARCHITECTURES


def architecture_name(
    source: ModelSource, gguf: GGUFFile | None = None, overrides: Mapping[str, Any] | None = None
) -> str:
    """`architectures[0]` of the model's config, read without building the config
    (`overrides`: `--hf-overrides`, whose `architectures` wins)."""
    named = overridden_architecture(overrides)
    if named is not None:
        return named
    if source.weights_format == WeightsFormat.gguf:
        gguf = gguf or GGUFFile(source.gguf_file)
        if gguf.architecture not in GGUF_ARCHITECTURES:
            raise MaxError(
                f"{source.gguf_file}: GGUF architecture {gguf.architecture!r} is not supported "
                f"(supported: {', '.join(sorted(GGUF_ARCHITECTURES))})"
            )
        return GGUF_ARCHITECTURES[gguf.architecture][1]
    path = source.directory / "config.json"
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise MaxError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise MaxError(f"{path} is not valid JSON: {e}") from None
    archs = raw.get("architectures") if isinstance(raw, dict) else None
    if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
        raise MaxError(f"{path} has no 'architectures' list naming the model class")
    return archs[0]


def load_hf_config(
    source: ModelSource,
    trust_remote_code: bool = False,
    gguf: GGUFFile | None = None,
    overrides: Mapping[str, Any] | None = None,
):
    """The transformers config of the model, with transformers' own defaults, and
    `overrides` (`--hf-overrides`) merged in (see `hf_overrides`)."""
    return apply_hf_overrides(_read_hf_config(source, trust_remote_code, gguf), overrides)


def _read_hf_config(source: ModelSource, trust_remote_code: bool, gguf: GGUFFile | None):
    """The config as the model's files give it (config.json, or the GGUF metadata)."""
    if source.weights_format == WeightsFormat.gguf:
        return gguf_hf_config(gguf or GGUFFile(source.gguf_file))
    from transformers import AutoConfig

    path = source.directory / "config.json"
    try:
        return AutoConfig.from_pretrained(
            str(source.directory), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except ValueError as e:
        text = str(e)
        if "trust_remote_code" in text:
            raise MaxError(
                f"{path} needs code from the model repository to be read: pass "
                "--trust-remote-code if you trust that code"
            ) from None
        raise MaxError(f"transformers cannot read {path}: {text.splitlines()[0]}") from None
    except (OSError, KeyError, TypeError) as e:
        raise MaxError(f"transformers cannot read {path}: {e}") from None


def text_config(hf_config: Any) -> Any:
    """The language model's part of a config: `text_config` of a vision-language model's
    config (transformers' `get_text_config`), the config itself otherwise."""
    get = getattr(hf_config, "get_text_config", None)
    return get() if callable(get) else hf_config


def head_dim(hf_config) -> int:
    """Per-head width: `head_dim` if set (and not None), else hidden_size / heads."""
    value = getattr(hf_config, "head_dim", None)
    return int(value) if value else hf_config.hidden_size // hf_config.num_attention_heads


def rope_parameters(hf_config, layer_type: str | None = None) -> dict[str, Any]:
    """The standardized rope parameters (transformers >= 5 `rope_parameters`; older
    releases keep `rope_theta` and `rope_scaling` apart)."""
    params = getattr(hf_config, "rope_parameters", None)
    if params:
        if layer_type is not None and layer_type in params:
            params = params[layer_type]
        elif any(isinstance(v, dict) for v in params.values()):
            params = next(v for v in params.values() if isinstance(v, dict))
        out = dict(params)
    else:
        out = dict(getattr(hf_config, "rope_scaling", None) or {})
        out.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    out.setdefault("rope_type", out.get("type", "default"))
    if out["rope_type"] in ("llama3", "yarn"):
        out.setdefault(
            "original_max_position_embeddings",
            getattr(hf_config, "original_max_position_embeddings", None)
            or hf_config.max_position_embeddings,
        )
    partial = getattr(hf_config, "partial_rotary_factor", None)
    if partial is not None:
        out.setdefault("partial_rotary_factor", partial)
    return out


def layer_types(hf_config) -> list[str]:
    """Each layer's attention type ("full_attention" or "sliding_attention")."""
    types = getattr(hf_config, "layer_types", None)
    if types:
        return list(types)
    n = hf_config.num_hidden_layers
    # Older Gemma configs give a pattern instead: every pattern-th layer is global.
    pattern = getattr(hf_config, "sliding_window_pattern", None) or getattr(hf_config, "_sliding_window_pattern", None)
    if pattern and getattr(hf_config, "sliding_window", None):
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    return ["full_attention"] * n


def eos_token_ids(hf_config) -> set[int]:
    """The config's end-of-sequence ids (an int or a list in config.json; a vision-language
    config keeps them in its text part)."""
    eos = getattr(hf_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(text_config(hf_config), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def quantization_method(hf_config: Any) -> str | None:
    """`quantization_config.quant_method` of a pre-quantized checkpoint (e.g. "mxfp4",
    "fp8", "gptq"), lower-case; None for a float checkpoint."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        qc = getattr(text_config(hf_config), "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(method).lower() if method else None
