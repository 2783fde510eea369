"""open_r1.evaluation.metrics: R1@m / mIoU tables and failure accounting (no model needed)."""

import pytest

from open_r1.evaluation import (
    FAILURE_KINDS,
    compute_metrics,
    format_table,
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


def test_format_table_shows_failures():
    table = format_table(compute_metrics([rec(0.6), rec(0.0, "missing_video")]), title="demo")
    assert table.splitlines()[0] == "demo"
    assert "50.00" in table and "missing_video 1" in table
