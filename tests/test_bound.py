"""benchmarks/bound.py: its FLOP formulas equal torch's FLOP counter on the tiny model's vision tower and language
model (attention included), and its window layout is the tower's."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bound  # noqa: E402
from phases import ATTENTION_FLOPS  # noqa: E402

from open_r1.modeling import build_tiny_model, load_model  # noqa: E402
from open_r1.positions import inner_vlm  # noqa: E402

GRID = (4, 28, 44)  # edge windows of several sizes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return inner_vlm(load_model(build_tiny_model(tmp_path_factory.mktemp("tiny_bound"))))


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def test_vision_formula_equals_the_counter(tiny):
    vision = tiny.visual.config
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    x = torch.randn(GRID[0] * GRID[1] * GRID[2], width)
    flops = counted(lambda: tiny.visual(x, grid_thw=torch.tensor([GRID])))
    assert flops == bound.vision_forward_flops(vision, GRID)
    assert sum(bound.vision_windows(vision, GRID)) == GRID[0] * GRID[1] * GRID[2]


def test_language_model_formula_equals_the_counter(tiny):
    text = tiny.language_model.config
    tokens = 40
    embeds = torch.randn(1, tokens, text.hidden_size)
    mask = torch.ones(tokens, tokens, dtype=torch.bool).tril()[None, None]  # dense 4-D: every score computed
    positions = torch.arange(tokens).view(1, 1, -1).expand(3, 1, -1)
    flops = counted(lambda: tiny.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions))
    assert flops == bound.text_forward_flops(text, tokens, tokens * tokens)
    assert bound.text_forward_flops(text, tokens, 0) == bound.text_linear_flops(text, tokens)


def test_the_paper_step_bound():
    from transformers import AutoConfig

    from open_r1.modeling import ASSETS_DIR

    phases = bound.step_phases(AutoConfig.from_pretrained(ASSETS_DIR))
    dense = phases.pop("packed_dense_over_useful_scores")
    assert 2.1 < dense < 2.3  # the packed passes' dense mask: over twice the useful attention work
    # Decode reads every bf16 weight once per step: 200 steps of >= 15.2 GB at 4.8 TB/s.
    assert phases["generation"]["bound_s"] > 200 * 15.2e9 / bound.BANDWIDTH
    assert phases["backward"]["flops"] == 3 * phases["policy_forward"]["flops"]
    total = sum(p["bound_s"] for p in phases.values())
    assert 1.0 < total < 1.4  # seconds per step on one H200


def test_evaluation_counts_and_bound():
    """benchmarks/eval_bound.py: the previous runner's tower passes (file order, per batch) and the clip grids."""
    import eval_bound
    from transformers import AutoConfig

    from open_r1.modeling import ASSETS_DIR

    # Batches of 2 over a, a | a, b | b, c: 1 + 2 + 2 = 5 passes for 3 videos.
    assert eval_bound.tower_passes(["a", "a", "a", "b", "b", "c"], 2) == 5
    assert eval_bound.tower_passes(["a", "a", "a", "b", "b", "c"], 6) == 3
    # A 30 s clip at 2 fps: 60 frames -> 30 temporal patches, within the paper's 3,584-token budget.
    t, h, w = eval_bound.video_grid(30.0, (270, 480))
    assert t == 30 and t * h * w // 4 <= 3584
    config = AutoConfig.from_pretrained(ASSETS_DIR)
    rows = [{"video_id": v, "duration": 30.0} for v in ("a", "a", "b")]
    phases = eval_bound.split_bound(config, rows, batch_size=2, answer_tokens=5, source_size=(270, 480))
    # 2 batches x 5 decode steps, each reading every weight once; the tower runs once per video.
    assert phases["decode"]["bytes"] > 10 * bound.text_weight_bytes(config.text_config)
    assert phases["vision"]["flops"] == 2 * bound.vision_forward_flops(config.vision_config, (t, h, w))


def test_decode_shapes_of_real_runs_stay_within_the_compiled_budget():
    """benchmarks/decode_shapes.py on the bundled Charades-STA and ActivityNet splits: per-call cache buckets would
    exceed dynamo's limit (8) in training; the high-water cache keeps every run within the decoder's budget (4)."""
    import decode_shapes

    from open_r1.decoding import StaticDecoder, recompile_limit

    results = decode_shapes.main(["--orders", "3"])
    budget = StaticDecoder("cpu", backend="eager").max_shapes
    assert budget == recompile_limit() // 2 == 4
    assert results["charades"]["training on train"]["per_call"] == 7
    assert results["activitynet"]["training on train"]["per_call"] == 12 > recompile_limit()
    for dataset in results.values():
        for run in dataset.values():
            assert run["high_water_max"] <= budget, run
    # A tiny synthetic check of the counting itself: three calls needing 4,200, 1,000 and 4,700 tokens.
    calls = [(8, 4200), (8, 1000), (8, 4700)]
    assert decode_shapes.shapes_of(calls, high_water=False) == {(8, 4608): 1, (8, 1024): 1, (8, 5120): 1}
    assert decode_shapes.shapes_of(calls, high_water=True) == {(8, 4608): 2, (8, 6144): 1}
