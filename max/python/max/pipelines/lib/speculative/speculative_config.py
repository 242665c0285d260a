"""`--speculative-config`: vLLM's JSON shape for speculative decoding, read and checked once.

    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    {"method": "draft_model", "model": "ORG/NAME", "num_speculative_tokens": 4}
    {"method": "eagle3", "model": "ORG/NAME", "num_speculative_tokens": 4}

`disable_by_batch_size` turns speculation off for a step once that many requests are
running (vLLM's rule: large batches are compute-bound, where verifying drafts costs more
than it saves). Unknown keys, wrong types and out-of-range values are usage errors naming
the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from max.errors import MaxError
from max.pipelines.lib.config_flags import parse_json_object

METHODS = ("ngram", "draft_model", "eagle", "eagle3")
# The methods a flag may ask for today; the others are refused with a usage error.
IMPLEMENTED_METHODS = ("ngram", "draft_model", "eagle", "eagle3")
_KEYS = ("method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "model", "disable_by_batch_size")
# vLLM's default lookup window when neither bound is given.
_DEFAULT_LOOKUP = 5
# More drafts than this per step cannot pay off (acceptance falls geometrically).
MAX_SPECULATIVE_TOKENS = 32


@dataclass(frozen=True)
class SpeculativeConfig:
    """How requests speculate: the method, drafts per step, and the method's settings."""

    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int | None = None
    prompt_lookup_max: int | None = None
    model: str | None = None
    disable_by_batch_size: int | None = None

    def speculates_at(self, num_running: int) -> bool:
        """Whether a step with `num_running` requests running speculates."""
        return self.disable_by_batch_size is None or num_running < self.disable_by_batch_size


def _error(message: str) -> MaxError:
    return MaxError(f"--speculative-config: {message}")


def _int(values: Mapping[str, Any], key: str, minimum: int, maximum: int | None = None) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(f"{key} must be an integer (got {value!r})")
    if value < minimum or (maximum is not None and value > maximum):
        limit = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise _error(f"{key} must be {limit} (got {value})")
    return value


def parse_speculative_config(value: str | Mapping[str, Any] | SpeculativeConfig | None) -> SpeculativeConfig | None:
    """A `SpeculativeConfig` from the flag's JSON text, a dict of the same keys, or one
    already built (None stays None); raises MaxError naming what is wrong."""
    if value is None or isinstance(value, SpeculativeConfig):
        return value
    value = parse_json_object(value, "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}')
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:
        raise _error(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    method = value.get("method")
    if method not in METHODS:
        raise _error(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    k = _int(value, "num_speculative_tokens", 1, MAX_SPECULATIVE_TOKENS)
    if k is None:
        raise _error("num_speculative_tokens is required")
    low = _int(value, "prompt_lookup_min", 1)
    high = _int(value, "prompt_lookup_max", 1)
    model = value.get("model")
    if model is not None and not (isinstance(model, str) and model):
        raise _error(f"model must be a path or repo id (got {model!r})")
    if method == "ngram":
        if model is not None:
            raise _error("method ngram takes no model")
        # vLLM's rule: one bound given stands for both; none gives 5..5.
        low, high = low or high or _DEFAULT_LOOKUP, high or low or _DEFAULT_LOOKUP
        if low > high:
            raise _error(f"prompt_lookup_min ({low}) exceeds prompt_lookup_max ({high})")
    else:
        if low is not None or high is not None:
            raise _error(f"prompt_lookup_min/max belong to method ngram, not {method}")
        if model is None:
            raise _error(f"method {method} needs a model (a path or repo id of the draft)")
    return SpeculativeConfig(
        method=method,
        num_speculative_tokens=k,
        prompt_lookup_min=low,
        prompt_lookup_max=high,
        model=model,
        disable_by_batch_size=_int(value, "disable_by_batch_size", 1),
    )


def check_implemented(config: SpeculativeConfig) -> None:
    """Raises a usage error for a method this build cannot run yet."""
    if config.method not in IMPLEMENTED_METHODS:
        raise _error(
            f"method {config.method} is not supported yet (supported: {', '.join(IMPLEMENTED_METHODS)})"
        )
