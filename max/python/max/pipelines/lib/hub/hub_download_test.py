"""Models from the Hugging Face Hub, against a local stand-in of its HTTP API (no network):
first use downloads into a temporary cache, later uses are served from it (Hub stopped,
or HF_HUB_OFFLINE=1), revisions pin files, gated and missing repos say what to do, and an
interrupted download resumes or fails without leaving a usable-looking broken copy."""

import hashlib
import json
import re
import socket
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from max.errors import MaxError
from max.pipelines.lib.hub.model_source import resolve_model_source, resolve_tokenizer_source
from max.testing.hub_stand_in import HubStandIn
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

REPO = "acme/tiny-llama"
NOT_DOWNLOADED = {"pytorch_model.bin", "README.md"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", llama_config(), with_tokenizer=True)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle, never to be fetched")
    (folder / "README.md").write_text("# tiny random llama\n")
    return folder


def _set_offline(monkeypatch, offline: bool) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (the test environment sets it).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hub(tmp_path, monkeypatch, checkpoint):
    _set_offline(monkeypatch, False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub fetches this registry from its import-time endpoint (huggingface.co,
    # in this process) once a day for its User-Agent; a fresh cached copy keeps it local.
    agents = tmp_path / "hf-home" / "agent_harnesses.json"
    agents.parent.mkdir(parents=True)
    agents.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(agents))
    outside: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", _local_only(socket.getaddrinfo, outside))
    stand_in = HubStandIn().start()
    stand_in.add_commit(REPO, checkpoint)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
    yield stand_in
    stand_in.stop()
    assert stand_in.unserved == []
    assert outside == [], "a test tried to reach another host than the stand-in"


def _local_only(getaddrinfo, outside: list[str]):
    """`socket.getaddrinfo` that records and refuses every host but this machine."""

    def resolve(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            outside.append(str(host))
            raise OSError(f"{host}: only the Hub stand-in may be reached in this test")
        return getaddrinfo(host, *args, **kwargs)

    return resolve


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_use_downloads_then_the_cache_serves(hub, checkpoint, tmp_path, monkeypatch):
    source = resolve_model_source(REPO)
    assert source.directory.is_relative_to(tmp_path / "hub-cache")
    assert [f.name for f in source.weight_files] == ["model.safetensors"]
    assert source.commit == hub.repos[REPO].refs["main"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert _sha(source.directory / name) == _sha(checkpoint / name)
    assert hub.requested_files() == {p.name for p in checkpoint.iterdir()} - NOT_DOWNLOADED
    assert not (source.directory / "pytorch_model.bin").exists()

    hub.requests.clear()
    hub.stop()  # the Hub is gone: a complete cached copy serves
    again = resolve_model_source(REPO)
    assert again.directory == source.directory and again.weight_files == source.weight_files
    assert hub.requests == []
    _set_offline(monkeypatch, True)
    assert resolve_model_source(REPO).weight_files == source.weight_files


def test_revision_pins_the_files(hub, monkeypatch):
    files = {"config.json": b'{"v": 1}', "model.safetensors": b"weights v1", "tokenizer.json": b"{}"}
    first = hub.add_commit("acme/pinned", files, tags=("v1",))
    hub.add_commit("acme/pinned", {**files, "config.json": b'{"v": 2}', "model.safetensors": b"weights v2"})

    def config(**kw):
        return (resolve_model_source("acme/pinned", **kw).directory / "config.json").read_bytes()

    assert config() == b'{"v": 2}'
    assert config(revision="v1") == b'{"v": 1}'
    assert config(revision=first) == b'{"v": 1}'
    with pytest.raises(MaxError, match="--revision nope: acme/pinned has no such branch, tag or commit"):
        resolve_model_source("acme/pinned", revision="nope")
    _set_offline(monkeypatch, True)
    assert config(revision="v1") == b'{"v": 1}'


def test_gated_and_missing_repos_say_what_to_do(hub, tmp_path, monkeypatch):
    hub.add_commit("acme/gated", {"config.json": b"{}", "model.safetensors": b"w"})
    hub.gate("acme/gated", granted_tokens=("hf_granted",))
    hub.tokens.add("hf_other")
    with pytest.raises(MaxError, match=f"acme/gated is a gated repo: request access on {hub.url}/acme/gated.*set HF_TOKEN"):
        resolve_model_source("acme/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    with pytest.raises(MaxError, match="gated repo.*has not been granted access yet"):
        resolve_model_source("acme/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_bogus")
    with pytest.raises(MaxError, match=r"rejected the token \(401 Unauthorized\): check HF_TOKEN"):
        resolve_model_source("acme/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    assert resolve_model_source("acme/gated").weight_files[0].read_bytes() == b"w"
    heads = [r for r in hub.requests if r.method == "HEAD" and r.path.endswith("model.safetensors")]
    assert {r.token for r in heads} == {"hf_granted"}
    # As from the Hub's CDN: the token is not sent off the Hub's host.
    assert {r.token for r in hub.downloads("model.safetensors")} == {None}

    for token in (None, "hf_granted"):  # 401 without a token, 404 with one: the same advice
        if token is None:
            monkeypatch.delenv("HF_TOKEN")
        with pytest.raises(MaxError, match="acme/no-such-model was not found on the Hub.*check the spelling.*HF_TOKEN"):
            resolve_model_source("acme/no-such-model")
    assert not (tmp_path / "hub-cache" / "models--acme--no-such-model").exists()


def test_interrupted_download_resumes(hub, checkpoint):
    size = (checkpoint / "model.safetensors").stat().st_size
    hub.cut("model.safetensors", after=size // 2)
    source = resolve_model_source(REPO)
    assert _sha(source.weight_files[0]) == _sha(checkpoint / "model.safetensors")
    first, resumed = [r.range for r in hub.downloads("model.safetensors")]
    # The download goes on from the bytes it had written (whole chunks), not from zero.
    assert first is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= size // 2


def test_failed_download_leaves_no_broken_copy_and_the_next_run_completes(hub, checkpoint, tmp_path, monkeypatch):
    hub.cut("model.safetensors", after=1000)
    hub.fail("model.safetensors", status=500)
    with pytest.raises(MaxError, match="downloading acme/tiny-llama .* failed.*the next run continues"):
        resolve_model_source(REPO)
    cache = tmp_path / "hub-cache"
    assert list(cache.rglob("*.incomplete")) == []
    assert not list(cache.rglob("snapshots/*/model.safetensors"))
    _set_offline(monkeypatch, True)
    with pytest.raises(MaxError, match="cached copy of acme/tiny-llama .* is incomplete: model.safetensors missing"):
        resolve_model_source(REPO)

    _set_offline(monkeypatch, False)
    hub.clear_faults()
    source = resolve_model_source(REPO)
    assert _sha(source.weight_files[0]) == _sha(checkpoint / "model.safetensors")
    assert len(hub.downloads("config.json")) == 1  # kept from the failed run


def test_gguf_repo_file_chosen_by_encoding_or_weight_path(hub):
    hub.add_commit(
        "acme/tiny-GGUF",
        {"tiny-F32.gguf": b"f32", "tiny-Q8_0.gguf": b"q8", "tiny-Q4_K_M.gguf": b"q4m", "tiny-Q4_K_S.gguf": b"q4s",
         "README.md": b"readme"},
    )
    with pytest.raises(MaxError, match="several GGUF files.*--quantization-encoding.*--weight-path"):
        resolve_model_source("acme/tiny-GGUF")
    assert resolve_model_source("acme/tiny-GGUF", quantization_encoding="q8_0").gguf_file.name == "tiny-Q8_0.gguf"
    assert resolve_model_source("acme/tiny-GGUF", quantization_encoding="q4_k").gguf_file.name == "tiny-Q4_K_M.gguf"
    assert resolve_model_source("acme/tiny-GGUF", ["tiny-F32.gguf"]).gguf_file.read_bytes() == b"f32"
    assert hub.downloads("tiny-Q4_K_S.gguf") == [] and "README.md" not in hub.requested_files()
    with pytest.raises(MaxError, match="no GGUF file in encoding q6_k"):
        resolve_model_source("acme/tiny-GGUF", quantization_encoding="q6_k")

    # MAX's ORG/NAME/FILE: weights from another repo, config and tokenizer from the model's.
    mixed = resolve_model_source(REPO, ["acme/tiny-GGUF/tiny-Q4_K_S.gguf"])
    assert mixed.gguf_file.read_bytes() == b"q4s" and (mixed.directory / "tokenizer.json").is_file()
    assert hub.downloads("model.safetensors") == []


def test_config_only_and_tokenizer_fetch_no_weights(hub):
    dummy = resolve_model_source(REPO, load_format="dummy")
    assert dummy.weight_files == [] and (dummy.directory / "config.json").is_file()
    tokenizer = resolve_tokenizer_source(REPO)
    assert (tokenizer.directory / "tokenizer.json").is_file()
    assert hub.downloads("model.safetensors") == []
    hub.add_commit("acme/pickles", {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    with pytest.raises(MaxError, match="holds only pickled PyTorch checkpoints"):
        resolve_model_source("acme/pickles")
    assert hub.downloads("pytorch_model.bin") == []


def test_offline_and_unreachable_hub(hub, monkeypatch):
    _set_offline(monkeypatch, True)
    with pytest.raises(MaxError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE=1 is set, so nothing is downloaded"):
        resolve_model_source(REPO)
    assert hub.requests == []
    _set_offline(monkeypatch, False)
    url = hub.url
    hub.stop()
    with pytest.raises(MaxError, match=f"not in the Hugging Face cache.*the Hub at {re.escape(url)} cannot be reached"):
        resolve_model_source(REPO)
    # A repo with an embedded copy still runs where the Hub cannot serve it.
    source = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert source.gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
