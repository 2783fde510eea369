"""open_r1.vision_attention: the vision tower's windows in one sdpa call per window size give the per-window loop's
features and gradients, with a handful of attention calls per layer instead of one per window."""

import pytest
import torch

from open_r1.modeling import build_tiny_model, load_model
from open_r1.positions import inner_vlm
from open_r1.vision_attention import BATCHED_WINDOWS, set_vision_attention

# Two videos of different sizes in one call; 28x44 patches leave edge windows of several sizes (window 112 px =
# 8x8 patches).
GRIDS = torch.tensor([[4, 28, 44], [2, 20, 16]])


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    model = load_model(build_tiny_model(tmp_path_factory.mktemp("tiny_vision")))
    return model, inner_vlm(model).visual


def patches(visual, seed=0):
    width = visual.config.in_channels * visual.config.temporal_patch_size * visual.config.patch_size**2
    return torch.randn(int(GRIDS.prod(-1).sum()), width, generator=torch.Generator().manual_seed(seed))


class SdpaCalls:
    def __init__(self, monkeypatch):
        self.count = 0
        real = torch.nn.functional.scaled_dot_product_attention

        def counting(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)


def run(model, visual, batched, x, grad=False):
    assert set_vision_attention(model, batched=batched) == (BATCHED_WINDOWS if batched else "sdpa")
    visual.zero_grad()
    with torch.set_grad_enabled(grad):
        features = visual(x, grid_thw=GRIDS).pooler_output
    grads = None
    if grad:
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        grads = {n: p.grad.clone() for n, p in visual.named_parameters() if p.grad is not None}
    return features.detach(), grads


def test_batched_windows_give_the_loop_features_with_few_calls(tower, monkeypatch):
    model, visual = tower
    assert visual.config._attn_implementation == BATCHED_WINDOWS  # load_model's default
    x = patches(visual)
    calls = SdpaCalls(monkeypatch)
    loop, _ = run(model, visual, False, x)
    loop_calls, calls.count = calls.count, 0
    batched, _ = run(model, visual, True, x)
    torch.testing.assert_close(batched, loop, atol=1e-6, rtol=1e-5)
    # Loop: one call per window in the window layers, one per temporal patch in the full-attention layer.
    depth, full = visual.config.depth, len(visual.config.fullatt_block_indexes)
    merge = visual.config.spatial_merge_size
    units = visual.config.window_size // merge // visual.config.patch_size  # merged units per window side
    windows = sum(int(t) * -(-int(h) // merge // units) * -(-int(w) // merge // units) for t, h, w in GRIDS.tolist())
    assert loop_calls == (depth - full) * windows + full * int(GRIDS[:, 0].sum())
    # Batched: one call per distinct window size of a layer (interior, right edge, bottom edge, corner; 2 videos).
    assert calls.count <= (depth - full) * 8 + full * 2
    assert loop_calls > 10 * calls.count


def test_batched_windows_give_the_loop_gradients(tower):
    model, visual = tower
    x = patches(visual, seed=1)
    loop, loop_grads = run(model, visual, False, x, grad=True)
    batched, grads = run(model, visual, True, x, grad=True)
    torch.testing.assert_close(batched, loop, atol=1e-6, rtol=1e-5)
    assert grads.keys() == loop_grads.keys() and grads
    for name, grad in loop_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_only_an_sdpa_tower_is_switched(tower):
    model, visual = tower
    try:
        for implementation in ("eager", "flash_attention_2"):  # flash-attention has its own varlen call
            visual.config._attn_implementation = implementation
            assert set_vision_attention(model, batched=True) == implementation
            assert set_vision_attention(model, batched=False) == implementation
    finally:
        visual.config._attn_implementation = "sdpa"
    assert set_vision_attention(model, batched=True) == BATCHED_WINDOWS
