"""`--kv-cache-dtype fp8` on the CPU (the float32 emulation the GPU is checked against): the
cache holds 2x (16-bit) or 4x (float32) the pages in the same memory, generation follows
the float32-KV engine closely, prefix caching, chunked prefill, the Triton kernels (under
Triton's interpreter) and tensor parallelism work on it, and the flag is validated.

Measured on the tiny random Llama (seed 11), teacher-forced along the float32-KV engine's
greedy continuations of 4 prompts (160 positions): 156 next-token argmaxes agree (97.5 %),
cosine similarity of the logits >= 0.9997, largest logit difference 0.02. The random
model's top-2 margins are tiny (median ~0.03), so free-running greedy sequences part after
3 to 21 tokens; only their first tokens are asserted.
"""

import pytest
import torch

import max_kernels
from max.entrypoints.cli_args import add_model_args, pipeline_config_from_args
from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

PROMPTS = [[1, 50, 60, 70, 80], [1] + list(range(300, 330)), [1, 2, 3], [1, 7, 99, 1000, 5]]
KV_MEMORY = 2**20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=11)


def _engine(path, **overrides):
    settings = dict(
        model_path=str(path),
        quantization_encoding="float32",
        kv_cache_page_size=4,
        max_length=128,
        kv_cache_memory=KV_MEMORY,
    )
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


@pytest.fixture(scope="module")
def float32_kv(checkpoint):
    return _engine(checkpoint)


@pytest.fixture(scope="module")
def fp8_kv(checkpoint):
    return _engine(checkpoint, kv_cache_dtype="fp8")


def test_fp8_cache_holds_twice_16_bit_and_four_times_float32_pages(checkpoint, float32_kv, fp8_kv):
    bf16_kv = _engine(checkpoint, quantization_encoding="bfloat16")
    fp8_bf16 = _engine(checkpoint, quantization_encoding="bfloat16", kv_cache_dtype="fp8_e4m3")
    assert fp8_kv.kv_cache.keys[0].dtype == torch.float8_e4m3fn
    assert fp8_bf16.kv_cache.keys[0].dtype == torch.float8_e4m3fn
    assert float32_kv.kv_cache.params.bytes_per_page == 4 * fp8_kv.kv_cache.params.bytes_per_page
    assert bf16_kv.kv_cache.params.bytes_per_page == 2 * fp8_bf16.kv_cache.params.bytes_per_page
    # The same budget: pages = budget // bytes_per_page (floors aside, 4x and 2x).
    assert fp8_kv.kv_cache.num_pages == KV_MEMORY // fp8_kv.kv_cache.params.bytes_per_page
    assert fp8_kv.kv_cache.num_pages >= 4 * float32_kv.kv_cache.num_pages
    assert fp8_bf16.kv_cache.num_pages >= 2 * bf16_kv.kv_cache.num_pages
    # bfloat16 compute over an FP8 cache runs.
    assert len(greedy_tokens(fp8_bf16, PROMPTS[:2], 3)[1]) == 3


def test_fp8_cache_follows_the_float32_cache(float32_kv, fp8_kv):
    reference = greedy_tokens(float32_kv, PROMPTS, 40)
    agree = total = 0
    for prompt, continuation in zip(PROMPTS, reference):
        ids = prompt + continuation
        exact = prompt_logits(float32_kv, ids)[len(prompt) - 1 : -1]
        fp8 = prompt_logits(fp8_kv, ids)[len(prompt) - 1 : -1]
        assert torch.nn.functional.cosine_similarity(exact, fp8, dim=-1).min() > 0.999
        agree += int((exact.argmax(-1) == fp8.argmax(-1)).sum())
        total += exact.shape[0]
    assert agree >= 0.9 * total, f"{agree} of {total} positions agree"
    generated = greedy_tokens(fp8_kv, PROMPTS, 4)
    assert [g[0] for g in generated] == [r[0] for r in reference]
    assert fp8_kv.kv_cache.pool.num_in_use == 0


def test_prefix_cache_hits_and_chunked_prefill_give_the_same_tokens(checkpoint, fp8_kv):
    shared = [1] + list(range(300, 325))
    prompts = [shared + [7, 8], shared + [9], PROMPTS[1]]
    cold = [
        greedy_tokens(
            _engine(checkpoint, kv_cache_dtype="fp8", enable_prefix_caching=False), [p], 8
        )[0]
        for p in prompts
    ]
    warm = [greedy_tokens(fp8_kv, [p], 8)[0] for p in prompts]  # prompts 2 and 3 hit
    assert fp8_kv.kv_cache.pool.num_cached > 0
    assert warm == cold
    chunked = _engine(checkpoint, kv_cache_dtype="fp8", max_num_batched_tokens=5, max_batch_size=2)
    assert greedy_tokens(chunked, prompts, 8) == cold


def test_triton_kernels_on_an_fp8_cache_give_the_reference_tokens(checkpoint):
    """The GPU's code path (rope+write, decode and prefill kernels on e4m3 codes), through
    Triton's interpreter, against the torch references."""
    params = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)

    def run(kernels: str) -> list[list[int]]:
        # 12 tokens a step: the 31-token prompt is prefilled in chunks beside decodes.
        engine = _engine(
            checkpoint, kv_cache_dtype="fp8", kv_cache_page_size=16, max_num_batched_tokens=12
        )
        engine.async_scheduling = kernels == "triton"
        out = {str(i): [] for i in range(3)}
        with max_kernels.backend(kernels):
            for i, prompt in enumerate(PROMPTS[:3]):
                engine.add_request(str(i), prompt, params)
            while engine.has_unfinished():
                for o in engine.step():
                    out[o.request_id].extend(o.new_token_ids)
        return list(out.values())

    assert run("triton") == run("torch")


def test_tensor_parallel_ranks_share_the_fp8_cache_s_tokens(checkpoint, fp8_kv):
    """2 CPU ranks over gloo, each caching its KV head in e4m3."""
    engine = _engine(checkpoint, kv_cache_dtype="fp8", tensor_parallel_size=2)
    try:
        assert engine.kv_cache.keys[0].dtype == torch.float8_e4m3fn
        assert engine.kv_cache.params.num_kv_heads == 1
        assert greedy_tokens(engine, PROMPTS[:3], 6) == greedy_tokens(fp8_kv, PROMPTS[:3], 6)
    finally:
        engine.close()


def test_the_flag_reaches_the_config_and_bad_values_are_refused(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    config = pipeline_config_from_args(
        parser.parse_args(["--model-path", "m", "--kv-cache-dtype", "fp8"])
    )
    assert config.kv_cache_dtype == "fp8"
    assert (
        pipeline_config_from_args(parser.parse_args(["--model-path", "m"])).kv_cache_dtype == "auto"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-path", "m", "--kv-cache-dtype", "int8"])
    assert "--kv-cache-dtype" in capsys.readouterr().err
    with pytest.raises(MaxError, match="unknown KV cache dtype"):
        PipelineConfig(model_path="m", kv_cache_dtype="fp8_e5m2").validate()
