"""The demo end to end on a shortened schedule: every stage runs and hands the right files on."""

import json

import pytest

from open_r1.demo import STAGES, constant_predictions, make_data, run_demo
from open_r1.evaluate import compute_metrics


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo on a shortened schedule: 3 warm-start steps, 2 GRPO steps, 8 training videos."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, sft_steps=3, grpo_steps=2, train_videos=8)


@pytest.mark.slow
def test_every_stage_is_scored_on_the_held_out_videos(demo):
    out, summary = demo
    assert json.loads((out / "summary.json").read_text()) == summary
    for stage in STAGES:
        assert summary[stage]["num_queries"] == 48  # 24 held-out videos x 2 events
        for key in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU"):
            assert 0.0 <= summary[stage][key] <= 100.0
    assert summary["warm_start"] == str(out / "warm_start")
    assert (out / "demo_plot.png").stat().st_size > 10_000
    assert (out / "grpo" / "model.safetensors").is_file()
    # One cache entry per video: 8 training, 24 held-out, 24 all-background copies.
    assert len(list((out / "data" / "cache").glob("*.safetensors"))) == 8 + 24 + 24


@pytest.mark.slow
def test_the_constant_baseline_is_fitted_on_training_queries_only(demo):
    out, summary = demo
    splits = {name: out / "data" / name / "annotations.json" for name in ("train", "test")}
    records = constant_predictions(splits["train"], splits["test"])
    assert len({r["output"] for r in records}) == 1  # one span for every query
    assert compute_metrics(records)["mIoU"] == summary["constant"]["mIoU"]
    # Fitting on the held-out split instead can only do at least as well there.
    assert compute_metrics(constant_predictions(splits["test"], splits["test"]))["mIoU"] >= summary["constant"]["mIoU"]


def test_blank_videos_keep_the_held_out_queries(tmp_path):
    from open_r1.data import load_annotations

    splits = make_data(tmp_path, train_videos=2)
    test, blank = load_annotations(splits["test"]), load_annotations(splits["blank"])
    assert [(r["query"], r["windows"], r["duration"]) for r in test] == [
        (r["query"], r["windows"], r["duration"]) for r in blank
    ]
    assert len({r["video_id"] for r in load_annotations(splits["train"])} & {r["video_id"] for r in test}) == 0
