"""`pipelines bring-up` on tiny random checkpoints: a correct port passes the logit step, a
custom architecture with a wrong rope base fails it and the report names the first
diverging layer, steps can be chosen and depend on resolve, report.json keeps its schema."""

import json
import re

import pytest

from max.entrypoints.bring_up import selected_steps
from max.entrypoints.pipelines import main
from max.entrypoints.scaffold import scaffold_architecture
from max.errors import MaxError
from max.pipelines.lib import PIPELINE_REGISTRY
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

STEP_KEYS = {"name", "title", "status", "summary", "seconds", "commands", "details"}


@pytest.fixture(autouse=True)
def _restore_registry():
    """A custom architecture replaces LlamaForCausalLM in the process-wide registry."""
    saved = dict(PIPELINE_REGISTRY._architectures)
    yield
    PIPELINE_REGISTRY._architectures.clear()
    PIPELINE_REGISTRY._architectures.update(saved)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", llama_config(), seed=3, with_tokenizer=True)


def _bring_up(*args: str) -> int:
    return main(["bring-up", "--encodings", "float32", "--num-steps", "3", *args])


def _report(out) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "max.bring-up/1"
    assert {"date", "command", "model", "device", "versions", "steps", "passed", "seconds"} <= set(report)
    assert {"torch", "transformers", "python"} <= set(report["versions"])
    assert {"devices", "name", "cpu_cores"} <= set(report["device"])
    assert [s["name"] for s in report["steps"]] == ["resolve", "verify", "eval", "bench"]
    for step in report["steps"]:
        assert set(step) == STEP_KEYS and step["status"] in ("passed", "failed", "skipped")
    json.dumps(report, allow_nan=False)  # plain JSON, no NaN/Infinity
    return report


def _status(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["steps"]}


def test_tiny_llama_only_verify_passes(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    assert _bring_up("--model-path", str(tiny_llama), "--only", "verify", "--output", str(out)) == 0
    report = _report(out)
    assert report["passed"] and report["model"]["architecture"] == "LlamaForCausalLM"
    assert _status(report) == {"resolve": "passed", "verify": "passed", "eval": "skipped", "bench": "skipped"}
    (entry,) = report["steps"][1]["details"]["encodings"]
    assert entry["status"] == "OK" and entry["max_kl"] < 1e-6
    assert any("generate_llm_logits" in c for c in report["steps"][1]["commands"])
    markdown = (out / "report.md").read_text()
    assert "| verify: Logits against transformers | PASS |" in markdown and "--only verify" in markdown
    assert "PASS in" in capsys.readouterr().out


def _broken_rope_folder(path):
    """A copy of llama3 registered as LlamaForCausalLM whose config reader divides the
    rope base by 100: a bug a port can have, invisible until positions are rotated."""
    folder = scaffold_architecture("llama3", "LlamaForCausalLM", path)
    config_file = folder / "model_config.py"
    text = config_file.read_text()
    (cls,) = re.findall(r"^class (\w+)\(DecoderConfig\)", text, flags=re.M)
    config_file.write_text(
        text
        + f"""

_read = {cls}.from_huggingface.__func__


def _wrong_rope_base(cls, hf_config, max_seq_len):
    config = _read(cls, hf_config, max_seq_len)
    config.rope_parameters = {{**config.rope_parameters, "rope_theta": config.rope_parameters["rope_theta"] / 100}}
    return config


{cls}.from_huggingface = classmethod(_wrong_rope_base)
"""
    )
    return folder


def test_wrong_rope_base_fails_verify_and_names_the_layer(tiny_llama, tmp_path):
    folder = _broken_rope_folder(tmp_path / "broken_rope_arch")
    out = tmp_path / "out"
    status = _bring_up(
        "--model-path", str(tiny_llama), "--custom-architectures", str(folder), "--skip", "eval",
        "--bench-new-tokens", "3", "--bench-batch", "2", "--output", str(out),
    )  # fmt: skip
    assert status == 2
    report = _report(out)
    assert not report["passed"] and report["model"]["custom"] is True
    # The failed verify does not stop bench, which does not depend on it.
    assert _status(report) == {"resolve": "passed", "verify": "failed", "eval": "skipped", "bench": "passed"}
    (entry,) = report["steps"][1]["details"]["encodings"]
    assert entry["status"] == "INVALID"
    first = entry["layers"]["first_divergence"]["module"]
    assert first.startswith("layers.0.self_attn"), first
    assert "compare_layers" in " ".join(report["steps"][1]["commands"])
    markdown = (out / "report.md").read_text()
    assert f"decoder layer 0 ({first})" in markdown and "first divergence" in markdown
    bench_rows = report["steps"][3]["details"]["rows"]
    assert {r["framework"] for r in bench_rows} == {"ours", "transformers"}


def test_unregistered_architecture_says_how_to_start_one(tiny_llama, tmp_path):
    model = tmp_path / "new_model"
    model.mkdir()
    for file in tiny_llama.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["BrandNewForCausalLM"], model_type="brand_new")
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert _bring_up("--model-path", str(model), "--output", str(out)) == 2
    report = _report(out)
    assert _status(report) == {"resolve": "failed", "verify": "skipped", "eval": "skipped", "bench": "skipped"}
    assert all("needs resolve" in s["summary"] for s in report["steps"][1:])
    markdown = (out / "report.md").read_text()
    assert "new-architecture --from llama3 --name BrandNewForCausalLM --output ./brand_new" in markdown


def test_step_selection():
    assert selected_steps(None, None) == ["resolve", "verify", "eval", "bench"]
    assert selected_steps(["verify"], None) == ["resolve", "verify"]
    assert selected_steps(None, ["eval"]) == ["resolve", "verify", "bench"]
    assert selected_steps(["resolve"], None) == ["resolve"]
    with pytest.raises(MaxError, match="need"):
        selected_steps(None, ["resolve"])
    with pytest.raises(MaxError, match="no step"):
        selected_steps(["eval"], ["eval"])


def test_usage_errors(tmp_path, capsys):
    assert _bring_up("--encodings", "float33", "--output", str(tmp_path)) == 1
    assert "float33" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bring-up", "--only", "nonsense"])
    assert "steps are resolve, verify, eval, bench" in capsys.readouterr().err


def test_progress_lines_off_a_terminal():
    import io

    from max.entrypoints.bring_up_step import Progress

    stream = io.StringIO()
    progress = Progress("eval", 2, stream=stream, width=4)
    progress.advance("serve")
    progress.note("serve: 3/32 requests")
    progress.advance("reference")
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split("]")[1].strip() for line in lines] == ["[----", "[----", "[##--", "[####"]
    assert lines[1].endswith("serve: 3/32 requests") and "2/2" in lines[-1] and "\r" not in stream.getvalue()


def test_closest_folder_for_a_new_architecture():
    from max.entrypoints.bring_up_resolve import closest_folder

    assert closest_folder("gemma2") == "gemma3"
    assert closest_folder("qwen2_moe") == "qwen2"
    assert closest_folder("brand_new") == "llama3"
