"""The buffers the LoRA graphs read (`lora_model_runner._GroupBuffers`), without a GPU: a
graph captured over them once gives, for each step's mix of adapters filled in, what the
step's own groups give (tiles left from an earlier, larger step are skipped), through the
Triton kernels under the interpreter.

Without a GPU the test runner sets TRITON_INTERPRET=1 before anything imports Triton
(tools/pytest_main.py); run by hand as `TRITON_INTERPRET=1 python -m pytest ...`.
"""

import numpy as np
import torch

from max.nn.lora import LoRABatch
from max.pipelines.lib.runner.lora_model_runner import _GroupBuffers
from max_kernels import LoRAGroups, LoRAStack, backend, lora_add
from max_kernels.lora_sgmv import group_rows

SLOTS, RANK, K, ROWS = 4, 8, 32, 24
SLICES = [(0, 16), (16, 8), (24, 8)]


def _step(pattern):
    rows, tiles = group_rows(np.array(pattern, dtype=np.int32))
    slots = torch.tensor(pattern, dtype=torch.int32)
    return LoRABatch(slots, LoRAGroups(torch.from_numpy(rows), torch.from_numpy(tiles)))


def test_graph_buffers_give_each_step_its_own_groups_result():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, len(SLICES) * RANK, K, generator=g)
    b = torch.randn(SLOTS, 32, RANK, generator=g)
    scales = torch.tensor([0.5, 1.0, 2.0, 0.25])
    x, y = torch.randn(ROWS, K, generator=g), torch.randn(ROWS, 32, generator=g)
    buffers = _GroupBuffers(ROWS, SLOTS, torch.device("cpu"))
    captured = buffers.batch(ROWS)  # what a decode graph of ROWS rows reads at every replay
    patterns = [
        [i % SLOTS for i in range(ROWS)],  # every slot: the most tiles
        [1] * 5 + [-1] * (ROWS - 5),  # fewer tiles: the earlier ones must be skipped now
        [-1] * (ROWS - 1) + [3],
        [2] * ROWS,
    ]
    with backend("triton"):
        for pattern in patterns:
            step = _step(pattern)
            buffers.fill(step)
            replayed = lora_add(y.clone(), x, LoRAStack(a, b, scales, SLICES), captured.token_slots, captured.groups)
            want = lora_add(y.clone(), x, LoRAStack(a, b, scales, SLICES), step.token_slots, step.groups)
            assert torch.equal(replayed, want), pattern
            untouched = torch.tensor(pattern) < 0
            assert torch.equal(replayed[untouched], y[untouched])
    assert captured.groups.num_tiles >= _step(patterns[0]).groups.num_tiles
