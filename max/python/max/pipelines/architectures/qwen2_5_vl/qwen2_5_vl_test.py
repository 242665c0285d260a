"""Qwen2.5-VL against transformers' Qwen2_5_VLForConditionalGeneration, float32, on a tiny
random checkpoint: text-only prompts, one image, several images of different sizes (windows
that do not tile the image evenly), chunked prefill that cuts images, and prefix caching
keyed by image content."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from max.pipelines.lib import SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.parity import PROMPTS, build_tiny_engine, greedy_by_full_forwards
from max.testing.tiny_checkpoints import reference_class, write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.vl_prompts import IMAGE, MULTIMODAL, ONE_IMAGE, prompt

CONFIG = TINY_CONFIGS["qwen2_5_vl"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("qwen2_5_vl"), CONFIG, seed=3)


@pytest.fixture(scope="module")
def reference(checkpoint):
    cls = reference_class(CONFIG["architectures"][0])
    return cls.from_pretrained(str(checkpoint), dtype=torch.float32).eval()


def hf_logits(model, ids: list[int], images: list[ImageInput]) -> torch.Tensor:
    """transformers' logits [len(ids), vocab] of a prompt with its images."""
    input_ids = torch.tensor([ids])
    kwargs = {"mm_token_type_ids": (input_ids == IMAGE).int()}
    if images:
        kwargs["pixel_values"] = torch.from_numpy(np.concatenate([im.pixel_values for im in images]))
        kwargs["image_grid_thw"] = torch.tensor([im.grid_thw for im in images])
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits[0]


def hf_greedy(model, ids: list[int], images: list[ImageInput], steps: int) -> list[int]:
    """transformers' greedy continuation, each step a full forward (positions recomputed)."""
    return greedy_by_full_forwards(lambda seq: hf_logits(model, seq, images), ids, steps)


def test_text_prompts_match_transformers(checkpoint, reference):
    engine = build_tiny_engine(checkpoint)
    for ids in PROMPTS:
        torch.testing.assert_close(prompt_logits(engine, ids), hf_logits(reference, list(ids), []), rtol=1e-5, atol=1e-5)
    assert greedy_tokens(engine, PROMPTS[:2], 8) == [hf_greedy(reference, list(p), [], 8) for p in PROMPTS[:2]]


@pytest.mark.parametrize("case", range(len(MULTIMODAL)))
def test_images_match_transformers(checkpoint, reference, case):
    ids, images = MULTIMODAL[case]
    engine = build_tiny_engine(checkpoint)
    expected = hf_logits(reference, ids, images)
    torch.testing.assert_close(prompt_logits(engine, ids, images), expected, rtol=1e-5, atol=1e-5)
    assert greedy_tokens(engine, [ids], 8, [images]) == [hf_greedy(reference, ids, images, 8)]
    assert engine.kv_cache.pool.num_in_use == 0


def test_batched_and_chunked_prefill_give_the_same_tokens(checkpoint):
    """Alone, batched, and in chunks of 7 tokens (which cut every image in parts): the same
    greedy tokens, and each image encoded once per request."""
    prompts = [ids for ids, _ in MULTIMODAL] + [PROMPTS[1]]
    images = [ims for _, ims in MULTIMODAL] + [[]]
    engine = build_tiny_engine(checkpoint)
    alone = [greedy_tokens(engine, [p], 6, [ims])[0] for p, ims in zip(prompts, images)]
    assert greedy_tokens(engine, prompts, 6, images) == alone
    chunked = build_tiny_engine(checkpoint, max_num_batched_tokens=7, enable_prefix_caching=False)
    calls = []
    visual = chunked.model.model.visual
    original = visual.forward
    visual.forward = lambda pixels, grids: calls.append(len(grids)) or original(pixels, grids)
    assert greedy_tokens(chunked, prompts, 6, images) == alone
    assert sum(calls) == sum(len(ims) for ims in images)
    assert chunked.kv_cache.pool.num_in_use == 0


def test_prefix_cache_tells_images_apart(checkpoint):
    """Same text, other image: no page is shared past the image; same image: pages are."""
    engine = build_tiny_engine(checkpoint)
    params = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    text = [1, 15, 300, 7, 8, 9, 10, 11]

    def run(rid, seed):
        ids, images = prompt(text, ((1, 8, 8), seed), [7, 2048, 17])
        engine.add_request(rid, ids, params, images=images)
        cached, tokens = 0, []
        while engine.has_unfinished():
            for out in engine.step():
                cached = max(cached, out.num_cached_tokens)
                tokens += out.new_token_ids
        return cached, tokens, len(text) + 1  # pages up to the image's first token may match

    cached_a, tokens_a, before_image = run("a", seed=10)
    cached_b, tokens_b, _ = run("b", seed=11)
    cached_c, tokens_c, _ = run("c", seed=10)
    assert cached_a == 0
    assert cached_b <= before_image  # only the text before the image
    assert cached_c > before_image  # the image's pages too
    assert tokens_c == tokens_a
    ids_b, images_b = prompt(text, ((1, 8, 8), 11), [7, 2048, 17])
    assert tokens_b == greedy_tokens(build_tiny_engine(checkpoint), [ids_b], 4, [images_b])[0]


def test_bad_images_are_refused(checkpoint):
    engine = build_tiny_engine(checkpoint)
    ids, images = ONE_IMAGE
    params = SamplingParams(max_new_tokens=2)
    from max.errors import MaxError

    wrong_grid = ImageInput.create(images[0].pixel_values, (1, 4, 4), images[0].offset, images[0].num_tokens)
    off_tokens = ImageInput.create(images[0].pixel_values, images[0].grid_thw, 0, images[0].num_tokens)
    for bad in (wrong_grid, off_tokens):
        with pytest.raises(MaxError):
            engine.add_request("bad", ids, params, images=[bad])
    assert not engine.has_unfinished()
