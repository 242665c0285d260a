"""The chartqa workflow end to end on the tiny Qwen2.5-VL: the local ChartQA-shaped task,
lm-eval's `local-chat-completions` against `serve` (images as base64 PNG `image_url` parts,
as lm-eval sends them), scores read back from lm-eval's results, and every answer equal to
the server's answer to the same request made with the official `openai` client, whose
log-probabilities change when the chart is swapped for noise: the images reach the model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
from PIL import Image

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chartqa_local

MODEL = "tiny-vl"
MAX_TOKENS = 8


def _with_image(messages: list[dict], image: Image.Image) -> list[dict]:
    """The chat as lm-eval sends it: the image as a base64 PNG part before the text."""
    from lm_eval.models.api_models import create_image_prompt

    return create_image_prompt([image], json.loads(json.dumps(messages)))


def test_chartqa_local_through_lm_eval(tmp_path):
    task = chartqa_local.write_task(tmp_path / "task", num_charts=8, max_gen_toks=MAX_TOKENS)
    model = write_tiny_checkpoint(tmp_path / "model", TINY_CONFIGS["qwen2_5_vl"], seed=3, with_tokenizer=True)
    args = ("--model-path", str(model), "--served-model-name", MODEL, "--max-length", "512", "--quantization-encoding", "float32")
    with ServerProcess(*args) as srv:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf-home"),  # datasets caches the JSONL it reads
        }
        out = tmp_path / "results"
        result = subprocess.run(
            [
                sys.executable, "-m", "lm_eval",
                "--model", "local-chat-completions",
                "--model_args", f"model={MODEL},base_url={srv.url}/v1/chat/completions,num_concurrent=8,max_retries=1",
                "--tasks", chartqa_local.TASK,
                "--include_path", str(task),
                "--apply_chat_template",
                "--seed", "1234",
                "--gen_kwargs", "temperature=0",
                "--log_samples",
                "--output_path", str(out),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        scores = json.loads(next(out.rglob("results_*.json")).read_text())["results"][chartqa_local.TASK]
        assert 0.0 <= scores["relaxed_accuracy,none"] <= 1.0 and "exact_match,none" in scores
        samples = [json.loads(line) for line in next(out.rglob(f"samples_{chartqa_local.TASK}_*.jsonl")).read_text().splitlines()]
        assert len(samples) == 8

        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)

        def answer(messages):
            reply = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0, logprobs=True
            )
            choice = reply.choices[0]
            return choice.message.content, [t.logprob for t in choice.logprobs.content]

        for i, sample in enumerate(samples):
            messages = json.loads(sample["arguments"]["gen_args_0"]["arg_0"][0])
            chart = Image.open(task / sample["doc"]["image"]).convert("RGB")
            text, logprobs = answer(_with_image(messages, chart))
            assert text == sample["resps"][0][0]
            # The same request with noise for the chart: the tiny random model's greedy text
            # rarely changes, its log-probabilities do.
            noise = Image.fromarray(np.random.default_rng(i).integers(0, 256, (chart.height, chart.width, 3), dtype=np.uint8))
            assert answer(_with_image(messages, noise))[1] != logprobs
        assert srv.metric("max_serve_kv_cache_pages_in_use") == 0


def test_task_files(tmp_path):
    """Questions carry one answer each, images exist, and lm-eval's YAML names them."""
    task = chartqa_local.write_task(tmp_path, num_charts=6, seed=1)
    docs = [json.loads(line) for line in (task / "chartqa_local.jsonl").read_text().splitlines()]
    assert len(docs) == 6 and {d["type"] for d in docs} == {"bar", "line"}
    for doc in docs:
        assert len(doc["label"]) == 1 and (task / doc["image"]).is_file()
        assert Image.open(task / doc["image"]).size == (448, 336)
    yaml = (task / "chartqa_local.yaml").read_text()
    assert "relaxed_accuracy" in yaml and str(task / "chartqa_local.jsonl") in yaml
