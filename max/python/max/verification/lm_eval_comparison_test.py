"""Comparing two lm-eval output folders, on files shaped as lm-eval writes them; and the
scoring of the shipped text task."""

import importlib.util
import json

import pytest

from max.errors import MaxError
from max.verification import text_qa_local
from max.verification.lm_eval_comparison import compare_runs, format_table


def _write_run(directory, task: str, replies: list[str], scores: list[float]) -> None:
    run = directory / "model__name"
    run.mkdir(parents=True)
    mean = sum(scores) / len(scores)
    results = {"results": {task: {"alias": task, "contains_answer,none": mean, "contains_answer_stderr,none": 0.1}}}
    (run / "results_2026-12-07T08-00-00.json").write_text(json.dumps(results))
    lines = [
        json.dumps({"doc_id": i, "resps": [[r]], "filtered_resps": [r], "contains_answer": s})
        for i, (r, s) in enumerate(zip(replies, scores))
    ]
    (run / f"samples_{task}_2026-12-07T08-00-00.jsonl").write_text("\n".join(lines) + "\n")


def test_scores_ratio_and_per_sample_agreement(tmp_path):
    _write_run(tmp_path / "ours", "t", ["Paris", "blue", "no idea", "4"], [1.0, 1.0, 0.0, 1.0])
    _write_run(tmp_path / "ref", "t", ["Paris", "blue", "Rome", "4"], [1.0, 1.0, 1.0, 1.0])
    (c,) = compare_runs(tmp_path / "ours", tmp_path / "ref", ["t"])
    assert (c.ours, c.reference, c.samples, c.identical) == (0.75, 1.0, 4, 3)
    assert c.score_differs == [2] and c.ratio == pytest.approx(0.75) and not c.passed
    assert "FAIL" in format_table([c]) and "3/4" in format_table([c])
    assert c.as_dict()["passed"] is False


def test_equal_runs_pass_even_at_zero(tmp_path):
    _write_run(tmp_path / "ours", "t", ["x", "y"], [0.0, 0.0])
    _write_run(tmp_path / "ref", "t", ["x", "y"], [0.0, 0.0])
    (c,) = compare_runs(tmp_path / "ours", tmp_path / "ref", ["t"])
    assert c.ratio == 1.0 and c.passed and c.identical == 2


def test_missing_outputs_are_named(tmp_path):
    _write_run(tmp_path / "ours", "t", ["x"], [1.0])
    (tmp_path / "ref").mkdir()
    with pytest.raises(MaxError, match="results_"):
        compare_runs(tmp_path / "ours", tmp_path / "ref", ["t"])
    with pytest.raises(MaxError, match="missing"):
        compare_runs(tmp_path / "ours", tmp_path / "ours", ["other"])


def test_text_task_scores_whole_words(tmp_path):
    folder = text_qa_local.write_task(tmp_path / "task")
    spec = importlib.util.spec_from_file_location("text_qa_utils", folder / "text_qa_utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"question": "What is 2 + 2?", "answer": "4"}
    assert utils.process_results(doc, ["The answer is 4."]) == {"contains_answer": 1.0}
    assert utils.process_results(doc, ["It is 14."]) == {"contains_answer": 0.0}
    assert utils.process_results({"answer": "Paris"}, ["paris, of course"]) == {"contains_answer": 1.0}
    lines = (folder / "text_qa_local.jsonl").read_text().splitlines()
    assert len(lines) == len(text_qa_local.QUESTIONS) and "!function text_qa_utils.process_results" in (
        folder / "text_qa_local.yaml"
    ).read_text()
