"""A hung engine step through the real `serve`: the watchdog ends the engine process after
`--engine-step-timeout`, the request in flight gets an error, the supervisor restarts the
engine, and the next request is served; `--step-stats-dir` writes the step record.

The model is a tiny Llama served by a test architecture (--custom-architectures) whose
forward pass hangs when the step holds a chosen token id.
"""

import json
import time

import httpx

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

HANG_TOKEN = 4242

HANGING_LLAMA = f'''
"""LlamaForCausalLM whose forward pass never returns once it sees token {HANG_TOKEN}."""
import dataclasses
import time

from max.pipelines.architectures.llama3 import llama3_arch
from max.pipelines.architectures.llama3.model import Llama3Model


class HangingLlama(Llama3Model):
    def execute(self, inputs):
        if ({HANG_TOKEN} == inputs.tokens).any():
            time.sleep(3600)
        return super().execute(inputs)


ARCHITECTURES = [dataclasses.replace(llama3_arch, pipeline_model=HangingLlama)]
'''


def _complete(url: str, prompt: list[int]) -> httpx.Response:
    body = {"model": "m", "prompt": prompt, "max_tokens": 3, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def test_a_hung_step_fails_its_request_and_the_engine_restarts(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", llama_config(num_hidden_layers=1), seed=2)
    (tmp_path / "hanging_llama.py").write_text(HANGING_LLAMA)
    steps = tmp_path / "steps"
    with ServerProcess(
        "--model-path", str(path), "--custom-architectures", str(tmp_path / "hanging_llama.py"),
        "--served-model-name", "m", "--max-length", "64", "--skip-tokenizer-init",
        "--engine-step-timeout", "5", "--engine-restart-backoff", "0.1", "--step-stats-dir", str(steps),
    ) as srv:  # fmt: skip
        assert _complete(srv.url, [1, 2, 3]).status_code == 200
        hung = _complete(srv.url, [1, HANG_TOKEN, 3])
        assert hung.status_code >= 500, hung.text
        assert "no progress" in hung.text or "engine" in hung.json()["error"]["message"]
        restarted = _complete(srv.url, [1, 2, 3])
        deadline = time.monotonic() + 180
        while restarted.status_code != 200 and time.monotonic() < deadline:
            # The restart loads the model anew; meanwhile requests get 503.
            assert restarted.status_code == 503, restarted.text
            time.sleep(1)
            restarted = _complete(srv.url, [1, 2, 3])
        assert restarted.status_code == 200, restarted.text
        assert srv.metric("max_serve_engine_restarts_total") == 1
    # The first engine was ended by the watchdog (no record); the second one wrote its steps.
    (record,) = steps.glob("steps-*.json")
    summary = json.loads(record.read_text())
    assert summary["steps"] >= 2 and summary["arrivals"] and summary["finished"]
