"""POST /v1/embeddings through a real `serve`, with the official `openai` client.

The model is a tiny random qwen3 checkpoint saved by sentence-transformers (mean pooling,
normalized); `--task auto` finds its Pooling module. The vectors must equal
`SentenceTransformer.encode`'s (float32, 1e-5), as floats and as base64; bad input gets
OpenAI's 400 body; the generation routes answer 400 on this server, and the embeddings
route answers 400 on a generation server.
"""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from max.testing.server_process import ServerProcess
from max.testing.tiny_embedding_model import write_embedding_model

TEXTS = ["hello world", "Paged attention keeps the KV cache in fixed-size pages.", "x"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_embedding_model(tmp_path_factory.mktemp("emb") / "st", "mean")


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerProcess("--model-path", str(model_dir), "--served-model-name", "emb", "--max-length", "64",
                       "--quantization-encoding", "float32",
                       "--kv-cache-page-size", "4", "--max-num-batched-tokens", "16") as srv:  # fmt: skip
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_client_matches_sentence_transformers(client, model_dir):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True)
    floats = client.embeddings.create(model="emb", input=TEXTS, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2]
    got = np.array([d.embedding for d in floats.data])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    prompt_tokens = sum(len(reference.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == prompt_tokens
    # base64: little-endian float32 bytes. The client asks for it by default and decodes it
    # itself; asked for explicitly, it hands the strings over.
    default = client.embeddings.create(model="emb", input=TEXTS)
    # (Each call batches the inputs anew: float32 sums may round differently, by ~1e-7.)
    np.testing.assert_allclose(
        np.array([d.embedding for d in default.data]), got, rtol=0, atol=1e-6
    )
    packed = client.embeddings.create(model="emb", input=TEXTS, encoding_format="base64")
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in packed.data]
    )
    np.testing.assert_allclose(decoded, got, rtol=0, atol=1e-6)
    # A single string, and token ids (one list, and a list of lists).
    one = client.embeddings.create(model="emb", input=TEXTS[1])
    np.testing.assert_allclose(one.data[0].embedding, expected[1], atol=1e-5)
    ids = [reference.tokenizer(t)["input_ids"] for t in TEXTS]
    by_ids = client.embeddings.create(model="emb", input=ids)
    np.testing.assert_allclose(np.array([d.embedding for d in by_ids.data]), expected, atol=1e-5)
    single_ids = client.embeddings.create(model="emb", input=ids[1])
    np.testing.assert_allclose(single_ids.data[0].embedding, expected[1], atol=1e-5)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [[1, 2], []]}, "input[1]"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [True, 2]}, "input"),
        ({"input": 5}, "input"),
        ({}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 8}, "dimensions"),  # not a Matryoshka model
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": [[1, 10**9]]}, "input"),
        ({"input": "word " * 200}, "input"),  # longer than --max-length 64
        ({"input": "a", "model": "other"}, "model"),
    ],
)
def test_bad_input_is_a_400(server, body, param):
    import httpx

    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": "emb", **body}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error", error
    # A wrong type inside a list is named by its item (e.g. `input[0]`).
    assert error["param"] == param or (param == "input" and error["param"].startswith("input[")), (
        error
    )
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_generation_routes_refused_and_openapi(server, client):
    import httpx

    with pytest.raises(openai.BadRequestError, match="does not support the Chat Completions API"):
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not support the Completions API"):
        client.completions.create(model="emb", prompt="hi")
    from openapi_spec_validator import validate

    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    validate(schema)
    assert "/v1/embeddings" in schema["paths"]
    assert {"EmbeddingRequest", "EmbeddingResponse"} <= set(schema["components"]["schemas"])


def test_generation_server_refuses_embeddings():
    from max.serve.api_server import ServerState, create_app
    from max.testing.app_server import AppServer
    from max.testing.fake_engine import FakeEngine

    state = ServerState(
        tokenizer=None, engine=FakeEngine(), served_model_name="gen", max_seq_len=64, vocab_size=100
    )
    with AppServer(create_app(state)) as srv:
        client = openai.OpenAI(
            base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60
        )
        with pytest.raises(openai.BadRequestError, match="does not support the Embeddings API"):
            client.embeddings.create(model="gen", input="hi")
        # Its generation routes are open.
        assert (
            client.completions.create(model="gen", prompt=[1, 2], max_tokens=3)
            .choices[0]
            .finish_reason
        )
