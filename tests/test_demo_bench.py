"""The demo's recipes (--recipe timelens end to end on a short schedule) and the ablation bench's table on runs with
known numbers."""

import argparse
import json
from statistics import stdev

import pytest

from open_r1 import demo, demo_bench
from open_r1.timestamps import read_prompt_format


def settings(recipe="timezero", select_data=None, timestamps=None, no_think=None):
    return demo.recipe_settings(argparse.Namespace(recipe=recipe, select_data=select_data, timestamps=timestamps,
                                                   no_think=no_think))  # fmt: skip


def test_recipe_flags_override_the_recipe_parts():
    assert settings() == {"select": True, "selection_mode": "filter", "timestamps": "mrope", "no_think": False}
    assert settings("timelens") == {"select": True, "selection_mode": "difficulty", "timestamps": "interleaved",
                                    "no_think": True}  # fmt: skip
    assert settings("timelens", select_data="off", no_think="off") == {
        "select": False, "selection_mode": "filter", "timestamps": "interleaved", "no_think": False,
    }  # fmt: skip
    assert settings(select_data="on")["selection_mode"] == "filter"
    assert settings(timestamps="interleaved")["timestamps"] == "interleaved"
    with pytest.raises(ValueError, match="bundled warm start was trained with the paper's prompt"):
        demo.run_demo("/nonexistent/never_written", warm_start="bundled", no_think=True)


@pytest.mark.slow
def test_the_timelens_recipe_runs_every_stage_in_its_layout(tmp_path, monkeypatch):
    # Short held-out and validation splits: this checks wiring, not learning.
    monkeypatch.setitem(demo.SPLITS, "test", (12, 2))
    monkeypatch.setattr(demo, "VALIDATION", (6, 3))
    monkeypatch.setattr(demo, "WARM_START_MARGIN", -1000.0)  # passes its first check
    summary = demo.run_demo(tmp_path, sft_steps=3, grpo_steps=2, train_videos=8, **settings("timelens"))
    assert summary["recipe"] == {"timestamps": "interleaved", "no_think": True, "select_data": "difficulty"}
    check = summary["warm_start_check"]
    assert check["passed"] and check["steps"] == 3 and [c["step"] for c in check["checks"]] == [3]
    config = json.loads((tmp_path / "eval" / "validation@3" / "eval_config.json").read_text())
    assert config["timestamps"] == "interleaved" and config["num_queries"] == 6
    for folder in ("warm_start", "grpo"):
        assert read_prompt_format(tmp_path / folder) == {"timestamps": "interleaved", "no_think": True,
                                                         "video_first": False}  # fmt: skip
    for stage in ("random", "sft", "blank", "grpo"):
        config = json.loads((tmp_path / "eval" / stage / "eval_config.json").read_text())
        assert (config["timestamps"], config["no_think"]) == ("interleaved", True), stage
    report = json.loads((tmp_path / "selection" / "selection_report.json").read_text())
    assert report["mode"] == "difficulty" and report["counts"]["kept"] == 4  # half of the 8 training queries
    assert report["config"]["timestamps"] == "interleaved" and summary["selection"]["used"]


def write_run(root, arm, seed, stages, sft_ious, grpo_ious, warm_steps=300, seconds=100.0):
    folder = demo_bench.run_dir(root, arm, seed)
    for stage, ious in (("sft", sft_ious), ("grpo", grpo_ious)):
        (folder / "eval" / stage).mkdir(parents=True)
        lines = [{"query_id": f"v{i}#0", "video_id": f"v{i}", "query": "q", "gt": [[0.0, 1.0]], "pred": None,
                  "iou": iou, "output": "x"} for i, iou in enumerate(ious)]  # fmt: skip
        (folder / "eval" / stage / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = {stage: {"R1@0.5": r1, "mIoU": miou} for stage, (r1, miou) in stages.items()}
    records = [[{"query_id": f"v{i}#0", "iou": iou} for i, iou in enumerate(ious)] for ious in (sft_ious, grpo_ious)]
    summary["grpo_vs_sft"] = {"mIoU_change": demo.paired_change(*records)}
    summary["seconds"] = seconds
    # Its check failed every 150 steps from 300 on until it passed at warm_steps (threshold 22 + 25).
    checks = [{"step": step, "score": 30.0} for step in range(300, warm_steps, 150)]
    checks.append({"step": warm_steps, "score": 80.0})
    summary["warm_start_check"] = {"validation_constant_R1@0.5": 22.0, "checks": checks, "passed": True,
                                   "steps": warm_steps}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def test_the_bench_table_from_runs_with_known_numbers(tmp_path, capsys):
    base = {"random": (0, 0), "constant": (20, 20), "blank": (10, 8)}
    # timezero: seed 1's warm start clears max(constant 20, blank 10) by 15 (R1@0.5 40), seed 2's does not (30).
    write_run(tmp_path, "timezero", 1, {**base, "sft": (40, 35), "grpo": (60, 50)}, [0.5, 0.0, 0.25], [1.0, 0.0, 0.5])
    # seed 2's check trained it on to 600 steps.
    write_run(tmp_path, "timezero", 2, {**base, "sft": (30, 25), "grpo": (50, 45)}, [0.5, 0.5, 0.5], [0.5, 1.0, 0.5],
              warm_steps=600, seconds=400.0)  # fmt: skip
    write_run(tmp_path, "timelens", 1, {**base, "sft": (45, 40), "grpo": (70, 55)}, [0.5, 0.0, 0.25], [1.0, 0.5, 0.5])
    # timelens seed 2 not finished: left out of its numbers.
    assert demo_bench.main(["--output_dir", str(tmp_path), "--arms", "timezero", "timelens", "--seeds", "1", "2",
                            "--table"]) == 0  # fmt: skip
    table = json.loads((tmp_path / "bench.json").read_text())
    zero, lens = table["arms"]["timezero"], table["arms"]["timelens"]
    assert zero["warm_start_clears"] == {"count": 1, "of": 2, "seeds": [1]}
    assert zero["stages"]["grpo"]["R1@0.5"] == {"min": 50, "median": 55.0, "max": 60}
    assert zero["grpo_minus_sft"]["median"] == pytest.approx((25.0 + 50.0 / 3) / 2, abs=0.01)
    assert lens["seeds_done"] == [1] and lens["warm_start_clears"]["count"] == 1
    # timelens − timezero on seed 1, per query: (0, +50, 0) points.
    versus = lens["grpo_minus_timezero"]["per_seed"]["1"]
    assert versus["mean"] == pytest.approx(16.67, abs=0.01)
    assert versus["standard_error"] == pytest.approx(round(stdev([0.0, 50.0, 0.0]) / 3**0.5, 2))
    text = (tmp_path / "bench.md").read_text()
    assert "| timezero | 2 | 1 of 2 | 35.0 (30.0–40.0) | 55.0 (50.0–60.0) |" in text
    assert zero["warm_start_steps"] == {"per_seed": {"1": 300, "2": 600}, "min": 300, "median": 450.0, "max": 600}
    assert text.splitlines()[2].endswith("| 450 (300–600) |") and zero["stale_seeds"] == []
    # Last validation check (80 in every fixture run) − held-out sft R1@0.5 (40, 30, 45); wall times 100, 400, 100.
    assert table["validation_minus_held_out"] == {"runs": 3, "sd": pytest.approx(stdev([40.0, 50.0, 35.0])),
                                                  "min": 35.0, "median": 40.0, "max": 50.0}  # fmt: skip
    assert "over 3 runs: SD 7.64 (+35.00 to +50.00)." in text
    assert "Wall time per run: 100–400 s (median 100 s)." in text
    # A run whose recorded check would end elsewhere under today's margin is marked in the table until redone.
    summary = json.loads((tmp_path / "timezero" / "seed2" / "summary.json").read_text())
    summary["warm_start_check"]["checks"][0]["score"] = 50.0  # would pass at 300, recorded to pass at 600
    (tmp_path / "timezero" / "seed2" / "summary.json").write_text(json.dumps(summary))
    demo_bench.main(["--output_dir", str(tmp_path), "--arms", "timezero", "--seeds", "1", "2", "--table"])
    assert json.loads((tmp_path / "bench.json").read_text())["arms"]["timezero"]["stale_seeds"] == [2]
    assert "| timezero | 2 (1 stale) | 1 of 2 |" in (tmp_path / "bench.md").read_text()
    assert text in capsys.readouterr().out


def test_a_finished_run_is_redone_only_where_the_checks_margin_moves_its_end(tmp_path, monkeypatch):
    def record(scores, passed):
        checks = [{"step": 300 + 150 * i, "score": score} for i, score in enumerate(scores)]
        return {"validation_constant_R1@0.5": 22.0, "threshold": 37.0, "checks": checks, "passed": passed,
                "steps": checks[-1]["step"] if passed else 900}  # fmt: skip

    holds = demo_bench.check_still_holds
    assert holds(record([55.5], True), 25.0)  # 55.5 >= 47: passes at 300 as it did
    assert not holds(record([39.5], True), 25.0)  # 39.5 < 47: would train on past 300
    assert holds(record([31.5, 76.0], True), 25.0)  # fails at 300, passes at 450 under both margins
    assert holds(record([47.0], True), 25.0)  # reaching the threshold passes
    assert not holds(record([10.0, 30.0], True), 25.0)
    assert holds(record([10.0, 12.0, 14.0, 16.0, 18.0], False), 25.0)  # never passed under either: same 900 steps
    assert not holds(record([10.0, 40.0], False), 2.0)  # a smaller margin would have stopped it at 450
    assert holds(None, 25.0)  # no check ran (--warm_start_check off)

    monkeypatch.setattr(demo, "WARM_START_MARGIN", 25.0)
    for seed, scores in ((1, [55.5]), (2, [39.5])):
        folder = demo_bench.run_dir(tmp_path, "timezero", seed)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"warm_start_check": record(scores, True)}))
    (tmp_path / "timezero" / "seed2.stale1").mkdir()  # an earlier stale run is kept too
    ran = []
    monkeypatch.setattr(demo_bench, "run_arm", lambda output_dir, arm, seed, extra: ran.append((arm, seed)) or 0)
    assert demo_bench.run_all(tmp_path, ["timezero"], [1, 2, 3], 1, []) == []
    assert sorted(ran) == [("timezero", 2), ("timezero", 3)]
    stale = tmp_path / "timezero" / "seed2.stale2" / "summary.json"
    assert json.loads(stale.read_text())["warm_start_check"]["checks"][0]["score"] == 39.5
    assert (tmp_path / "timezero" / "seed1" / "summary.json").is_file()


@pytest.mark.slow
def test_the_warm_start_trains_on_until_it_beats_the_constant_baseline_on_validation(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from open_r1.modeling import build_tiny_model
    from open_r1.signals import validation_gate

    monkeypatch.setitem(demo.SPLITS, "test", (4, 2))
    monkeypatch.setattr(demo, "VALIDATION", (6, 3))
    splits = demo.make_data(tmp_path / "data", train_videos=8)
    cache = tmp_path / "data" / "cache"
    random_dir = build_tiny_model(tmp_path / "random", seed=0)
    prompt = {"timestamps": "mrope", "no_think": False}

    def weights(folder):
        return load_file(str(folder / "model.safetensors"))

    def same(a, b):
        return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    plain = demo.train_warm_start(random_dir, splits["train"], cache, tmp_path / "plain", 0, 4, 4, prompt=prompt)
    # A warm start that passes at --sft_steps trains exactly as without the check.
    monkeypatch.setattr(demo, "WARM_START_MARGIN", -1000.0)
    passed, record = demo.checked_warm_start(random_dir, splits, cache, tmp_path / "pass", 0, 4, 4, prompt)
    assert record["passed"] and record["steps"] == 4 and [c["step"] for c in record["checks"]] == [4]
    assert same(weights(passed), weights(plain))
    # One that never passes trains on to 3x, checked every half --sft_steps, and leaves no checkpoint behind.
    monkeypatch.setattr(demo, "WARM_START_MARGIN", 1000.0)
    never, record = demo.checked_warm_start(random_dir, splits, cache, tmp_path / "never", 0, 4, 4, prompt)
    assert not record["passed"] and record["steps"] == 12
    assert [c["step"] for c in record["checks"]] == [4, 6, 8, 10, 12]
    assert record["threshold"] == record["validation_constant_R1@0.5"] + 1000.0
    assert not list(never.glob("checkpoint-*"))
    assert not same(weights(never), weights(plain))
    # Scoring does not change the training that follows (the gate also puts the random state back): the same run with
    # a score that evaluates nothing ends in the same weights.
    quiet = validation_gate(lambda folder, step: 0.0, 1e9, 4, 2)
    unscored = demo.train_warm_start(random_dir, splits["train"], cache, tmp_path / "unscored", 0, 4, 4,
                                     prompt=prompt, gate=quiet)  # fmt: skip
    assert [c["step"] for c in quiet.checks] == [4, 6, 8, 10, 12]
    assert same(weights(unscored), weights(never))
