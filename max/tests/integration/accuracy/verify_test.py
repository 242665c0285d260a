"""generate_llm_logits and verify as a user runs them: max against the torch reference on
a tiny random checkpoint; a perturbed file fails with exit 2; bad input exits 1."""

import json
from pathlib import Path

import pytest

from max.testing.cli import run_script

HERE = Path(__file__).parent
GENERATE = HERE.parent / "tools" / "generate_llm_logits.py"
VERIFY = HERE / "verify.py"



@pytest.fixture(scope="module")
def logits(tmp_path_factory):
    out = tmp_path_factory.mktemp("logits")
    torch_file, max_file = out / "torch.json", out / "max.json"
    common = ["--pipeline", "tiny-random-llama3", "--device", "cpu", "--encoding", "float32", "--num-steps", "6"]
    r = run_script(GENERATE, "--framework", "torch", *common, "--output", str(torch_file))
    assert r.returncode == 0, r.stderr
    r = run_script(GENERATE, "--framework", "max", *common, "--output", str(max_file), "--reference", str(torch_file))
    assert r.returncode == 0, r.stderr
    return max_file, torch_file


STRICT = ["--eval-metric", "cos,kl,tol", "--relative-tolerance", "1e-4", "--absolute-tolerance", "1e-5",
          "--cos-dist-threshold", "1e-6", "--kl-div-threshold", "1e-6"]


def test_file_format(logits):
    max_file, _ = logits
    payload = json.loads(max_file.read_text())
    assert len(payload) == 6 and len(payload[0]["values"]) == 6
    value = payload[0]["values"][0]
    assert set(value) == {"next_token", "next_token_logits", "logits"}
    assert len(value["logits"]) == 49152
    assert value["next_token_logits"] == pytest.approx(value["logits"][value["next_token"]])


def test_max_matches_torch(logits):
    max_file, torch_file = logits
    r = run_script(VERIFY, *STRICT, str(max_file), str(torch_file))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout and "max KL" in r.stdout and "RMSE" in r.stdout


def test_perturbed_copy_fails_with_exit_2(logits, tmp_path):
    max_file, torch_file = logits
    payload = json.loads(max_file.read_text())
    payload[2]["values"][3]["logits"][100] += 5.0
    bad = tmp_path / "perturbed.json"
    bad.write_text(json.dumps(payload))
    r = run_script(VERIFY, *STRICT, str(bad), str(torch_file))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "FAIL" in r.stdout
    assert "step 3 token 100" in r.stdout  # the worst difference is reported


def test_usage_errors_exit_1(logits, tmp_path):
    max_file, torch_file = logits
    payload = json.loads(max_file.read_text())
    payload[0]["prompt"] = "something else"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(payload))
    r = run_script(VERIFY, str(other), str(torch_file))
    assert r.returncode == 1 and "different prompts" in r.stderr
    payload = json.loads(max_file.read_text())
    payload[1]["values"].pop()
    short = tmp_path / "short.json"
    short.write_text(json.dumps(payload))
    r = run_script(VERIFY, str(short), str(torch_file))
    assert r.returncode == 1 and "steps" in r.stderr
    r = run_script(VERIFY, "--eval-metric", "l2", str(max_file), str(torch_file))
    assert r.returncode == 1
    r = run_script(VERIFY, str(tmp_path / "missing.json"), str(torch_file))
    assert r.returncode == 1 and "cannot read" in r.stderr
    r = run_script(GENERATE, "--framework", "max", "--pipeline", str(tmp_path / "nope"), "--output", str(tmp_path / "o.json"))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_prompts_file_with_images(tmp_path):
    """A prompts file naming image files: both frameworks see the same ids and pixels and
    verify passes in float32; the logits file names each image prompt with its images."""
    from max.testing.images import random_picture

    random_picture(90, 60, 1).save(tmp_path / "a.png")
    random_picture(40, 120, 2).save(tmp_path / "b.png")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Plain text.", {"prompt": "Two pictures:", "images": ["a.png", "b.png"]}]))
    common = ["--pipeline", "tiny-random-qwen2.5-vl", "--device", "cpu", "--encoding", "float32", "--num-steps", "3",
              "--prompts", str(prompts)]  # fmt: skip
    torch_file, max_file = tmp_path / "torch.json", tmp_path / "max.json"
    r = run_script(GENERATE, "--framework", "torch", *common, "--output", str(torch_file))
    assert r.returncode == 0, r.stderr
    r = run_script(GENERATE, "--framework", "max", *common, "--output", str(max_file), "--reference", str(torch_file))
    assert r.returncode == 0, r.stderr
    assert [p["prompt"] for p in json.loads(max_file.read_text())] == ["Plain text.", "Two pictures: [images: a.png, b.png]"]
    assert run_script(VERIFY, *STRICT, str(max_file), str(torch_file)).returncode == 0
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"prompt": "x", "images": ["nope.png"]}]))
    r = run_script(GENERATE, "--framework", "max", *common[:-1], str(missing), "--output", str(tmp_path / "m.json"))
    assert r.returncode == 1 and "nope.png" in r.stderr
