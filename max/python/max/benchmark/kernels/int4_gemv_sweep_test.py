"""The int4 decode sweep's bookkeeping on the CPU (Triton's interpreter, a tiny shape, a fake
timer): every candidate is checked against the reference, and the printed `TUNED` literal
is valid Python naming the fastest checked candidate."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

from max.benchmark.kernels import int4_gemv_sweep as sweep
from max_kernels.int4_gemv import Int4GemvConfig, default_config


def test_candidates_start_with_todays_default_and_fit_the_groups():
    for rows in (1, 4, 16):
        grid = sweep.candidates(4096, 14336, rows)
        assert grid[0] == default_config(4096, 14336, rows, sweep.GROUP)
        assert len(grid) == len(set(grid)) > 5
        want = {"bytes", "words", "word_tile"} if rows == 1 else {"tile", "word_tile"} | ({"words"} if rows <= 4 else set())
        assert {c.kernel for c in grid} == want


def test_the_sweep_checks_every_candidate_and_prints_the_fastest_as_a_table_entry():
    n, k = 16, 256
    calls = []

    def fake_timer(fn, copies):
        fn(copies - 1)
        calls.append(1)
        return 100.0 - len(calls)  # each later candidate "faster"

    results: list[dict] = []
    # (float16: the interpreter's dot on bfloat16 operands is wrong; the GPU sweeps bfloat16.)
    skipped = sweep.sweep_shape(
        "tiny", n, k, [1], True, float("inf"), results, device="cpu", timer=fake_timer, dtype=torch.float16
    )
    assert skipped == 0 and len(results) == len(sweep.candidates(n, k, 1, quick=True)) >= 3
    assert all(r["ok"] for r in results), [sweep.describe(r["cfg"]) for r in results if not r["ok"]]
    text = sweep.summary(results, {"tiny": (n, k)}, [1])
    table = eval(text[text.index("{") :], {"Int4GemvConfig": Int4GemvConfig})  # our own output
    assert table == {(n, k, 1): results[-1]["cfg"]}
