"""`--hf-overrides`: a JSON object merged into the model's Hugging Face config after loading
(vLLM's flag), e.g. `{"matryoshka_dimensions": [256, 512]}` to allow `dimensions` on
`/v1/embeddings`, `{"max_position_embeddings": 65536}`, or `{"architectures": [...]}` to run
the checkpoint as another registered class.

How a value merges: an object given for a sub-config (`text_config`, `vision_config`) merges
key by key into it, recursively; any other value (a plain dict field such as `rope_scaling`
included) replaces the field whole, as vLLM does, so no key of the old value survives.
A new key is added. A JSON integer given for a float field becomes a float; any other type
transformers refuses is a usage error naming the key. A rope override (`rope_scaling`,
`rope_parameters`, `rope_theta`) keeps the model's rope base unless it names one
(transformers >= 5 keeps both in `rope_parameters`, where a bare `rope_scaling` would lose it).

The overrides live in `PipelineConfig.hf_overrides`, so every process that resolves the
model (HTTP server, engine worker, tensor-parallel ranks) applies the same ones.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from max.errors import MaxError
from max.pipelines.lib.config_flags import parse_json_object

FLAG = "--hf-overrides"
# The rope settings: transformers >= 5 keeps them in one `rope_parameters` dict that holds
# `rope_theta` too (`rope_scaling` is its deprecated alias, and a `rope_theta` attribute is
# no longer read), so an override of any of them is settled into that dict.
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters")


def _strict_errors() -> tuple[type[Exception], ...]:
    """huggingface_hub's errors for a value a strict config field refuses (none before it
    had strict dataclasses)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


_STRICT_ERRORS = _strict_errors()


def _error(message: str) -> MaxError:
    return MaxError(f"{FLAG}: {message}")


def parse_hf_overrides(value: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The overrides as a plain JSON-shaped dict, from the flag's JSON text or a mapping
    (None, and an empty object, stay None); MaxError naming the flag for bad JSON, a value
    that is not an object, or a value JSON cannot hold."""
    if value is None:
        return None
    value = parse_json_object(value, FLAG, '{"max_position_embeddings": 65536}')
    try:
        # A JSON round trip: a private copy that pickles to the engine processes unchanged.
        parsed = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as e:
        raise _error(f"the overrides must be JSON values: {e}") from None
    return parsed or None


def _is_sub_config(value: Any) -> bool:
    """Whether `value` is a config object (transformers' PretrainedConfig or alike) whose
    fields an override merges into, rather than a value it replaces."""
    return hasattr(value, "to_dict") and not isinstance(value, Mapping)


def _kept_type(old: Any, new: Any) -> Any:
    """`new`, as a float where the field held a float and JSON gave an integer."""
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    return new


def _settled_rope(overrides: Mapping[str, Any], before: Any) -> dict[str, Any] | None:
    """For a config with one flat `rope_parameters` dict (transformers >= 5), the rope the
    overrides ask for as transformers reads it: their `rope_parameters`/`rope_scaling`, else
    the model's, with their `rope_theta`, else the model's. None where nothing needs settling
    (older configs read the fields as set; per-layer-type rope dicts are overridden whole)."""
    if not isinstance(before, dict) or any(isinstance(v, dict) for v in before.values()):
        return None
    if not any(key in overrides for key in _ROPE_KEYS):
        return None
    given = next((overrides[k] for k in ("rope_parameters", "rope_scaling") if k in overrides), before)
    if given is None:  # scaling turned off
        given = {"rope_type": "default"}
    if not isinstance(given, Mapping):
        return None  # set as given: transformers judges it
    rope = copy.deepcopy(dict(given))
    theta = overrides.get("rope_theta", rope.get("rope_theta", before.get("rope_theta")))
    if theta is not None:
        rope["rope_theta"] = _kept_type(0.0, theta)
    return rope


def apply_hf_overrides(hf_config: Any, overrides: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """`hf_config` with `overrides` merged in place (see the module docstring); returned for
    chaining. MaxError naming the key where transformers refuses a value."""
    overrides = overrides or {}
    rope = _settled_rope(overrides, getattr(hf_config, "rope_parameters", None))
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        old = getattr(hf_config, key, None)
        if isinstance(value, Mapping) and _is_sub_config(old):
            apply_hf_overrides(old, value, f"{name}.")
        elif rope is None or key not in _ROPE_KEYS:  # else set once, below
            _set(hf_config, name, key, _kept_type(old, copy.deepcopy(value)))
    if rope is not None:
        _set(hf_config, f"{prefix}rope_parameters", "rope_parameters", rope)
    return hf_config


def _set(hf_config: Any, name: str, key: str, value: Any) -> None:
    """Sets field `key` (`name` with its sub-config path) to `value`, turning transformers'
    refusal of the value into a usage error naming the key."""
    try:
        setattr(hf_config, key, value)
    except (TypeError, ValueError, *_STRICT_ERRORS) as e:  # strict fields refuse a type
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise _error(f"{name}: {lines[-1] if lines else type(e).__name__}") from None


def overridden_architecture(overrides: Mapping[str, Any] | None) -> str | None:
    """`architectures[0]` as the overrides set it (None when they leave it alone)."""
    archs = (overrides or {}).get("architectures")
    if archs is None:
        return None
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise _error(f'"architectures" must be a list of class names (got {archs!r})')
    return archs[0]
