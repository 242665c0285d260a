"""The vision tower against transformers' Qwen2.5-VL vision model, float32: images of
several sizes (windows that do not tile them evenly), runs of equal sizes (batched
attention), and one image alone."""

import pytest
import torch

from max.nn.vision import VisionConfig, VisionTransformer, window_order

VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1], in_channels=3)  # fmt: skip


@pytest.fixture(scope="module")
def towers():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, vision_config=VISION)  # fmt: skip
    reference = Qwen2_5_VLForConditionalGeneration(config).model.visual.eval()
    ours = VisionTransformer(VisionConfig(**VISION))
    state = reference.state_dict()
    for name in list(state):
        if ".mlp.gate_proj." in name:  # our gated MLP holds gate and up as one matrix
            up = state.pop(name.replace("gate_proj", "up_proj"))
            state[name.replace("gate_proj", "gate_up_proj")] = torch.cat([state.pop(name), up])
    ours.load_state_dict(state)
    return reference, ours.eval()


@pytest.mark.parametrize(
    "grids",
    [[(1, 4, 4)], [(1, 12, 16), (1, 6, 6), (1, 20, 8)], [(1, 12, 16), (1, 12, 16), (1, 6, 6), (1, 6, 6), (1, 6, 6), (1, 8, 4)]],
)
def test_matches_transformers(towers, grids):
    reference, ours = towers
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14)
    with torch.no_grad():
        expected = reference(pixels, grid_thw=torch.tensor(grids)).pooler_output
        torch.testing.assert_close(ours(pixels, grids), expected, rtol=1e-5, atol=1e-5)


def test_window_order_lists_each_merge_block_once_window_by_window():
    order, windows = window_order([(1, 6, 10), (1, 4, 4)], merge=2, window=2)
    assert sorted(order.tolist()) == list(range(15 + 4))
    # 3 x 5 blocks in windows of 2 x 2: 2 rows x 3 columns of windows, sizes 4 4 2 / 2 2 1.
    assert torch.bincount(windows).tolist() == [4, 4, 2, 2, 2, 1, 4]
    assert order[:4].tolist() == [0, 1, 5, 6]
