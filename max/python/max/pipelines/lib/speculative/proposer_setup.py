"""Setting up the proposer that a `--speculative-config` names, beside the target it serves.

`pipeline_builder.build_engine` calls these two, so that every entry point building an
engine from a `PipelineConfig` (generate, serve, the benchmarks, the offline API) gets the
same proposer:
- `build_draft_model` (method draft_model) runs before the target is built: on a GPU the
  draft's weights and its KV cache are taken first, and the target's cache is sized from
  what is left.
- `EagleSetup` (methods eagle and eagle3) runs while the target is built, once its weights
  are loaded and before its runner captures CUDA graphs: the head's feature tap must be in
  the graphs.
The n-gram method needs neither (the engine's `Speculator` builds it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from max.errors import MaxError
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.model_resolution import ResolvedModel
from max.pipelines.lib.runner.model_runner import ModelRunner
from max.pipelines.lib.speculative.draft_model import DraftModelProposer
from max.pipelines.lib.speculative.draft_model_builder import build_draft_model_proposer
from max.pipelines.lib.speculative.eagle_builder import build_eagle_proposer
from max.pipelines.lib.speculative.eagle_proposer import EagleProposer
from max.pipelines.lib.speculative.speculative_config import SpeculativeConfig

EAGLE_METHODS = ("eagle", "eagle3")
# Cap on the tokens a draft's (or head's) own KV cache holds on a GPU, where the default
# (all free memory) would leave the target none: a full batch of full-length requests
# unless that is more than this.
_GPU_DRAFT_TOKENS = 1 << 18


@contextmanager
def _naming_the_flag(speculative: SpeculativeConfig) -> Iterator[None]:
    """Says that an error building the proposer is about the flag's model, not the target's."""
    try:
        yield
    except MaxError as e:
        raise MaxError(f"--speculative-config {speculative.method} model {speculative.model!r}: {e}") from e


def draft_cache_tokens(target: ResolvedModel) -> int | None:
    """Tokens the draft's KV cache holds: on a GPU a full batch at full length (capped),
    on the CPU the builder's default (None)."""
    if target.plan.device.type == "cpu":
        return None
    return min(target.config.max_batch_size * target.max_seq_len, _GPU_DRAFT_TOKENS)


def build_draft_model(
    speculative: SpeculativeConfig, target: ResolvedModel, build_runner: Callable[[ResolvedModel], ModelRunner]
) -> DraftModelProposer:
    """The draft-model proposer of `speculative` for `target` (its runner by `build_runner`)."""
    with _naming_the_flag(speculative):
        return build_draft_model_proposer(
            speculative.model, target, build_runner, kv_cache_tokens=draft_cache_tokens(target)
        )


class EagleSetup:
    """Builds the EAGLE proposer on the target's loaded model (`install`, called by the
    target's builder before its runner exists) and keeps it for the engine."""

    def __init__(self, speculative: SpeculativeConfig, target: ResolvedModel) -> None:
        self.speculative = speculative
        self.target = target
        self.proposer: EagleProposer | None = None

    def install(self, model: PipelineModel) -> None:
        """Loads the head beside `model` and hooks its feature tap on `model`'s network."""
        config, plan = self.target.config, self.target.plan
        k = self.speculative.num_speculative_tokens
        # One step's rows: a prefill chunk, or a batch of verify steps (k drafts + 1 each),
        # whichever is longer; graph padding stays within both.
        max_step_tokens = max(plan.token_budget, config.max_batch_size * (k + 1))
        cache_tokens = min(config.max_batch_size * model.max_seq_len, _GPU_DRAFT_TOKENS)
        with _naming_the_flag(self.speculative):
            self.proposer, _ = build_eagle_proposer(
                self.speculative.model, self.speculative.method, model, cache_tokens, max_step_tokens,
                page_size=config.kv_cache_page_size,
            )  # fmt: skip
