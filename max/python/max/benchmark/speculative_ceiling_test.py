"""The speculative ceiling benchmark: its oracle's reference settles on the speculative
run's own output, and a run on a tiny model reports every k, with verify steps and the
output identical to plain decoding (CPU, float32: verify and decode steps agree bit for
bit there)."""

import json

from max.benchmark import speculative_ceiling
from max.testing.tiny_checkpoints import llama_config, write_config_only


def test_the_reference_settles_on_the_runs_own_output():
    # A run emits the reference up to its first "wrong" token (5), then its own (6, 7).
    def output_for(reference, run):
        cut = reference.index(5) if 5 in reference else len(reference)
        return reference[:cut] + [6, 7][: len(reference) - cut]

    assert speculative_ceiling.settle_reference(output_for, [1, 5, 5], 10) == ([1, 6, 7], 1)
    assert speculative_ceiling.settle_reference(output_for, [1, 2, 3], 10) == ([1, 2, 3], 0)
    never = speculative_ceiling.settle_reference(lambda ref, run: ref + [run], [1], 3)
    assert never == ([1, 0, 1, 2], 3)  # capped


def test_full_verify_ms_takes_the_median_of_all_accepted_steps():
    steps = [(0.010, 5), (0.002, 1), (0.030, 5), (0.020, 5), (0.050, 3)]
    assert speculative_ceiling.full_verify_ms(steps, 4) == 20.0
    assert speculative_ceiling.full_verify_ms(steps, 8) is None


def test_tiny_run_reports_every_k(tmp_path, capsys):
    path = write_config_only(tmp_path / "tiny", llama_config())
    out = tmp_path / "rows.json"
    args = ["--model-path", str(path), "--devices", "cpu", "--quantization-encoding", "float32", "--ks", "1,3"]
    args += ["--new-tokens", "8", "--prompt-len", "6", "--max-length", "64", "--repeats", "1", "--result-file", str(out)]
    assert speculative_ceiling.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["k"] for r in rows] == [0, 1, 3]
    for r in rows[1:]:
        assert r["identical"] and r["settle_runs"] == 0 and r["verify_steps"] > 0
        assert r["acceptance_rate"] == 1.0
        # Every decode step verified k drafts, all accepted (but a last, shorter one).
        assert r["full_verify_steps"] >= r["verify_steps"] - 1 and r["full_verify_ms"] > 0
        assert r["ceiling_tokens_per_s"] > 0
    assert "| 3 |" in capsys.readouterr().out
