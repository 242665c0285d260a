"""lm-eval's `local-chat-completions` model against the server, as the MAX docs run it
(`--apply_chat_template`, `num_concurrent`, `--seed`, `--gen_kwargs temperature=0`), on a
generation task defined here in a local YAML + JSONL (no dataset download)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import openai

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

MODEL = "tiny-llama"
QUESTIONS = [f"Question {i}: what comes after {i}?" for i in range(24)]


def _write_task(directory: Path) -> None:
    data = directory / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in QUESTIONS))
    (directory / "tiny_gen.yaml").write_text(
        f"""task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<|im_end|>"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    )


def test_lm_eval_local_chat_completions(tmp_path):
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    _write_task(task_dir)
    path = write_tiny_checkpoint(tmp_path / "m", llama_config(), seed=4, with_tokenizer=True)
    with ServerProcess("--model-path", str(path), "--served-model-name", MODEL, "--max-length", "256") as srv:
        out_dir = tmp_path / "results"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            # datasets caches the JSON it reads; the home directory may be read-only.
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        result = subprocess.run(
            [
                sys.executable, "-m", "lm_eval",
                "--model", "local-chat-completions",
                "--model_args", f"model={MODEL},base_url={srv.url}/v1/chat/completions,num_concurrent=16,max_retries=1",
                "--tasks", "tiny_gen",
                "--include_path", str(task_dir),
                "--apply_chat_template",
                "--seed", "1234",
                "--gen_kwargs", "temperature=0",
                "--log_samples",
                "--output_path", str(out_dir),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        samples_file = next(out_dir.rglob("samples_tiny_gen_*.jsonl"))
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        assert len(samples) == len(QUESTIONS)
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        for sample in samples:
            question = sample["doc"]["question"]
            expected = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": question}],
                max_tokens=12,
                temperature=0,
                stop=["<|im_end|>"],
            )
            assert sample["resps"][0][0] == expected.choices[0].message.content, question
        assert srv.metric("max_serve_kv_cache_pages_in_use") == 0
