"""Gemma 3 with images against transformers' Gemma3ForConditionalGeneration, float32, on a
tiny random checkpoint: text-only prompts, one image, two images (each image's tokens
seeing each other both ways, inside the sliding window's reach back), chunked prefill that
keeps images whole, prefix caching keyed by image content, and bad images refused."""

from __future__ import annotations

import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib.model.multimodal import ImageInput
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.gemma3_vl_prompts import (
    CONFIG,
    IMAGE,
    MULTIMODAL,
    ONE_IMAGE,
    TWO_IMAGES,
    prompt,
    reference_pixels,
)
from max.testing.parity import PROMPTS, build_tiny_engine, greedy_by_full_forwards
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max_kernels.backend import interpreting


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("gemma3_vl"), CONFIG, seed=3)


@pytest.fixture(scope="module")
def reference(checkpoint):
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32).eval()


def hf_logits(model, ids: list[int], images: list[ImageInput]) -> torch.Tensor:
    """transformers' logits [len(ids), vocab] of a prompt with its images (token_type_ids
    mark the image tokens, as its processor does: they attend both ways)."""
    input_ids = torch.tensor([ids])
    kwargs = {"token_type_ids": (input_ids == IMAGE).long()}
    if images:
        kwargs["pixel_values"] = reference_pixels(images)
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits[0]


def hf_greedy(model, ids: list[int], images: list[ImageInput], steps: int) -> list[int]:
    """transformers' greedy continuation, each step a full forward."""
    return greedy_by_full_forwards(lambda seq: hf_logits(model, seq, images), ids, steps)


def test_text_prompts_match_transformers(checkpoint, reference):
    engine = build_tiny_engine(checkpoint)
    for ids in PROMPTS:
        torch.testing.assert_close(prompt_logits(engine, ids), hf_logits(reference, list(ids), []), rtol=1e-5, atol=1e-5)
    assert greedy_tokens(engine, PROMPTS[1:2], 6) == [hf_greedy(reference, list(PROMPTS[1]), [], 6)]


@pytest.mark.parametrize("case", range(len(MULTIMODAL)))
def test_images_match_transformers(checkpoint, reference, case):
    ids, images = MULTIMODAL[case]
    engine = build_tiny_engine(checkpoint)
    expected = hf_logits(reference, ids, images)
    torch.testing.assert_close(prompt_logits(engine, ids, images), expected, rtol=1e-5, atol=1e-5)
    assert greedy_tokens(engine, [ids], 6, [images]) == [hf_greedy(reference, ids, images, 6)]
    assert engine.kv_cache.pool.num_in_use == 0


def test_image_tokens_see_their_whole_image(checkpoint, reference):
    """Not vacuous: a causal mask over the image tokens gives other logits."""
    ids, images = ONE_IMAGE
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        causal = reference(input_ids=input_ids, pixel_values=reference_pixels(images)).logits[0]
    ours = prompt_logits(build_tiny_engine(checkpoint), ids, images)
    assert not torch.allclose(ours, causal, atol=1e-3)


def test_chunked_prefill_keeps_images_whole(checkpoint):
    """Alone, batched, and in chunks of at most 12 tokens (an image takes 9): the same greedy
    tokens; no chunk ends inside an image, each image is encoded once."""
    prompts = [ids for ids, _ in MULTIMODAL] + [PROMPTS[1]]
    images = [ims for _, ims in MULTIMODAL] + [[]]
    engine = build_tiny_engine(checkpoint)
    alone = [greedy_tokens(engine, [p], 6, [ims])[0] for p, ims in zip(prompts, images)]
    assert greedy_tokens(engine, prompts, 6, images) == alone
    chunked = build_tiny_engine(checkpoint, max_num_batched_tokens=12, enable_prefix_caching=False)
    calls = []
    original = chunked.model.model.encode_images
    chunked.model.model.encode_images = lambda pixels: calls.append(pixels.shape[0]) or original(pixels)
    assert greedy_tokens(chunked, prompts, 6, images) == alone
    patches = CONFIG["vision_config"]["image_size"] // CONFIG["vision_config"]["patch_size"]
    assert sum(calls) == sum(len(ims) for ims in images) * patches**2
    assert chunked.kv_cache.pool.num_in_use == 0


def test_prefix_cache_tells_images_apart(checkpoint):
    """The same prompt again reuses its pages, image included, and gives the same tokens;
    another image after the same text shares only the pages before it."""
    from max.pipelines.lib import SamplingParams

    engine = build_tiny_engine(checkpoint)
    params = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    text = [1, 15, 300, 7, 8, 9, 10, 11]

    def run(rid, seed):
        ids, images = prompt(text, seed, [7, 2048, 17])
        engine.add_request(rid, ids, params, images=images)
        cached, tokens = 0, []
        while engine.has_unfinished():
            for out in engine.step():
                cached = max(cached, out.num_cached_tokens)
                tokens += out.new_token_ids
        return cached, tokens

    before_image = len(text) + 1  # pages up to the image's first token may match
    cached_a, tokens_a = run("a", 10)
    cached_b, tokens_b = run("b", 11)
    cached_c, tokens_c = run("c", 10)
    assert cached_a == 0 and cached_b <= before_image < cached_c
    assert tokens_c == tokens_a
    ids_b, images_b = prompt(text, 11, [7, 2048, 17])
    assert tokens_b == greedy_tokens(build_tiny_engine(checkpoint), [ids_b], 4, [images_b])[0]


def _renamed_copy(checkpoint, target, rename):
    """The checkpoint with every tensor renamed by `rename` (another writer's layout)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, target)
    tensors = load_file(str(checkpoint / "model.safetensors"))
    save_file({rename(k): v for k, v in tensors.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def _published(name: str) -> str:
    """transformers 5's names -> the published checkpoints' (`vision_tower.vision_model.*`)."""
    return name.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _transformers_4(name: str) -> str:
    """transformers 5's names -> transformers 4.5x's (`model.language_model.*`, ...)."""
    if name.startswith("language_model.model."):
        return "model.language_model." + name.removeprefix("language_model.model.")
    return "model." + _published(name)


@pytest.mark.parametrize("rename", [_published, _transformers_4])
def test_every_checkpoint_layout_loads(checkpoint, tmp_path, rename):
    ids, images = ONE_IMAGE
    expected = prompt_logits(build_tiny_engine(checkpoint), ids, images)
    other = _renamed_copy(checkpoint, tmp_path / "other", rename)
    torch.testing.assert_close(prompt_logits(build_tiny_engine(other), ids, images), expected, rtol=0, atol=0)


def test_bad_images_are_refused(checkpoint):
    from max.pipelines.lib import SamplingParams

    ids, images = TWO_IMAGES
    params = SamplingParams(max_new_tokens=2)
    image = images[0]
    wrong_size = ImageInput.create(image.pixel_values[:16], (1, 4, 4), image.offset, image.num_tokens)
    wrong_count = ImageInput.create(image.pixel_values, image.grid_thw, image.offset, image.num_tokens - 1)
    for bad in ([wrong_size, images[1]], [wrong_count, images[1]], images[:1]):
        with pytest.raises(MaxError):
            build_tiny_engine(checkpoint).add_request("bad", ids, params, images=bad)
    small_budget = build_tiny_engine(checkpoint, max_num_batched_tokens=8)
    with pytest.raises(MaxError, match="budget"):
        small_budget.add_request("big", ids, params, images=images)


def test_tensor_parallel_ranks_see_the_key_limits(checkpoint):
    """Two ranks over gloo: rank 0 encodes the images; the embeddings and each token's last
    visible key reach the other rank with the step, so tokens and logits match one process."""
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, build_engine, resolve_model

    results = []
    for tp in (1, 2):
        config = PipelineConfig(model_path=str(checkpoint), kv_cache_page_size=16, max_length=128, tensor_parallel_size=tp)
        engine = build_engine(resolve_model(config, register_all()))
        try:
            prompts, images = [ids for ids, _ in MULTIMODAL[:2]], [ims for _, ims in MULTIMODAL[:2]]
            results.append((greedy_tokens(engine, prompts, 4, images), prompt_logits(engine, *TWO_IMAGES)))
        finally:
            engine.close()
    (tokens, logits), (tp_tokens, tp_logits) = results
    assert tp_tokens == tokens
    torch.testing.assert_close(tp_logits, logits, rtol=0, atol=1e-5)


@pytest.mark.skipif(not (interpreting() or torch.cuda.is_available()), reason="needs TRITON_INTERPRET=1 or a GPU")
def test_triton_kernels_give_the_reference_tokens_with_images(checkpoint):
    """The GPU's code path (Triton kernels; the interpreter on a CPU): the prefill kernel
    reads how far each image token sees, and the tokens equal the torch reference's."""
    import max_kernels

    prompts, images = [ids for ids, _ in MULTIMODAL], [ims for _, ims in MULTIMODAL]
    expected = greedy_tokens(build_tiny_engine(checkpoint), prompts, 4, images)
    engine = build_tiny_engine(checkpoint, kv_cache_page_size=16, max_num_batched_tokens=24)
    with max_kernels.backend("triton"):
        assert greedy_tokens(engine, prompts, 4, images) == expected
