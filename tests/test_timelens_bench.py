"""TimeLens-Bench annotations and the importers of other tools' outputs (lmms-eval submissions, TimeLens results)."""

import json
import logging

import pytest

from open_r1.data import TIMELENS_BENCH, load_annotations, load_split
from open_r1.evaluation import rescore_predictions
from open_r1.evaluation.importers import import_predictions, main
from open_r1.evaluation.predictions import PredictionsFileError

BENCH = {
    "AO8RW": {"duration": 33.67, "spans": [[0.0, 6.9], [12.5, 20.0]], "queries": ["  A person  opens a door.", "x."]},
    "Y6R7T": {"duration": 20.1, "spans": [[2.0, 5.5]], "queries": ["someone laughs"]},
}


@pytest.fixture
def bench_dir(tmp_path, monkeypatch):
    (tmp_path / "charades-timelens.json").write_text(json.dumps(BENCH))
    monkeypatch.setenv("TIMELENS_BENCH_DIR", str(tmp_path))
    return tmp_path


def test_timelens_bench_json_one_query_per_span_normalised_as_timelens_does(bench_dir, caplog):
    with caplog.at_level(logging.WARNING):
        rows = load_split("charades_timelens", "test")
    assert [(r["query_id"], r["query"], r["windows"]) for r in rows] == [
        ("AO8RW#0", "A person opens a door", [[0.0, 6.9]]),  # whitespace folded, periods stripped, case kept
        ("AO8RW#1", "x", [[12.5, 20.0]]),
        ("Y6R7T#0", "someone laughs", [[2.0, 5.5]]),
    ]
    assert rows[0]["raw_query"] == "  A person  opens a door." and rows[0]["duration"] == 33.67
    # The paper's size is checked: 3 queries over 2 videos is not Charades-TimeLens (3,363 over 1,313).
    assert "holds 3 queries over 2 videos; the TimeLens paper reports 3363 queries over 1313 videos" in caplog.text


def test_the_paper_sizes_pass_the_check(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TIMELENS_BENCH_DIR", str(tmp_path))
    assert TIMELENS_BENCH["activitynet_timelens"][1] == 4500
    data = {f"v{i}": {"duration": 30.0, "spans": [[1.0, 2.0]] * 9, "queries": list("abcdefghi")} for i in range(500)}
    (tmp_path / "activitynet-timelens.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert len(load_split("activitynet_timelens", "test")) == 4500
    assert "TimeLens paper reports" not in caplog.text


def test_a_missing_bench_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMELENS_BENCH_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf download TencentARC/TimeLens-Bench .* TIMELENS_BENCH_DIR"):
        load_split("qvhighlights_timelens", "test")


def test_training_and_evaluation_take_the_bench_by_name(bench_dir):
    from open_r1.configs import EvalArguments
    from open_r1.evaluation.runner import resolve_queries
    from open_r1.grpo_video import load_rows

    args = EvalArguments(model_base="m", dataset="charades_timelens", video_dir=str(bench_dir))
    rows, name = resolve_queries(args)
    assert name == "charades_timelens_test" and len(rows) == 3

    class Script:  # the two fields load_rows reads, as GRPOScriptArguments has them
        annotation_file, dataset, split, max_train_samples = None, "charades_timelens", "test", None

    assert [r["query_id"] for r in load_rows(Script)] == [r["query_id"] for r in rows]
    assert len(load_annotations(bench_dir / "charades-timelens.json")) == 3  # and by path (--annotation_file)


LMMS = {
    "AO8RW.mp4>>>person opens a door>>>[0.0, 6.9]": "The event happens in 0.0 - 6.9 seconds.",
    "AO8RW.mp4>>>person opens a door>>>[12.5, 20.0]": "<think>late</think><answer>20 to 12.5</answer>",
    "Y6R7T.mp4>>>someone >>> laughs>>>[2.0, 5.5]": "no idea",
}


def test_lmms_eval_submission_becomes_predictions_scored_under_every_protocol(tmp_path):
    source = tmp_path / "submission.json"
    source.write_text(json.dumps(LMMS))
    target = import_predictions("lmms-eval", source, tmp_path / "run")
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["video_id"], r["query"], r["gt"], r["output"]) for r in lines] == [
        ("AO8RW", "person opens a door", [[0.0, 6.9]], LMMS[next(iter(LMMS))]),
        ("AO8RW", "person opens a door", [[12.5, 20.0]], "<think>late</think><answer>20 to 12.5</answer>"),
        ("Y6R7T", "someone >>> laughs", [[2.0, 5.5]], "no idea"),  # the query may hold the separator
    ]
    assert len({r["query_id"] for r in lines}) == 3  # the same query twice in one video stays two lines
    metrics = rescore_predictions(target, protocol="lmms-eval")
    assert metrics["R1@0.7"] == round(200 / 3, 2)  # the reversed pair is swapped; "no idea" scores 0, counted
    assert metrics["protocols"]["timelens"]["R1@0.7"] == round(100 / 3, 2)  # TimeLens does not swap
    assert metrics["protocols"]["timezero"]["R1@0.7"] == round(100 / 3, 2)
    assert metrics["protocols"]["timezero-original"]["num_scored"] == 1  # only "20 to 12.5" parses; it scores 0


def test_timelens_results_json_lines_with_timestamps_or_answers(tmp_path):
    source = tmp_path / "results.jsonl"
    entries = [
        {"v1.mp4>>>a man runs>>>[[1.0, 4.0]]": {"timestamps": [[1.0, 4.0]], "answers": "1.0 - 4.0 seconds"}},
        {"v1.mp4>>>a man stops>>>[[5.0, 8.0]]": {"timestamps": [[6.0, 8.0]]}},
    ]
    source.write_text("".join(json.dumps(e) + "\n" for e in entries))
    annotations = tmp_path / "bench.json"
    annotations.write_text(json.dumps({"v1": {"duration": 10.0, "spans": [[1.0, 4.0]], "queries": ["a man runs"]}}))
    target = main(["timelens", str(source), "--output_dir", str(tmp_path / "run"), "--annotation_file",
                   str(annotations)])  # fmt: skip
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["output"], r["pred"], r["duration"]) for r in lines] == [
        ("1.0 - 4.0 seconds", None, 10.0), (None, [6.0, 8.0], 10.0)
    ]  # fmt: skip
    metrics = rescore_predictions(target, protocol="timelens")
    assert metrics["mIoU"] == round(100 * (1 + 2 / 3) / 2, 2)


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("lmms-eval", {"AO8RW.mp4>>>[0, 1]": "x"}, "entry 'AO8RW.mp4>>>\\[0, 1\\]'.*not 'video>>>query>>>"),
        ("lmms-eval", {"a.mp4>>>q>>>[0, nan]": "x"}, "ground truth '\\[0, nan\\]' is not \\[start, end\\] numbers"),
        ("lmms-eval", {"a.mp4>>>q>>>[0, 1]": ["x"]}, "the answer is a JSON list, expected text"),
        ("lmms-eval", ["a"], "the file: a JSON list, expected an object"),
        ("timelens", {"a.mp4>>>q>>>[[0, 1]]": {"answer": "x"}}, "expected an object with 'answers' and/or 'timest"),
        ("timelens", {"a.mp4>>>q>>>[[0, 1]]": {"timestamps": [[0]]}}, "'timestamps' \\[\\[0\\]\\] is not a list of"),
        ("timelens", {}, "no entries"),
    ],
)
def test_an_importer_never_guesses_a_field(tmp_path, fmt, content, message):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(content))
    with pytest.raises(PredictionsFileError, match=message):
        import_predictions(fmt, source, tmp_path / "run")
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_an_importer_names_the_bad_line_and_never_replaces_predictions(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"a.mp4>>>q>>>[[0, 1]]": {"answers": "0 - 1"}}\n{"b.mp4>>>q>>>[[0, 1]]": {"answers": \n')
    with pytest.raises(SystemExit) as stop:
        main(["timelens", str(source), "--output_dir", str(tmp_path / "run")])
    assert stop.value.code == 2 and f"import: {source}: line 2: invalid JSON" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "predictions.jsonl").write_text("mine\n")
    source.write_text(json.dumps({"a.mp4>>>q>>>[0, 1]": "0 - 1"}))
    with pytest.raises(FileExistsError, match="exists; import into another --output_dir"):
        import_predictions("lmms-eval", source, tmp_path / "run")
    assert (tmp_path / "run" / "predictions.jsonl").read_text() == "mine\n"
