"""The verify metrics on hand-made logits."""

import numpy as np
import pytest

from max.errors import MaxError
from max.verification.logit_metrics import Criteria, compare, format_report
from max.verification.logits_file import PromptLogits, StepLogits, read_logits, write_logits


def _results(values, prompts=("a", "b")):
    return [PromptLogits(p, [StepLogits(int(np.argmax(v)), np.asarray(v, np.float32)) for v in values]) for p in prompts]


def test_identical_logits_pass_everything():
    logits = [[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]
    result = compare(_results(logits), _results(logits), Criteria())
    assert result.passed and result.max_kl == pytest.approx(0.0, abs=1e-12)
    assert "PASS" in format_report(result)


def test_each_metric_fails_on_its_own():
    ref = _results([[1.0, 2.0, 3.0]])
    off = _results([[1.0, 2.0, 3.5]])
    assert not compare(off, ref, Criteria(metrics=("tol",), rtol=1e-3, atol=1e-3)).passed
    assert compare(off, ref, Criteria(metrics=("tol",), rtol=0.2, atol=0.0)).passed
    kl = compare(off, ref, Criteria(metrics=("kl",), kl_threshold=1e-4))
    assert not kl.passed and kl.failures[0].startswith("kl:")
    cos = compare(off, ref, Criteria(metrics=("cos",), cos_threshold=1e-6))
    assert not cos.passed and cos.max_cos > 0


def test_kl_is_reference_to_target():
    ref = _results([[0.0, 0.0, 5.0]], prompts=("p",))
    tgt = _results([[0.0, 5.0, 0.0]], prompts=("p",))
    p = np.exp([0, 0, 5.0]) / np.exp([0, 0, 5.0]).sum() + 1e-10
    q = np.exp([0, 5.0, 0]) / np.exp([0, 5.0, 0]).sum() + 1e-10
    expected = float(np.sum(p * np.log(p / q)))
    assert compare(tgt, ref, Criteria(metrics=("kl",))).max_kl == pytest.approx(expected, rel=1e-6)


def test_mismatches_are_usage_errors():
    with pytest.raises(MaxError, match="different prompts"):
        compare(_results([[1.0, 2.0]], ("a",)), _results([[1.0, 2.0]], ("b",)), Criteria())
    with pytest.raises(MaxError, match="steps"):
        compare(_results([[1.0, 2.0]], ("a",)), _results([[1.0, 2.0], [1.0, 2.0]], ("a",)), Criteria())
    with pytest.raises(MaxError, match="vocabularies differ"):
        compare(_results([[1.0, 2.0]], ("a",)), _results([[1.0, 2.0, 3.0]], ("a",)), Criteria())
    with pytest.raises(MaxError, match="unknown metric"):
        compare(_results([[1.0]]), _results([[1.0]]), Criteria(metrics=("l2",)))


def test_file_round_trip(tmp_path):
    results = _results([[1.0, 2.0, 3.0]], prompts=("é ✓",))
    write_logits(tmp_path / "x.json", results)
    back = read_logits(tmp_path / "x.json")
    assert back[0].prompt == "é ✓" and back[0].steps[0].next_token == 2
    np.testing.assert_array_equal(back[0].steps[0].logits, results[0].steps[0].logits)
    (tmp_path / "bad.json").write_text('[{"prompt": "x"}]')
    with pytest.raises(MaxError, match="malformed"):
        read_logits(tmp_path / "bad.json")
