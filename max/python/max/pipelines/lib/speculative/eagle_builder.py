"""Building the proposer of `{"method": "eagle3" | "eagle", "model": FOLDER}` for a loaded
target: the head on the target's device in its dtype, its own paged KV cache, and the tap
that takes the head's features out of the target's forward pass."""

from __future__ import annotations

from pathlib import Path

from max.errors import MaxError
from max.kv_cache import KVCacheParams, PagedKVCache
from max.pipelines.lib.hub.model_source import resolve_model_source
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.speculative.eagle_checkpoint import load_eagle_head
from max.pipelines.lib.speculative.eagle_features import TargetFeatureTap
from max.pipelines.lib.speculative.eagle_proposer import EagleProposer


def head_folder(model: str | Path, revision: str | None = None) -> Path:
    """The local folder of a head: `model` itself, or a Hub repo's files fetched into the
    cache (the Hub is asked only for a name that is no local folder)."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    return resolve_model_source(str(model), revision=revision).directory


def build_eagle_proposer(
    model: str | Path,
    method: str,
    target: PipelineModel,
    kv_cache_tokens: int,
    max_step_tokens: int,
    page_size: int = 16,
    revision: str | None = None,
) -> tuple[EagleProposer, TargetFeatureTap]:
    """The EAGLE-3 (`method` "eagle3") or EAGLE ("eagle") proposer of the head `model` (a
    folder or Hub repo id holding config.json and safetensors) for the loaded `target`, and the tap
    installed on the target's network. The head's cache holds `kv_cache_tokens` positions
    over all requests; the tap holds one step of up to `max_step_tokens` tokens.

    Install it before the target's CUDA graphs are captured (the graphs then copy the
    features too). After each target step the engine calls `proposer.observe_step(inputs)`
    (the step's `ModelInputs`), which hands each request's rows of `tap.rows(T)` to
    `add_target_features`.
    """
    if target.plan.tp_size > 1:
        # The head would call the target's embedding (and EAGLE its LM head), whose shards
        # meet in collectives that the other ranks do not join.
        raise MaxError("EAGLE heads do not support a tensor-parallel target yet: run the target on one device")
    network = target.model
    config = target.model_config
    head = load_eagle_head(
        head_folder(model, revision), method, len(network.layers), config.hidden_size, config.vocab_size,
        target.max_seq_len, target.device, target.dtype,
    )  # fmt: skip
    if head.embed_tokens is None:
        head.share_embedding(network.embed_tokens)
    c = head.config.decoder
    if kv_cache_tokens < 1:
        raise MaxError(f"the EAGLE head's KV cache must hold at least 1 token (got {kv_cache_tokens})")
    params = KVCacheParams(c.num_layers, c.num_kv_heads, c.head_dim, page_size, target.dtype)
    kv_cache = PagedKVCache(params, params.pages_for_tokens(kv_cache_tokens), target.device, enable_prefix_caching=False)
    lm_head = network.logits if method == "eagle" else None
    tap = TargetFeatureTap(network, head.config, max_step_tokens)
    return EagleProposer(head, kv_cache, target.max_seq_len, lm_head, tap), tap
