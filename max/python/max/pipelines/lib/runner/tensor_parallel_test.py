"""Tensor parallelism on the CPU over gloo: every architecture's logits and greedy tokens
with 2 (and 4) ranks equal the single-process ones; the torchrun environment spans "hosts";
a dead rank is a clear error, never a hang; too many ranks for the GPUs are refused."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from max.errors import EngineDeadError, MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400]]


def _engine(path, tp: int, **overrides):
    settings = dict(model_path=str(path), kv_cache_page_size=16, max_length=128, tensor_parallel_size=tp)
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def _outputs(path, tp: int):
    engine = _engine(path, tp)
    try:
        return greedy_tokens(engine, PROMPTS, 8), prompt_logits(engine, PROMPTS[1])
    finally:
        engine.close()


# DeepSeek-V2's latent attention is not sharded yet: it refuses tensor parallelism at
# start-up (tested below).
NO_TENSOR_PARALLEL = {"deepseek_v2": "DeepseekV2ForCausalLM"}
TEXT_CONFIGS = sorted(
    name for name, config in TINY_CONFIGS.items() if "vision_config" not in config and name not in NO_TENSOR_PARALLEL
)


@pytest.mark.parametrize(
    "name,tp",
    [(name, 2) for name in TEXT_CONFIGS] + [("llama3", 4), ("qwen3_moe", 4), ("olmo2", 4)],
)
def test_sharded_model_gives_the_single_process_logits(name, tp, tmp_path):
    # tp=4 with 2 KV heads: each KV head is replicated on two ranks (for OLMo 2's k norm, a
    # replicated head's squares are summed twice and must still give the row's mean).
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS[name], seed=3)
    tokens, logits = _outputs(path, 1)
    tp_tokens, tp_logits = _outputs(path, tp)
    assert tp_tokens == tokens
    torch.testing.assert_close(tp_logits, logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NO_TENSOR_PARALLEL))
def test_architectures_without_tensor_parallelism_refuse_it(name, tmp_path):
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS[name], seed=3)
    with pytest.raises(MaxError, match=f"architecture {NO_TENSOR_PARALLEL[name]} does not support tensor parallelism"):
        _outputs(path, 2)


def test_vision_language_model_with_images_gives_the_single_process_logits(tmp_path):
    """Rank 0 runs the vision encoder; the step's image embeddings and M-RoPE positions go
    to the other ranks with the rest of its inputs."""
    from max.testing.vl_prompts import MULTIMODAL

    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS["qwen2_5_vl"], seed=3)
    results = []
    for tp in (1, 2):
        engine = _engine(path, tp, max_length=256)
        try:
            prompts, images = [ids for ids, _ in MULTIMODAL], [imgs for _, imgs in MULTIMODAL]
            results.append((greedy_tokens(engine, prompts, 8, images), prompt_logits(engine, *MULTIMODAL[1])))
        finally:
            engine.close()
    (tokens, logits), (tp_tokens, tp_logits) = results
    assert tp_tokens == tokens
    torch.testing.assert_close(tp_logits, logits, rtol=0, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_from_the_torchrun_environment(tmp_path):
    """Two processes started as torchrun starts them on two hosts (here: one machine)."""
    path = write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["llama3"], seed=3)
    command = [
        sys.executable, "-m", "max.entrypoints.pipelines", "generate", "--model-path", str(path),
        "--skip-tokenizer-init", "--prompt-token-ids", "1", "50", "60", "70", "--max-new-tokens", "6",
        "--ignore-eos", "--max-length", "128", "--kv-cache-page-size", "16",
    ]  # fmt: skip
    single = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    port = str(_free_port())
    procs = []
    for rank in (1, 0):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0")
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    rank0_out = results[1][0]
    assert rank0_out.split() == single.stdout.split() and len(rank0_out.split()) == 6


def test_a_dead_rank_is_a_clear_error(tmp_path):
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS["llama3"], seed=3)
    engine = _engine(path, 2)
    try:
        engine.add_request("a", PROMPTS[0], SamplingParams(max_new_tokens=20, temperature=0.0))
        engine.step()
        (worker,) = engine.runner.group.workers
        worker.kill()
        worker.join(10)
        with pytest.raises(EngineDeadError, match="tensor-parallel rank 1 exited"):
            for _ in range(5):
                engine.step()
    finally:
        engine.close()


def test_more_ranks_than_gpus_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(MaxError, match=r"4 ranks \(4 tensor-parallel x 1 data-parallel\) need 4 GPUs; --devices gpu:0,1 lists 2"):
        PipelineConfig(devices="gpu:0,1", tensor_parallel_size=4).validate()
    with pytest.raises(MaxError, match="only 2 are present"):
        PipelineConfig(devices="gpu", tensor_parallel_size=2, data_parallel_size=2).validate()
    config = PipelineConfig(devices="gpu:0,1")
    assert config.tp_size == 2 and [d.index for d in config.rank_devices()] == [0, 1]
    replicas = PipelineConfig(devices="gpu", tensor_parallel_size=1, data_parallel_size=2)
    assert [replicas.replica(i).devices for i in range(2)] == ["gpu:0", "gpu:1"]


def test_a_ranks_config_names_its_own_gpu_and_passes_the_group_check(monkeypatch):
    # Found on two H200s: rank 1's config said "gpu:1" with 2 ranks, which reads as two GPUs
    # from gpu:1 and was refused on a machine of two.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for spec in ("gpu", "gpu:0,1"):
        group = PipelineConfig(devices=spec, tensor_parallel_size=2)
        ranks = [group.for_rank(r) for r in range(2)]
        for rank in ranks:
            rank.validate()
        assert [r.device.index for r in ranks] == [0, 1]
        assert all(r.rank_devices() == group.rank_devices() for r in ranks)


def test_fp8_shards_quantize_per_rank_and_follow_the_single_process(tmp_path):
    """Under `--quantization fp8` each rank quantizes its own shard (row-parallel layers: per
    channel over its slice of the input features), so the ranks' sum is close to, not equal
    to, the single process's FP8 result."""
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS["llama3"], seed=3)
    logits = {}
    for tp in (1, 2):
        engine = _engine(path, tp, quantization="fp8")
        try:
            logits[tp] = prompt_logits(engine, PROMPTS[1])
        finally:
            engine.close()
    cos = torch.nn.functional.cosine_similarity(logits[1].flatten(), logits[2].flatten(), dim=0).item()
    assert cos > 0.995
    # ... and the ranks did run FP8: their logits are not the float model's.
    float_logits = _outputs(path, 2)[1]
    assert (logits[2] - float_logits).abs().max() > 1e-3
