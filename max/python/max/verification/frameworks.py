"""Producing logits with this framework ("max") and with Hugging Face transformers ("torch").

Both read the same files (safetensors, or a GGUF through transformers' own loader), decode
greedily with EOS ignored for a fixed number of steps, and record the full-vocabulary
logits of every step. With reference logits, the framework under test is teacher-forced:
it follows the reference's tokens, so both see the same sequence at every step.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from max.errors import MaxError
from max.pipelines.lib import FLOAT_ENCODINGS, PipelineConfig, TextTokenizer, resolve_model_source
from max.pipelines.lib.config import WEIGHT_ONLY_SCHEMES
from max.pipelines.lib.model.multimodal import ImageInput
from max.verification.logits_file import PromptLogits, StepLogits
from max.verification.prompts import DEFAULT_PROMPTS, VerificationPrompt, as_prompt

__all__ = ["DEFAULT_PROMPTS", "FrameworkSettings", "run_framework"]

@dataclass
class FrameworkSettings:
    """What both frameworks are asked to run."""

    model_path: str
    device: str = "cpu"
    encoding: str = "float32"
    num_steps: int = 10
    max_length: int | None = None  # None: the model's own maximum
    trust_remote_code: bool = False
    custom_architectures: Sequence[str] = ()
    kernels: str = "auto"  # "torch": this framework's torch reference ops, even on a GPU
    tensor_parallel_size: int = 1
    # Ours only: quantization applied on load (`fp8`); the torch reference stays in `encoding`.
    quantization: str | None = None
    # Ours only: the KV cache's storage (`--kv-cache-dtype`, e.g. `fp8`).
    kv_cache_dtype: str = "auto"
    # The torch reference's own checkpoint, where transformers cannot read ours (a GPTQ / AWQ
    # / FP8 checkpoint: its dequantized float weights). None: the same `model_path`.
    reference_model_path: str | None = None
    # A LoRA adapter (PEFT folder or Hub repo id): ours serves it, the reference applies PEFT.
    lora: str | None = None
    # `--hf-overrides`: merged into the Hugging Face config of both frameworks.
    hf_overrides: dict | None = None


def _torch_device(device: str) -> torch.device:
    from max.pipelines.lib import parse_device

    return parse_device(device)


@dataclass
class EncodedPrompt:
    """What both frameworks run for a prompt: token ids, and the images on its image tokens."""

    ids: list[int]
    images: list[ImageInput]


def tokenize_prompts(settings: FrameworkSettings, prompts: Sequence[VerificationPrompt]) -> list[EncodedPrompt]:
    """The token ids (and images) of each prompt: the same feed both frameworks. A prompt
    with images is one user message through the chat template and the image processor."""
    source = resolve_model_source(settings.model_path)
    if any(p.images for p in prompts):
        from max.pipelines.lib.hub.hf_config import load_hf_config
        from max.pipelines.lib.tokens.vision_tokenizer import VisionLanguageTokenizer

        hf_config = load_hf_config(source, settings.trust_remote_code)
        tokenizer_class = _image_tokenizer_class(hf_config, VisionLanguageTokenizer)
        tokenizer = tokenizer_class.from_source(source, hf_config, settings.trust_remote_code)
    else:
        tokenizer = TextTokenizer.from_source(source, trust_remote_code=settings.trust_remote_code)
    encoded = []
    for p in prompts:
        if not p.images:
            encoded.append(EncodedPrompt(tokenizer.encode(p.text), []))
            continue
        content = [*({"type": "image"} for _ in p.images), {"type": "text", "text": p.text}]
        ids, images = tokenizer.encode_chat_with_images([{"role": "user", "content": content}], _open_images(p.images))
        encoded.append(EncodedPrompt(ids, images))
    return encoded


def _image_tokenizer_class(hf_config, default: type) -> type:
    """The registered architecture's tokenizer when it takes images (Gemma 3 lays its image
    tokens out in its own way), else `default` (Qwen2-VL's layout)."""
    from max.pipelines.architectures import register_all

    names = getattr(hf_config, "architectures", None) or []
    try:
        cls = register_all().retrieve(names[0]).tokenizer if names else default
    except MaxError:
        return default
    return cls if isinstance(cls, type) and issubclass(cls, default) else default


def _open_images(paths: Sequence[str]) -> list:
    """The image files as RGB pictures (the files closed again)."""
    from PIL import Image

    pictures = []
    for path in paths:
        with Image.open(path) as image:
            pictures.append(image.convert("RGB"))
    return pictures


def _follow(step: int, logits: np.ndarray, forced: list[int] | None) -> int:
    if forced is not None:
        if step >= len(forced):
            raise MaxError(f"the reference has only {len(forced)} steps, {step + 1} were asked for")
        return forced[step]
    return int(np.argmax(logits))


def build_max_engine(settings: FrameworkSettings):
    """This framework's engine for the settings: one request at a time, small pages."""
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import build_engine, resolve_model

    config = PipelineConfig(
        model_path=settings.model_path,
        devices=settings.device,
        quantization_encoding=settings.encoding,
        max_length=settings.max_length,
        max_batch_size=1,
        kv_cache_page_size=16,
        trust_remote_code=settings.trust_remote_code,
        custom_architectures=list(settings.custom_architectures),
        kernels=settings.kernels,
        tensor_parallel_size=settings.tensor_parallel_size,
        quantization=settings.quantization,
        kv_cache_dtype=settings.kv_cache_dtype,
        hf_overrides=settings.hf_overrides,
    )
    if settings.lora is not None:
        from max.pipelines.lib.lora.engine_lora import with_one_adapter

        config = with_one_adapter(config, "lora", settings.lora)
    return build_engine(resolve_model(config, register_all()))


def run_max(
    settings: FrameworkSettings,
    prompts: Sequence[VerificationPrompt],
    encoded: Sequence[EncodedPrompt],
    forced: Sequence[list[int]] | None = None,
) -> list[PromptLogits]:
    """This framework's logits: prefill each prompt, then decode one token per step."""
    engine = build_max_engine(settings)
    try:
        return _run_max_prompts(engine, settings, prompts, encoded, forced)
    finally:
        engine.close()


def _run_max_prompts(engine, settings, prompts, encoded, forced) -> list[PromptLogits]:
    from max.pipelines.lib.engine.request import Request
    from max.pipelines.lib.engine.scheduler import ScheduledChunk
    from max.pipelines.lib.sampling.sampling_params import SamplingParams

    model, cache = engine.model, engine.kv_cache
    results = []
    for p, (prompt, enc) in enumerate(zip(prompts, encoded)):
        tokens = list(enc.ids)
        model.check_images(enc.images, tokens)
        request = Request(
            "verify", tokens, len(tokens), SamplingParams(), 0, len(tokens) + settings.num_steps, 0, images=tuple(enc.images)
        )
        if engine.lora is not None:  # the one adapter of `settings.lora`
            request.lora = engine.lora.ref("lora")
            engine.lora.assign([request])
        if not cache.reserve("verify", len(tokens) + settings.num_steps):
            raise MaxError("the KV cache is too small for this prompt")
        result = PromptLogits(prompt.key)
        start = 0
        try:
            for step in range(settings.num_steps):
                chunk = ScheduledChunk(request, start, len(tokens) - start)
                inputs = engine.runner.inputs.build([chunk])
                logits = engine.runner.execute(inputs)[-1].float().cpu().numpy()
                token = _follow(step, logits, forced[p] if forced else None)
                result.steps.append(StepLogits(token, logits))
                start = len(tokens)
                tokens.append(token)
        finally:
            cache.free("verify")
        results.append(result)
    return results


def reference_encoding(encoding: str) -> str:
    """The float encoding the torch reference runs for `encoding`: itself, or bfloat16 for a
    quantized one (ours keeps its weights quantized and computes in bfloat16 on the CPU;
    the reference decodes the same file's weights)."""
    if encoding in FLOAT_ENCODINGS:
        return encoding
    if encoding in WEIGHT_ONLY_SCHEMES:
        return "bfloat16"
    raise MaxError(f"the torch reference has no counterpart of encoding {encoding!r}")


def load_torch_model(settings: FrameworkSettings):
    """transformers' model for the same files, in the settings' dtype and device (the class
    the config names; a causal LM of transformers' Auto classes for a GGUF file)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from max.pipelines.lib.hub.hf_config import architecture_name
    from max.testing.tiny_checkpoints import reference_class

    hf_logging.set_verbosity_error()
    source = resolve_model_source(settings.reference_model_path or settings.model_path)
    encoding = reference_encoding(settings.encoding)
    kwargs = {"gguf_file": source.gguf_file.name} if source.gguf_file is not None else {}
    if settings.hf_overrides:
        kwargs["config"] = _overridden_config(source, settings, kwargs)
    cls = (
        AutoModelForCausalLM
        if source.gguf_file is not None
        else reference_class(architecture_name(source, overrides=settings.hf_overrides))
    )
    model = cls.from_pretrained(
        str(source.directory),
        dtype=FLOAT_ENCODINGS[encoding],
        trust_remote_code=settings.trust_remote_code,
        **kwargs,
    )
    if settings.lora is not None:  # PEFT puts its LoRA layers into the model itself
        from peft import PeftModel

        from max.pipelines.lib.lora.peft_adapter import adapter_folder

        model = PeftModel.from_pretrained(model, str(adapter_folder(settings.lora))).get_base_model()
    return model.to(_torch_device(settings.device)).eval()


def _overridden_config(source, settings: FrameworkSettings, kwargs: dict):
    """transformers' own config of the files with `--hf-overrides` merged in, as ours
    merges them (`hub.hf_overrides`)."""
    from transformers import AutoConfig

    from max.pipelines.lib.hub.hf_overrides import apply_hf_overrides

    config = AutoConfig.from_pretrained(str(source.directory), trust_remote_code=settings.trust_remote_code, **kwargs)
    return apply_hf_overrides(config, settings.hf_overrides)


def _cache_kwargs(model, out) -> dict:
    """The KV cache of `out` as the next forward call takes it: transformers renamed
    `past_key_values` to `cache` (5.2x); the GPU image has an earlier 5.x."""
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _image_kwargs(model, ids: torch.Tensor, images: Sequence[ImageInput]) -> dict:
    """A vision-language model's image inputs for its first forward call: pixels, grids and
    which tokens are image tokens. Its remembered M-RoPE offset of the previous prompt is
    cleared (transformers keeps it on the model between generate calls)."""
    inner = getattr(model, "model", None)
    if hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None
    if not images:
        return {}
    token = model.config.image_token_id
    if getattr(model.config, "model_type", None) == "gemma3":
        # Whole images [N, C, H, W], and the image tokens marked: they attend both ways.
        from max.pipelines.architectures.gemma3.image_tokenizer import images_from_patch_rows

        rows = np.stack([im.pixel_values for im in images])
        pixels = images_from_patch_rows(rows, model.config.vision_config.patch_size)
        return {"pixel_values": torch.from_numpy(pixels).to(ids.device), "token_type_ids": (ids == token).long()}
    return {
        "pixel_values": torch.from_numpy(np.concatenate([im.pixel_values for im in images])).to(ids.device),
        "image_grid_thw": torch.tensor([im.grid_thw for im in images], device=ids.device),
        "mm_token_type_ids": (ids == token).int(),
    }


@torch.no_grad()
def run_torch(
    settings: FrameworkSettings,
    prompts: Sequence[VerificationPrompt],
    encoded: Sequence[EncodedPrompt],
    forced: Sequence[list[int]] | None = None,
    model=None,
) -> list[PromptLogits]:
    """transformers' logits, decoding with its own KV cache."""
    model = model if model is not None else load_torch_model(settings)
    device = next(model.parameters()).device
    results = []
    for p, (prompt, enc) in enumerate(zip(prompts, encoded)):
        ids = torch.tensor([enc.ids], device=device)
        out = model(ids, use_cache=True, **_image_kwargs(model, ids, enc.images))
        result = PromptLogits(prompt.key)
        for step in range(settings.num_steps):
            logits = out.logits[0, -1].float().cpu().numpy()
            token = _follow(step, logits, forced[p] if forced else None)
            result.steps.append(StepLogits(token, logits))
            if step + 1 < settings.num_steps:
                out = model(torch.tensor([[token]], device=device), use_cache=True, **_cache_kwargs(model, out))
        results.append(result)
    return results


def run_framework(
    framework: str,
    settings: FrameworkSettings,
    prompts: Sequence[str | VerificationPrompt],
    reference: list[PromptLogits] | None = None,
) -> list[PromptLogits]:
    """Runs `framework` ("max" or "torch"), teacher-forced along `reference` if given."""
    prompts = [as_prompt(p) for p in prompts]
    forced = None
    if reference is not None:
        by_prompt = {r.prompt: [s.next_token for s in r.steps] for r in reference}
        missing = [p.key for p in prompts if p.key not in by_prompt]
        if missing:
            raise MaxError(f"the reference has no logits for prompt {missing[0]!r}")
        forced = [by_prompt[p.key] for p in prompts]
    encoded = tokenize_prompts(settings, prompts)
    if framework == "max":
        return run_max(settings, prompts, encoded, forced)
    if framework == "torch":
        return run_torch(settings, prompts, encoded, forced)
    raise MaxError(f"unknown framework {framework!r} (max or torch)")
