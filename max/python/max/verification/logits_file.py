"""The logits file format of generate_llm_logits (MAX's convention).

A JSON list, one entry per prompt, in prompt order:
`{"prompt": str, "values": [{"next_token": int, "next_token_logits": float,
"logits": [float, ... one per vocabulary entry]}, ...]}`, one value per generated step.
`next_token` is the token that followed (the greedy choice, or the reference's token when
teacher-forced); `next_token_logits` is its logit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from max.errors import MaxError


@dataclass
class StepLogits:
    """One step: the full-vocabulary logits and the token that followed."""

    next_token: int
    logits: np.ndarray  # float32 [vocab]

    @property
    def next_token_logit(self) -> float:
        """The logit of `next_token`."""
        return float(self.logits[self.next_token])


@dataclass
class PromptLogits:
    """A prompt and the logits of each of its steps."""

    prompt: str
    steps: list[StepLogits] = field(default_factory=list)


def write_logits(path: str | Path, results: list[PromptLogits]) -> None:
    """Writes results in the JSON format above."""
    payload = [
        {
            "prompt": r.prompt,
            "values": [
                {"next_token": s.next_token, "next_token_logits": s.next_token_logit, "logits": s.logits.tolist()}
                for s in r.steps
            ],
        }
        for r in results
    ]
    Path(path).write_text(json.dumps(payload))


def read_logits(path: str | Path) -> list[PromptLogits]:
    """Reads a logits file; any deviation from the format is a MaxError naming the file."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as e:
        raise MaxError(f"cannot read logits file {path}: {e}") from None
    except ValueError as e:
        raise MaxError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(payload, list):
        raise MaxError(f"{path}: expected a list of prompts")
    results = []
    for i, entry in enumerate(payload):
        try:
            steps = [
                StepLogits(int(v["next_token"]), np.asarray(v["logits"], dtype=np.float32))
                for v in entry["values"]
            ]
            results.append(PromptLogits(str(entry["prompt"]), steps))
        except (KeyError, TypeError, ValueError) as e:
            raise MaxError(f"{path}: prompt {i} is malformed ({type(e).__name__}: {e})") from None
    return results
