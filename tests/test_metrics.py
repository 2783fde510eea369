"""R1@m / mIoU tables, failure accounting, rescoring and predictions-file handling (no model needed)."""

import json

import pytest

from open_r1.evaluate import (
    FAILURE_KINDS,
    compute_metrics,
    format_table,
    merge_predictions,
    read_predictions,
    repair_tail,
    rescore_predictions,
    rescore_record,
    score_output,
)


def rec(iou, error=None, rule="answer"):
    return {"iou": iou, "error": error, "rule": rule if error is None else None}


# fmt: off
METRIC_TABLES = [
    # IoUs                              R1@0.3  R1@0.5  R1@0.7  mIoU
    ([0.8, 0.6, 0.4, 0.2],              75.0,   50.0,   25.0,   50.0),
    ([1.0],                             100.0,  100.0,  100.0,  100.0),
    ([0.0, 0.0],                        0.0,    0.0,    0.0,    0.0),
    ([0.3, 0.5, 0.7],                   100.0,  66.67,  33.33,  50.0),    # ties at each threshold count (IoU >= m)
    ([0.2999, 0.4999, 0.6999],          66.67,  33.33,  0.0,    49.99),   # just below each threshold does not
    ([0.9, 0.1, 0.35],                  66.67,  33.33,  33.33,  45.0),    # two decimals, rounded
]
# fmt: on


@pytest.mark.parametrize("ious, r03, r05, r07, miou", METRIC_TABLES)
def test_metric_table(ious, r03, r05, r07, miou):
    metrics = compute_metrics([rec(i) for i in ious])
    assert (metrics["R1@0.3"], metrics["R1@0.5"], metrics["R1@0.7"], metrics["mIoU"]) == (r03, r05, r07, miou)
    assert metrics["num_queries"] == len(ious)
    assert metrics["num_failed"] == 0


def test_failures_stay_in_the_denominator_and_are_counted_by_kind():
    records = [
        rec(0.8),
        rec(0.0, "no_answer"),
        rec(0.0, "missing_video"),
        rec(0.0, "decode_error"),
        rec(None, "generation_error"),
    ]
    metrics = compute_metrics(records)
    # Skipping the four failures (as the original evaluation did) would report 100 / 80; here they score IoU 0.
    assert metrics["R1@0.3"] == metrics["R1@0.7"] == 20.0
    assert metrics["mIoU"] == 16.0
    assert metrics["num_queries"] == 5
    assert metrics["num_failed"] == 4
    assert metrics["failures"] == {kind: 1 for kind in FAILURE_KINDS}


def test_a_failure_carrying_a_stale_iou_still_scores_zero():
    metrics = compute_metrics([rec(0.9), {"iou": 0.9, "error": "decode_error"}])
    assert metrics["R1@0.5"] == 50.0 and metrics["mIoU"] == 45.0


def test_fallback_parses_are_reported():
    records = [rec(0.5, rule="answer"), rec(0.5, rule="fallback"), rec(0.5, rule="fallback")]
    assert compute_metrics(records)["num_fallback_parses"] == 2


def test_no_records_is_an_error():
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics([])


# fmt: off
FLOAT_TIES = [
    # pred          gt              m     IoU in floating point: one or two ulps below m, yet exactly m on paper
    ((0.2, 2.3),    (0.2, 7.2),     0.3),  # 0.29999999999999993
    ((0.1, 0.3),    (0.1, 0.5),     0.5),  # 0.49999999999999994
    ((0.2, 2.3),    (0.2, 3.2),     0.7),  # 0.6999999999999998
]
# fmt: on


@pytest.mark.parametrize("pred, gt, m", FLOAT_TIES)
def test_float_ties_exactly_at_a_threshold_count(pred, gt, m):
    scored = score_output(f"<answer>{pred[0]} to {pred[1]}</answer>", [list(gt)])
    assert scored["iou"] < m  # the float noise this test is about
    assert compute_metrics([scored])[f"R1@{m:g}"] == 100.0


def test_several_ground_truth_windows_score_the_best_match():
    gt = [[0.0, 2.0], [10.0, 20.0]]
    assert score_output("<answer>10 to 18</answer>", gt)["iou"] == pytest.approx(0.8)
    assert score_output("<answer>0 to 4</answer>", gt)["iou"] == pytest.approx(0.5)


# fmt: off
OUTPUTS = [
    # output                                          pred          rule        error         IoU vs [2, 6]
    ("<think>x</think><answer>2.0 to 6.0</answer>",    [2.0, 6.0],  "answer",   None,         1.0),
    ("the event happens from 4 to 8 seconds",          [4.0, 8.0],  "fallback", None,         1 / 3),
    ("<answer>6 to 2</answer>",                        [6.0, 2.0],  "answer",   None,         0.0),  # reversed
    ("<answer>I cannot tell</answer>",                 None,        None,       "no_answer",  0.0),
    ("",                                               None,        None,       "no_answer",  0.0),
    (None,                                             None,        None,       "generation_error", 0.0),
]
# fmt: on


@pytest.mark.parametrize("output, pred, rule, error, iou", OUTPUTS)
def test_score_output(output, pred, rule, error, iou):
    scored = score_output(output, [[2.0, 6.0]])
    assert (scored["pred"], scored["rule"], scored["error"]) == (pred, rule, error)
    assert scored["iou"] == pytest.approx(iou)


def line(query_id, gt, output=None, pred=None, iou=0.0, error=None, rule=None):
    video_id = query_id.split("#")[0]
    return {
        "video_id": video_id,
        "query_id": query_id,
        "query": f"query {query_id}",
        "duration": 30.0,
        "gt": gt,
        "output": output,
        "pred": pred,
        "iou": iou,
        "rule": rule,
        "error": error,
    }


@pytest.fixture
def predictions_file(tmp_path):
    lines = [
        line("a#0", [[0.0, 10.0]], pred=[0.0, 5.0], iou=0.99),  # stale iou: recomputed to 0.5
        line("a#1", [[0.0, 10.0]], output="<answer>0 to 10</answer>"),  # no pred: output parsed -> 1.0
        line("b#0", [[5.0, 9.0], [20.0, 30.0]], output="roughly 21 to 30 s"),  # fallback, best window -> 0.9
        line("b#1", [[5.0, 9.0]], output="no idea", error="no_answer"),
        line("c#0", [[1.0, 2.0]], error="missing_video"),
        # An exact repeat of a#0 (a shard merged twice): reported and scored once. A repeat that differs is refused
        # by --rescore (test_reliability.py).
        line("a#0", [[0.0, 10.0]], pred=[0.0, 5.0], iou=0.99),
    ]
    path = tmp_path / "run" / "predictions.jsonl"
    path.parent.mkdir()
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"video_id": "d", "query_id": "d#0", "qu'  # killed
    path.write_text(text)
    return path


def test_rescore_recomputes_from_pred_or_output(predictions_file):
    metrics = rescore_predictions(predictions_file)
    # IoUs 0.5, 1.0, 0.9, 0 (no answer), 0 (missing video) over 5 queries.
    assert metrics["num_queries"] == 5
    assert (metrics["R1@0.3"], metrics["R1@0.5"], metrics["R1@0.7"]) == (60.0, 60.0, 40.0)
    assert metrics["mIoU"] == 48.0
    assert metrics["failures"]["no_answer"] == 1 and metrics["failures"]["missing_video"] == 1
    assert metrics["num_fallback_parses"] == 1
    written = json.loads((predictions_file.parent / "metrics.json").read_text())
    assert written == metrics
    assert (predictions_file.parent / "eval_plot.png").stat().st_size > 10_000


def test_rescore_cli_prints_the_table(predictions_file, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("evaluate_cli", Path(__file__).parents[1] / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    metrics = cli.main(["--rescore", str(predictions_file)])
    out = capsys.readouterr().out
    assert "R1@0.3" in out and "60.00" in out and "48.00" in out and "5 queries" in out
    assert metrics["mIoU"] == 48.0


def test_rescore_record_keeps_a_video_failure():
    record = rescore_record(line("c#0", [[1.0, 2.0]], error="decode_error"))
    assert record["error"] == "decode_error" and record["iou"] == 0.0


def test_format_table_shows_failures():
    table = format_table(compute_metrics([rec(0.6), rec(0.0, "missing_video")]), title="demo")
    assert table.splitlines()[0] == "demo"
    assert "50.00" in table and "missing_video 1" in table


def test_repair_tail_drops_only_a_cut_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"query_id": "a"}\n{"query_id": "b"}\n{"query_id": "c", "vi')
    repair_tail(path)
    assert path.read_text() == '{"query_id": "a"}\n{"query_id": "b"}\n'
    repair_tail(path)  # complete files are left alone
    assert path.read_text() == '{"query_id": "a"}\n{"query_id": "b"}\n'


def test_merge_predictions_orders_and_deduplicates(tmp_path):
    (tmp_path / "predictions.jsonl").write_text(json.dumps(line("q#2", [[0, 1]])) + "\n")
    (tmp_path / "predictions.rank0.jsonl").write_text(
        json.dumps(line("q#0", [[0, 1]])) + "\n" + json.dumps(line("q#2", [[0, 1]], error="decode_error")) + "\n"
    )
    (tmp_path / "predictions.rank1.jsonl").write_text(json.dumps(line("q#1", [[0, 1]])) + "\n")
    merged = merge_predictions(tmp_path, order=["q#0", "q#1", "q#2"])
    records = read_predictions(merged)
    assert [r["query_id"] for r in records] == ["q#0", "q#1", "q#2"]
    assert records[2]["error"] is None  # the line already in predictions.jsonl is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]
