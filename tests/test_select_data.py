"""python -m open_r1.select_data: sample through the training rollout, keep the queries whose rewards disagree."""

import json

import pytest
from _entry_points import common_args, tiny_setup

from open_r1 import rewards
from open_r1.data import load_annotations
from open_r1.select_data import REPORT_FILE, SELECTED_FILE, SelectionArguments, cli, decide, write_selection


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory, "select")


@pytest.fixture
def by_query(setup, monkeypatch):
    """A reward that is the same for all 8 samples of the first query and differs between the samples of the
    others (it reads the sample's position in its batch), so the selection has a known answer."""
    first = load_annotations(setup[1])[0]["query_id"]
    calls = []

    def by_query_reward(completions, query_id, **kwargs):
        calls.append(len(completions))
        return [0.5 if q == first else float(i % 3) for i, q in enumerate(query_id)]

    monkeypatch.setitem(rewards.REWARD_FUNCS, "by_query", by_query_reward)
    return first, calls


def select(setup, out, *extra):
    args = ["--num_generations", "8", "--max_completion_length", "6", "--reward_funcs", "by_query", "format"]
    return cli(common_args(setup, out, *args, "--per_device_train_batch_size", "16", *extra))


def score_lines(out):
    return [
        json.loads(line) for path in sorted(out.glob("scores.rank*.jsonl")) for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_equal_rewards_are_dropped_differing_kept_and_the_report_matches_the_file(setup, by_query, tmp_path):
    first, calls = by_query
    rows = load_annotations(setup[1])
    out = tmp_path / "selection"
    report = select(setup, out)
    # Every query sampled 8 times through the rollout, 2 queries per rollout (16 rows).
    assert calls == [16] * (len(rows) // 2)
    scores = {s["query_id"]: s for s in score_lines(out)}
    assert set(scores) == {row["query_id"] for row in rows}
    assert scores[first]["rewards"]["by_query_reward"] == [0.5] * 8 and scores[first]["reward_std"] == 0.0
    assert all(len(s["total"]) == 8 for s in scores.values())
    counts = report["counts"]
    assert counts == {"queries": len(rows), "kept": len(rows) - 1, "unscored": 0, "equal_rewards": 1, "low_std": 0,
                      "solved": 0}  # fmt: skip
    assert report == json.loads((out / REPORT_FILE).read_text())
    # The filtered file is a valid annotation file holding exactly the kept queries.
    kept = load_annotations(out / SELECTED_FILE)
    assert len(kept) == counts["kept"] == len(report["kept_query_ids"])
    assert first not in report["kept_query_ids"]
    source = {row["query_id"]: row for row in rows}
    assert [(r["video_id"], r["query"], r["windows"]) for r in kept] == [
        (source[q]["video_id"], source[q]["query"], source[q]["windows"]) for q in report["kept_query_ids"]
    ]
    assert report["signal"]["zero_std_share"] == pytest.approx(1 / len(rows))


@pytest.mark.slow
def test_a_killed_run_resumes_and_other_thresholds_only_refilter(setup, by_query, tmp_path):
    _, calls = by_query
    rows = load_annotations(setup[1])
    out = tmp_path / "selection"
    select(setup, out)
    path = out / "scores.rank0.jsonl"
    lines = path.read_text().splitlines()
    # Killed after the first rollout, mid-way through writing a line.
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    calls.clear()
    select(setup, out)
    assert calls == [16] * ((len(rows) - 2) // 2)
    assert sorted(s["query_id"] for s in score_lines(out)) == sorted(r["query_id"] for r in rows)
    # Everything scored: a stricter threshold refilters without sampling.
    calls.clear()
    report = select(setup, out, "--min_reward_std", "100")
    assert calls == []
    assert report["counts"]["kept"] == 0 and report["counts"]["low_std"] == len(rows) - 1
    assert not (out / SELECTED_FILE).exists() and report["selected_file"] is None


@pytest.mark.slow
def test_scores_sampled_another_way_are_not_mixed(setup, by_query, tmp_path):
    out = tmp_path / "selection"
    select(setup, out)
    with pytest.raises(ValueError, match="temperature"):
        select(setup, out, "--temperature", "0.7")
    report = select(setup, out, "--temperature", "0.7", "--overwrite_scores", "true")
    assert report["config"]["temperature"] == 0.7


def test_decision_rules():
    score = {"reward_std": 0.2, "mean_iou": 0.5}
    assert decide(score, 0.0, 1.0) == "kept"
    assert decide({**score, "reward_std": 5e-9}, 0.0, 1.0) == "equal_rewards"
    assert decide(score, 0.3, 1.0) == "low_std"
    assert decide(score, 0.0, 0.4) == "solved"
    with pytest.raises(ValueError, match="min_reward_std"):
        SelectionArguments(min_reward_std=-1)
    with pytest.raises(ValueError, match="max_mean_iou"):
        SelectionArguments(max_mean_iou=1.5)


def test_unscored_queries_stop_the_filter(tmp_path):
    rows = [{"query_id": "a#0", "video_id": "a", "duration": 5.0, "windows": [[1.0, 2.0]], "raw_query": "x"}]
    with pytest.raises(RuntimeError, match="1 queries have no score"):
        write_selection(rows, {}, SelectionArguments(), tmp_path, {})


@pytest.mark.slow
def test_a_process_holding_part_of_a_group_scores_one_query_per_rollout(setup, by_query, tmp_path):
    """per_device_train_batch_size 4 < num_generations 8 (TRL accepts it with 2 accumulation steps): each rollout
    samples one query's 8 completions; every query is scored (it divided by zero before)."""
    _, calls = by_query
    rows = load_annotations(setup[1])
    out = tmp_path / "part_of_a_group"
    args = ["--num_generations", "8", "--max_completion_length", "6", "--reward_funcs", "by_query", "format"]
    cli(common_args(setup, out, *args, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"))
    assert calls == [8] * len(rows)
    assert {s["query_id"] for s in score_lines(out)} == {row["query_id"] for row in rows}


class StandInTrainer:
    """What score_queries uses of a trainer, for rank ``rank`` of ``world``: each rollout's gathered rewards hold every
    rank's rows in rank order (as TRL gathers them); this rank's rows score ``query number + sample / 10``, the other
    ranks' rows -1, so a query that records another rank's rewards shows it."""

    def __init__(self, rank: int, world: int, per_device: int, generations: int):
        import types

        self.accelerator = types.SimpleNamespace(process_index=rank, num_processes=world, is_main_process=rank == 0)
        self.args = types.SimpleNamespace(per_device_train_batch_size=per_device)
        self.num_generations = generations
        self.reward_func_names = ["iou_reward"]
        self.model = types.SimpleNamespace(train=lambda: None)
        self.rollouts = 0

    def _generate_and_score_completions(self, inputs):
        import torch

        self.rollouts += 1
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        total = [-1.0] * (world * len(inputs))
        for index, row in enumerate(inputs):
            total[rank * len(inputs) + index] = (
                int(row["query_id"].split("_")[1]) + (index % self.num_generations) / 10
            )
        rewards = torch.tensor(total).view(-1, 1)
        self.last_rollout = {"rewards_per_func": rewards, "total": rewards[:, 0], "spans": [None] * len(total)}


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_records_its_own_rewards_and_scores_its_last_partial_rollout(tmp_path, rank):
    """5 queries over 2 ranks, 2 queries per rollout (8 rows of groups of 4): rank 0 scores 3 queries, rank 1 2, each
    with its own 4 rewards, the last rollout partial (rank 0: 2 + 1 padded; rank 1: 2 + none, padded twice)."""
    from open_r1.select_data import score_queries

    rows = [{"query_id": f"q_{i}", "video_id": f"v{i}", "windows": [[1.0, 2.0]], "duration": 5.0} for i in range(5)]
    trainer = StandInTrainer(rank, world=2, per_device=8, generations=4)
    score_queries(trainer, rows, rows, tmp_path, done=set())
    scores = score_lines(tmp_path)
    mine = [f"q_{i}" for i in range(rank, 5, 2)]
    assert [s["query_id"] for s in scores] == mine  # every query of this rank, the last partial rollout's too
    for score in scores:
        number = int(score["query_id"].split("_")[1])
        assert score["total"] == [number + k / 10 for k in range(4)], score  # its own rewards, not another rank's
    assert trainer.rollouts == 2  # ranks make the same number of rollouts (the rewards are gathered)


# Every setting that changes what a query's samples are: a resume must not mix scores sampled another way.
SAMPLING_SETTINGS = ("model", "weights", "annotation_file", "dataset", "split", "num_generations", "temperature", "top_k",
                     "top_p", "min_p", "repetition_penalty", "max_completion_length", "reward_funcs", "reward_weights",
                     "no_think", "video_first", "video", "position_layout")  # fmt: skip


@pytest.mark.parametrize("setting", SAMPLING_SETTINGS)
def test_a_resume_refuses_every_setting_that_changes_the_samples(tmp_path, setting):
    from open_r1.select_data import CONFIG_FILE, check_config

    config = {key: f"{key} before" for key in SAMPLING_SETTINGS} | {"seed": 1}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    check_config(tmp_path, {**config, "seed": 2}, overwrite=False)  # another seed: the same distribution, resumed
    with pytest.raises(ValueError, match=f"{setting}: '{setting} before' -> 'changed'"):
        check_config(tmp_path, {**config, setting: "changed"}, overwrite=False)


def test_decision_boundaries():
    # A mean IoU exactly at --max_mean_iou is not "solved"; a std exactly at --min_reward_std is kept.
    assert decide({"reward_std": 0.2, "mean_iou": 0.8}, 0.0, 0.8) == "kept"
    assert decide({"reward_std": 0.2, "mean_iou": 0.8 + 1e-9}, 0.0, 0.8) == "solved"
    assert decide({"reward_std": 0.2, "mean_iou": 0.5}, 0.2, 1.0) == "kept"
    assert decide({"reward_std": 0.2 - 1e-9, "mean_iou": 0.5}, 0.2, 1.0) == "low_std"
    # Equal rewards by TRL's tolerance (isclose to 0: 1e-8), not by a looser one: a spread of 1e-6 is a signal.
    assert decide({"reward_std": 1e-8, "mean_iou": 0.5}, 0.0, 1.0) == "equal_rewards"
    assert decide({"reward_std": 1e-6, "mean_iou": 0.5}, 0.0, 1.0) == "kept"


def test_a_query_no_reward_scored_is_dropped_as_unscored(tmp_path):
    """Every reward returned None for its samples (a reward meant for another dataset): its std is null, not 0 (it is
    not "all rewards equal"), the JSON stays valid, and the selection drops it as unscored."""
    import math

    from open_r1.select_data import query_score

    row = {"query_id": "a#0", "video_id": "a", "duration": 5.0, "windows": [[1.0, 2.0]], "raw_query": "x"}
    score = query_score(row, {"iou_reward": [math.nan] * 4}, [math.nan] * 4, [None] * 4)
    assert score["reward_std"] is None and score["reward_mean"] is None
    json.loads(json.dumps(score, allow_nan=False))
    assert decide(score, 0.0, 1.0) == "unscored"
    other = {**row, "query_id": "b#0"}
    scores = {"a#0": score, "b#0": query_score(other, {"iou_reward": [0.1, 0.2, 0.3, 0.4]}, [0.1, 0.2, 0.3, 0.4],
                                               [None] * 4)}  # fmt: skip
    report = write_selection([row, other], scores, SelectionArguments(), tmp_path, {})
    assert report["counts"]["unscored"] == 1 and report["kept_query_ids"] == ["b#0"]
    assert report["signal"]["zero_std_share"] == 0.0  # over the scored query only


@pytest.mark.slow
def test_an_edited_annotation_file_is_scored_again_where_it_changed(setup, by_query, tmp_path):
    """The same query ids, one query's window edited: its old score (sampled against the old window's IoU) is not
    reused; it alone is sampled again and the report uses the new content."""
    import shutil

    _, calls = by_query
    annotation = tmp_path / "annotations.json"
    shutil.copy(setup[1], annotation)
    rows = load_annotations(annotation)
    out = tmp_path / "selection"
    select(setup, out, "--annotation_file", str(annotation))
    data = json.loads(annotation.read_text())
    video = rows[-1]["video_id"]
    data[video]["timestamps"][0] = [0.5, 1.5]
    annotation.write_text(json.dumps(data))
    calls.clear()
    report = select(setup, out, "--annotation_file", str(annotation))
    assert calls == [16]  # one rollout: the edited query (and a padding copy)
    assert report["counts"]["queries"] == len(rows)
    edited = [s for s in score_lines(out) if s["query_id"] == rows[-1]["query_id"]]
    assert len(edited) == 2 and edited[0]["input"] != edited[1]["input"]  # the old line is kept, not reused
    selected = json.loads((out / SELECTED_FILE).read_text())
    assert selected[video]["timestamps"][0] == [0.5, 1.5]


@pytest.mark.slow
def test_a_selection_that_keeps_nothing_says_why(setup, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setitem(rewards.REWARD_FUNCS, "flat", lambda completions, **kwargs: [0.5] * len(completions))
    out = tmp_path / "flat"
    args = ["--num_generations", "8", "--max_completion_length", "6", "--reward_funcs", "flat"]
    with caplog.at_level(logging.WARNING):
        report = cli(common_args(setup, out, *args, "--per_device_train_batch_size", "16"))
    assert report["counts"]["kept"] == 0
    assert "kept no query: the samples of every query got equal rewards" in caplog.text
    assert "does the checkpoint write '<answer>a to b</answer>'" in caplog.text


def difficulty_scores(ds: list[float]) -> tuple[list[dict], dict]:
    rows = [{"query_id": f"v{i}#0", "video_id": f"v{i}", "duration": 10.0, "windows": [[1.0, 2.0]], "raw_query": "q"}
            for i in range(len(ds))]  # fmt: skip
    scores = {
        row["query_id"]: {"reward_std": 0.2, "mean_iou": 1.0 - d, "span_spread": 0.5} for row, d in zip(rows, ds)
    }
    return rows, scores


def test_difficulty_selection_draws_around_the_centre(tmp_path):
    """A narrow Gaussian (width 0.05) at d = 0.5 over d = 0.00, 0.05, ..., 0.95: the 3 drawn are the 3 nearest."""
    rows, scores = difficulty_scores([i / 20 for i in range(20)])
    args = SelectionArguments(mode="difficulty", target_count=3, difficulty_centre=0.5, difficulty_width=0.05)
    report = write_selection(rows, scores, args, tmp_path, {"seed": 0})
    assert sorted(report["kept_query_ids"]) == ["v10#0", "v11#0", "v9#0"]
    assert report["counts"] == {"queries": 20, "kept": 3, "unscored": 0, "not_drawn": 17}
    assert report["difficulty_histogram"] == {"before": [2] * 10, "after": [0, 0, 0, 0, 1, 2, 0, 0, 0, 0]}
    assert len(load_annotations(tmp_path / SELECTED_FILE)) == 3


def test_difficulty_selection_divides_by_the_density_of_d(tmp_path):
    """90 easy queries (d 0.1) and 10 hard ones (d 0.9) under a flat Gaussian: the weights are 1 / density (both
    clusters weigh the same in all), so a draw of 20 takes 7-8 hard ones on average (without replacement, the 10 run
    out), where the pool's own share would give 2."""
    rows, scores = difficulty_scores([0.1] * 90 + [0.9] * 10)
    args = SelectionArguments(mode="difficulty", target_count=20, difficulty_centre=0.5, difficulty_width=1e6)
    hard = []
    for seed in range(10):
        report = write_selection(rows, scores, args, tmp_path, {"seed": seed})
        hard.append(report["difficulty_histogram"]["after"][9])
    assert 6 <= sum(hard) / len(hard) <= 9 and min(hard) >= 5, hard
    # The same scores and seed draw the same queries; a switch back to filter mode samples nothing new.
    again = write_selection(rows, scores, args, tmp_path, {"seed": 9})
    assert again["difficulty_histogram"]["after"][9] == hard[-1]
    assert write_selection(rows, scores, SelectionArguments(), tmp_path, {})["counts"]["kept"] == 100


def test_difficulty_mode_needs_a_target():
    with pytest.raises(ValueError, match="--mode difficulty needs --target_count"):
        SelectionArguments(mode="difficulty")
    with pytest.raises(ValueError, match="--mode must be filter or difficulty"):
        SelectionArguments(mode="hard")
