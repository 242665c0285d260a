"""Callbacks around the engine's steps, for tools that measure them (`--step-stats`,
benchmarks) without patching the engine.

`LLMEngine.add_observer(observer)` registers a `StepObserver`; the engine calls it when a
request arrives, when `step()` starts and ends, and when a step's work has been launched
on the device (before and after it is queued, with the runner's name for how it runs).
Every method does nothing unless overridden, and an observer must not raise: it runs
inside the engine's loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from max.pipelines.lib.engine.request import RequestOutput
from max.pipelines.lib.runner.input_batch import ModelInputs

# How a step runs (`ModelRunner.step_kind`): a replayed decode, single-request prefill or
# speculative verify graph, or an eager step of decode rows only, of prefill chunks only,
# or of both.
STEP_KINDS = ("graph_decode", "graph_prefill", "graph_verify", "eager_decode", "eager_prefill", "eager_mixed")


class StepObserver:
    """Receives the engine's step events (see the module docstring)."""

    def request_added(self, request_id: str, num_prompt_tokens: int) -> None:
        """A request was queued."""

    def step_started(self) -> None:
        """`LLMEngine.step()` was called."""

    def step_launching(self, inputs: ModelInputs, kind: str) -> None:
        """A step's work is about to be queued on the device; `kind` is one of `STEP_KINDS`."""

    def step_launched(self, inputs: ModelInputs) -> None:
        """The step's forward pass was queued (its draws are queued next)."""

    def step_finished(self, outputs: Sequence[RequestOutput]) -> None:
        """`LLMEngine.step()` returns `outputs`."""
