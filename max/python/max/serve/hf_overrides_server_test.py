"""`serve --hf-overrides` end to end: the override reaches the engine worker process.

The tiny sentence-transformers model's config.json has no Matryoshka fields; with
`--hf-overrides '{"matryoshka_dimensions": [16]}'` the server accepts `dimensions: 16` on
/v1/embeddings and answers 16 renormalized values of the full vector. The engine process
(spawned, resolving the model again from the pickled `PipelineConfig`) refuses `dimensions`
on a model without them, so the answer proves the worker applied the override too. Bad
JSON and a non-object are usage errors naming the flag, before any process starts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from max.testing.server_process import ServerProcess
from max.testing.tiny_embedding_model import write_embedding_model

TEXTS = ["hello world", "Paged attention keeps the KV cache in fixed-size pages."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_embedding_model(tmp_path_factory.mktemp("emb") / "st", "mean")


def _embed(url: str, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"model": "emb", "input": TEXTS, **extra}, timeout=120)


def test_override_reaches_the_engine_worker(model_dir):
    with ServerProcess("--model-path", str(model_dir), "--served-model-name", "emb", "--max-length", "64",
                       "--quantization-encoding", "float32", "--kv-cache-page-size", "4",
                       "--hf-overrides", '{"matryoshka_dimensions": [16]}') as srv:  # fmt: skip
        assert srv.engine_pids()  # the engine runs in a process of its own
        full = _embed(srv.url)
        assert full.status_code == 200, full.text
        vectors = np.array([d["embedding"] for d in full.json()["data"]])
        short = _embed(srv.url, dimensions=16)
        assert short.status_code == 200, short.text
        got = np.array([d["embedding"] for d in short.json()["data"]])
        expected = vectors[:, :16] / np.linalg.norm(vectors[:, :16], axis=1, keepdims=True)
        assert got.shape == (2, 16)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        refused = _embed(srv.url, dimensions=8)  # not a size the overrides list
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize(
    "text, message",
    [("{matryoshka_dimensions: [16]}", "not valid JSON"), ("[16]", "expected a JSON object")],
)
def test_bad_overrides_are_a_usage_error(model_dir, text, message):
    done = subprocess.run(
        [sys.executable, "-m", "max.entrypoints.pipelines", "serve", "--model-path", str(model_dir),
         "--hf-overrides", text],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"error: --hf-overrides: {message}" in done.stderr
