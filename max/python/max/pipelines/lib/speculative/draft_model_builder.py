"""Building the draft model of `{"method": "draft_model", "model": ...}` beside its target.

The draft is resolved and loaded by the same builder as any pipeline (`pipeline_builder.
build_rank`, which the caller passes in: the builder calls this module, not the reverse),
from a `PipelineConfig` derived from the target's: the same device (rank 0's under tensor
parallelism: the draft runs in one process), the same compute dtype and quantization, no
longer sequences than the target serves, its own paged KV cache without prefix caching
(its pages are private to the proposer). A draft whose vocabulary differs from the
target's is refused: its token ids would mean other tokens.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from max.errors import MaxError
from max.pipelines.lib.config import PipelineConfig
from max.pipelines.lib.hub.hf_config import text_config
from max.pipelines.lib.model.registry import PIPELINE_REGISTRY, PipelineRegistry
from max.pipelines.lib.model_resolution import ResolvedModel, resolve_model
from max.pipelines.lib.runner.model_runner import ModelRunner
from max.pipelines.lib.speculative.draft_model import DraftModelProposer

logger = logging.getLogger("max.pipelines")


def _device_spec(target: ResolvedModel) -> str:
    device = target.plan.device
    return "cpu" if device.type == "cpu" else f"gpu:{device.index or 0}"


def _dtype_name(target: ResolvedModel) -> str:
    return str(target.plan.dtype).removeprefix("torch.")


def draft_pipeline_config(draft_model: str, target: ResolvedModel, revision: str | None = None) -> PipelineConfig:
    """The config the draft model is resolved from (see the module docstring)."""
    config = target.config
    settings = dict(
        model_path=draft_model,
        revision=revision,
        weight_path=[],
        tokenizer=None,
        skip_tokenizer_init=True,
        load_format="dummy" if config.load_format == "dummy" else "auto",
        quantization_encoding=_dtype_name(target),
        devices=_device_spec(target),
        tensor_parallel_size=1,
        data_parallel_size=1,
        tp_rank=0,
        torchrun=None,
        max_length=target.max_seq_len,
        enable_prefix_caching=False,
        kv_cache_memory=None,
        # The target's, not the draft's: the draft neither speculates nor runs adapters.
        speculative_config=None,
        hf_overrides=None,  # they describe the target's config, not the draft's
        enable_lora=False,
        lora_modules=[],
    )
    known = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in settings.items() if k in known})


def check_same_vocabulary(draft: ResolvedModel, target: ResolvedModel) -> None:
    """Raises MaxError unless the draft's vocabulary size is the target's."""
    draft_vocab = int(text_config(draft.hf_config).vocab_size)
    target_vocab = int(text_config(target.hf_config).vocab_size)
    if draft_vocab != target_vocab:
        raise MaxError(
            f"speculative draft model {draft.config.model_path!r} has a vocabulary of {draft_vocab} "
            f"tokens, the target {target.config.model_path!r} has {target_vocab}: a draft model "
            "must share the target's vocabulary"
        )


def resolve_draft_model(
    draft_model: str,
    target: ResolvedModel,
    revision: str | None = None,
    kv_cache_tokens: int | None = None,
    registry: PipelineRegistry = PIPELINE_REGISTRY,
) -> ResolvedModel:
    """The draft model resolved (no weights read): checked against the target (vocabulary,
    dtype), its length capped at what both models take, its KV cache sized for
    `kv_cache_tokens` tokens when given."""
    draft = resolve_model(draft_pipeline_config(draft_model, target, revision), registry)
    check_same_vocabulary(draft, target)
    model_max = int(getattr(text_config(draft.hf_config), "max_position_embeddings", 0) or 0)
    if model_max and model_max < target.max_seq_len:
        # A shorter draft still drafts for the sequences it can hold (none beyond).
        draft = dataclasses.replace(draft, config=dataclasses.replace(draft.config, max_length=model_max))
    if draft.plan.dtype != target.plan.dtype:
        raise MaxError(
            f"speculative draft model {draft_model!r} computes in {draft.plan.dtype}, the target in "
            f"{target.plan.dtype}; they must match"
        )
    if kv_cache_tokens is not None:
        if kv_cache_tokens < 1:
            raise MaxError(f"the draft model's KV cache must hold at least 1 token (got {kv_cache_tokens})")
        params = draft.architecture.pipeline_model.get_kv_params(draft.hf_config, draft.config, draft.plan.dtype)
        memory = params.pages_for_tokens(kv_cache_tokens) * params.bytes_per_page
        draft = dataclasses.replace(draft, config=dataclasses.replace(draft.config, kv_cache_memory=memory))
    return draft


def build_draft_model_proposer(
    draft_model: str,
    target: ResolvedModel,
    build_runner: Callable[[ResolvedModel], ModelRunner],
    *,
    revision: str | None = None,
    kv_cache_tokens: int | None = None,
    registry: PipelineRegistry = PIPELINE_REGISTRY,
) -> DraftModelProposer:
    """A `DraftProposer` over `draft_model` (a path, Hub repo id or embedded model; the
    `"model"` of a `draft_model` speculative config) for the resolved `target`, its runner
    made by `build_runner` (`pipeline_builder.build_rank`).

    Loads the draft's weights on the target's device in the target's dtype and gives it its
    own paged KV cache: room for `kv_cache_tokens` tokens when given (on a GPU, build the
    draft before the target with this set, so that the target's cache is sized from what
    is left), else the builder's default (CPU: up to 2 GiB; GPU: the free memory). Raises
    MaxError when the draft cannot serve as one (another vocabulary size, another dtype).
    """
    draft = resolve_draft_model(draft_model, target, revision, kv_cache_tokens, registry)
    runner = build_runner(draft)
    logger.info(
        "speculative draft model %s: %d KV pages of %d tokens, up to %d positions",
        draft_model,
        runner.kv_cache.num_pages,
        runner.kv_cache.page_size,
        runner.max_seq_len,
    )
    return DraftModelProposer(runner, draft.plan.token_budget)
