"""`PipelineModel`: builds an architecture's network, loads its weights, runs its steps.

The base class does everything that is the same for decoder-only language models;
an architecture's `model.py` subclasses it and names its config class (and, if its network
is not the generic `max.nn.Transformer`, overrides `build_network`).

It sizes the model (sequence length, KV-cache geometry, memory), builds and loads the
network, and runs its forward pass on a step's `ModelInputs`. Building those inputs is the
model runner's job (`input_batch.InputBatchBuilder`); the model takes part through two
hooks, `rotary_positions` and `encoder_outputs`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from max.errors import MaxError
from max.kv_cache import KVCacheParams, kv_cache_dtype
from max.nn import DecoderConfig, TensorParallel, Transformer, step_context, tensor_parallel
from max.nn.checkpoint_layout import leaves, parameter_sources
from max.nn.expert_weights import Mxfp4ExpertWeights
from max.nn.fp8_linear import fp8_layer_bytes, fp8_replacements
from max.nn.lora import LoRATargets, lora_step
from max.nn.quantized_linear import quantized_head, weight_only_replacements
from max.pipelines.lib.config import WEIGHT_ONLY_SCHEMES, PipelineConfig
from max.pipelines.lib.engine.scheduler import ScheduledChunk
from max.pipelines.lib.hub.hf_config import quantization_method, text_config
from max.pipelines.lib.model.memory_plan import check_fits as check_device_memory
from max.pipelines.lib.model.memory_plan import planned_weight_bytes
from max.pipelines.lib.model.multimodal import ImageInput, check_images
from max.pipelines.lib.plan import CPU_QUANTIZED_SCHEMES, ExecutionPlan, WeightScheme
from max.pipelines.lib.runner.input_batch import EncoderOutputs, ModelInputs, ModelOutputs
from max.pipelines.lib.weights import Checkpoint
from max.pipelines.lib.weights.network_loader import LayerTransform, load_network
from max.pipelines.lib.weights.quantized_layers import (
    gguf_layer_transforms,
    gguf_quantized_tables,
    quantized_layer_transforms,
)

logger = logging.getLogger("max.pipelines")

_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
)


@contextlib.contextmanager
def skip_parameter_init() -> Iterator[None]:
    """Turns torch.nn.init's initializers into no-ops while a network is being shaped:
    its weights come from the checkpoint, so random init would be wasted work (and on the
    meta device its first use alone costs seconds)."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


# GGUF encodings of more than four bits per weight: under int4 their layers stay int8
# (a float checkpoint's layers are quantized as asked).
_WIDE_GGUF = {"Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_K"}


def _wide_layers(network: nn.Module, state: Any) -> set[str]:
    """Module paths of the layers whose weight comes from a GGUF tensor stored with more
    than four bits (kept int8 under int4 quantization)."""
    wide = set()
    for name, source in parameter_sources(network).items():
        if name.endswith(".weight") and any(getattr(state[leaf], "encoding", "") in _WIDE_GGUF for leaf in leaves(source)):
            wide.add(name.removesuffix(".weight"))
    return wide


class PipelineModel:
    """Base class of every architecture's model: see the module docstring."""

    # The architecture's config class: a DecoderConfig (sub)class with a classmethod
    # `from_huggingface(hf_config, max_seq_len)`.
    config_class: ClassVar[type[DecoderConfig]]
    # The token id that marks an image's positions in a prompt (None: the model takes no
    # images; vision-language models set it from their config).
    image_token_id: int | None = None
    # The device slots of LoRA adapters in the network's projections (`enable_lora`); None:
    # no LoRA, and steps carry no adapter rows.
    lora: LoRATargets | None = None

    def __init__(
        self,
        pipeline_config: PipelineConfig,
        plan: ExecutionPlan,
        hf_config: Any,
        checkpoint: Checkpoint | None,
        weight_adapter: Any,
    ) -> None:
        self.pipeline_config = pipeline_config
        self.plan = plan
        self.hf_config = hf_config
        self.dtype = plan.dtype
        self.device = plan.device
        self.max_seq_len = self.calculate_max_seq_len(pipeline_config, hf_config)
        self.model_config = self.config_class.from_huggingface(hf_config, self.max_seq_len)
        self.choose_expert_weights()
        self.model = self.load_model(checkpoint, weight_adapter)

    # -- sizes ---------------------------------------------------------------------------
    @classmethod
    def calculate_max_seq_len(cls, pipeline_config: PipelineConfig, hf_config: Any) -> int:
        """Longest sequence (prompt + output) the model serves."""
        model_max = int(getattr(text_config(hf_config), "max_position_embeddings", 0) or 0)
        wanted = pipeline_config.max_length
        if wanted is None:
            if not model_max:
                raise MaxError("the model config has no max_position_embeddings: pass --max-length")
            return model_max
        if model_max and wanted > model_max:
            raise MaxError(
                f"--max-length {wanted} exceeds the model's maximum of {model_max} positions"
            )
        return wanted

    @classmethod
    def get_num_layers(cls, hf_config: Any) -> int:
        """Decoder layers (each has its own KV cache)."""
        return int(text_config(hf_config).num_hidden_layers)

    @classmethod
    def get_kv_params(
        cls, hf_config: Any, pipeline_config: PipelineConfig, dtype: torch.dtype
    ) -> KVCacheParams:
        """The KV cache geometry this model needs, stored in `--kv-cache-dtype` (`auto`: the
        compute `dtype`)."""
        config = cls.config_class.from_huggingface(hf_config, 1)
        # Under tensor parallelism every rank caches the KV heads its query heads read.
        kv_start, kv_stop = TensorParallel(0, pipeline_config.tp_size).kv_heads(config.num_kv_heads)
        return KVCacheParams(
            num_layers=cls.get_num_layers(hf_config),
            num_kv_heads=kv_stop - kv_start,
            head_dim=config.head_dim,
            page_size=pipeline_config.kv_cache_page_size,
            dtype=kv_cache_dtype(pipeline_config.kv_cache_dtype, dtype),
        )

    @classmethod
    def estimate_kv_cache_size(
        cls, pipeline_config: PipelineConfig, hf_config: Any, dtype: torch.dtype
    ) -> int:
        """Bytes of KV cache for a full batch of full-length requests (an upper bound)."""
        params = cls.get_kv_params(hf_config, pipeline_config, dtype)
        max_len = cls.calculate_max_seq_len(pipeline_config, hf_config)
        pages = params.pages_for_tokens(max_len) * pipeline_config.max_batch_size
        return pages * params.bytes_per_page

    def estimate_activation_memory(self, max_batch_tokens: int, max_batch_size: int) -> int:
        """Bytes one step's activations may take at most (a rough upper bound), which the KV
        cache must leave free: the widest intermediate tensors of a layer for every token of
        the step, and the float32 logits of a full batch (a graph's output buffer, an eager
        step's, and a sampler's copy)."""
        c = self.model_config
        elem = torch.empty((), dtype=self.dtype).element_size()
        inter = c.intermediate_size
        if c.moe is not None:
            inter = max(inter, c.moe.moe_intermediate_size * c.moe.num_experts_per_tok)
        width = 6 * c.hidden_size + 3 * inter + 3 * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        scratch = 0
        if c.moe is not None and c.moe.expert_weights == Mxfp4ExpertWeights.name:
            scratch = Mxfp4ExpertWeights.scratch_bytes(
                c.moe.num_experts, c.hidden_size, c.moe.moe_intermediate_size, self.dtype, max_batch_tokens
            )
        return max_batch_tokens * width * elem + 3 * max_batch_size * c.vocab_size * 4 + scratch

    def check_fits(self, weight_bytes: int) -> None:
        """Raises MaxError before the weights are allocated when the model cannot run on its
        GPU: its weights, one full-length request's KV cache and a step's activations must fit
        in what `--gpu-memory-utilization` leaves free."""
        config = self.pipeline_config
        kv = self.get_kv_params(self.hf_config, config, self.dtype)
        activations = self.estimate_activation_memory(
            max(self.plan.token_budget, config.max_batch_size), config.max_batch_size
        )
        check_device_memory(
            self.device,
            config.device_memory_utilization,
            weight_bytes,
            kv.pages_for_tokens(self.max_seq_len) * kv.bytes_per_page,
            activations,
            self.max_seq_len,
        )

    def check_images(self, images: Sequence[ImageInput], prompt_tokens: Sequence[int]) -> None:
        """Raises MaxError unless the model can take `images` for this prompt (a text model
        takes none)."""
        check_images(images, prompt_tokens, self.image_token_id)

    # -- building ------------------------------------------------------------------------
    def choose_expert_weights(self) -> None:
        """MXFP4 experts (gpt-oss) stay packed on a GPU, where the grouped kernel decodes
        them (a quarter of bfloat16's bytes); on the CPU they are decoded on load, so the
        float32 reference is unchanged. A rank whose share of the experts' features is not
        in whole MXFP4 blocks decodes them too."""
        moe = self.model_config.moe
        if moe is None or self.device.type != "cuda" or quantization_method(self.hf_config) != "mxfp4":
            return
        bounds = tensor_parallel().split(moe.moe_intermediate_size, "the experts' intermediate size")
        if Mxfp4ExpertWeights.supports(self.model_config.hidden_size, bounds):
            moe.expert_weights = Mxfp4ExpertWeights.name
        else:
            logger.info("MXFP4 experts decoded to %s: this rank's features %s are not whole blocks of 32", self.dtype, bounds)

    def build_network(self) -> nn.Module:
        """The network for `self.model_config`; architectures with their own blocks override."""
        return Transformer(self.model_config)

    def load_model(self, checkpoint: Checkpoint | None, weight_adapter: Any) -> nn.Module:
        """Builds the network without allocating, then streams the weights into it.

        Each parameter is allocated on the device in its final dtype and filled from the
        checkpoint (or randomly: `--load-format dummy`, no checkpoint); layers that a
        quantization replaces (`--quantization fp8`; int8/int4 for a quantized encoding on
        the CPU, read in float32 and quantized from those values) are replaced as soon as
        their weights are in, so the peak is the final weights plus one layer.
        """
        scheme = self.plan.weight_scheme
        with torch.device("meta"), skip_parameter_init():
            network = self.build_network()
        state = None if checkpoint is None else weight_adapter(checkpoint, self.hf_config)
        transforms: dict[str, LayerTransform] = {}
        replaced_bytes: dict[str, int] = {}
        if scheme in (WeightScheme.W4A16, WeightScheme.W8A16) or (
            scheme == WeightScheme.FP8 and self.plan.checkpoint_quantization
        ):
            transforms, replaced_bytes = self.checkpoint_transforms(network, state)
        elif scheme == WeightScheme.FP8:
            transforms = {path: LayerTransform(fn) for path, fn in fp8_replacements(network).items()}
            replaced_bytes = {p: fp8_layer_bytes(network.get_submodule(p), self.dtype) for p in transforms}
        if scheme in CPU_QUANTIZED_SCHEMES:
            keep_int8 = () if state is None or scheme != WeightScheme.INT4 else _wide_layers(network, state)
            replacements = weight_only_replacements(network, scheme.value, self.dtype, keep_int8)
            replacements.update(quantized_head(network, scheme.value, self.dtype))
            transforms = {path: LayerTransform(fn, torch.float32) for path, fn in replacements.items()}
        self.check_fits(planned_weight_bytes(network, self.dtype, replaced_bytes))
        self.load_report = load_network(network, state, self.device, self.dtype, transforms, self.pipeline_config.seed)
        return network.eval()

    def checkpoint_transforms(self, network: nn.Module, state: Any) -> tuple[dict[str, LayerTransform], dict[str, int]]:
        """FP8 / int4 layers (and their bytes) from a pre-quantized checkpoint's codes, or
        from the loaded values: `--quantization int4`, dummy weights of a quantized config,
        a GGUF file on a GPU (`gguf_layer_transforms`: int4 groups of 32 for a 4-bit file's
        4-bit layers, int8 groups of 32 for the others)."""
        quant = self.plan.checkpoint_quantization
        method = "int4" if self.plan.weight_scheme == WeightScheme.W4A16 else "fp8"
        gguf = quant is None and self.pipeline_config.quantization_encoding in WEIGHT_ONLY_SCHEMES
        if gguf:
            wide = () if state is None else _wide_layers(network, state)
            four_bit = self.plan.weight_scheme == WeightScheme.W4A16
            return gguf_layer_transforms(network, self.dtype, four_bit, wide, gguf_quantized_tables(network, state))
        group = quant.group_size if quant is not None and quant.group_size else 128
        codes = state if quant is not None else None
        return quantized_layer_transforms(network, codes, parameter_sources(network), method, self.dtype, group)

    # -- steps ---------------------------------------------------------------------------
    def rotary_positions(self, batch: Sequence[ScheduledChunk], cache_index: np.ndarray) -> np.ndarray:
        """The rotary positions of a step's tokens, given their cache indices (a hook of the
        runner's input builder): the same for text models (vision-language models offset
        the text after an image)."""
        return cache_index

    def encoder_outputs(self, batch: Sequence[ScheduledChunk]) -> EncoderOutputs | None:
        """What an encoder hands the decoder for this step (a hook of the runner's input
        builder): None for text models; vision-language models run their image encoder."""
        return None

    @torch.inference_mode()
    def execute(self, inputs: ModelInputs) -> ModelOutputs:
        """Runs one step: writes the new tokens' keys and values, returns their logits. A
        step with embedding requests also leaves the final hidden states of their rows in
        `inputs.pooled.hidden` (one pass: the LM head reads only the logits rows)."""
        positions = inputs.positions if inputs.rope_positions is None else inputs.rope_positions
        extra = () if inputs.embeds is None else (inputs.embeds,)
        pooled = inputs.pooled
        with step_context(inputs.layout, inputs.kv_cache), lora_step(inputs.lora):
            if pooled is None:
                return ModelOutputs(self.model(inputs.tokens, positions, inputs.logits_indices, *extra))
            n = inputs.logits_indices.shape[0]
            rows = torch.cat([inputs.logits_indices, pooled.indices])
            hidden = self.model.final_hidden(inputs.tokens, positions, rows, *extra)
            logits = self.model.logits(hidden[:n])
        pooled.hidden = hidden[n:]
        return ModelOutputs(logits)
