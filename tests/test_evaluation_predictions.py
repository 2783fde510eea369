"""open_r1.evaluation.predictions: rescoring, merging and reading predictions files (no model needed)."""

import json

import pytest

from open_r1.evaluation import (
    merge_predictions,
    read_predictions,
    rescore_predictions,
    rescore_record,
)
from open_r1.jsonl import repair_tail


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
    # (A line cut short by a kill stops --rescore, naming file:line: test_evaluation_runner.py.)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
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


def test_rescore_cli_prints_the_table(predictions_file, capsys):
    metrics = evaluate_cli().main(["--rescore", str(predictions_file)])
    out = capsys.readouterr().out
    assert "R1@0.3" in out and "60.00" in out and "48.00" in out and "5 queries" in out
    assert metrics["mIoU"] == 48.0


def test_rescore_record_keeps_a_video_failure():
    record = rescore_record(line("c#0", [[1.0, 2.0]], error="decode_error"))
    assert record["error"] == "decode_error" and record["iou"] == 0.0


def evaluate_cli():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("evaluate_cli", Path(__file__).parents[1] / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_rescore_cli_passes_allow_mixed(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    runs = [
        dict(line("a#0", [[0.0, 10.0]], pred=[0.0, 5.0]), run_id="r1"),
        dict(line("b#0", [[1.0, 2.0]]), run_id="r2"),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    cli = evaluate_cli()
    with pytest.raises(ValueError, match="mixes predictions of 2 runs"):
        cli.main(["--rescore", str(path)])
    metrics = cli.main(["--rescore", str(path), "--allow_mixed"])  # before: the flag was dropped, same refusal
    assert metrics["num_queries"] == 2 and metrics["mIoU"] == 25.0


def test_rescore_keeps_the_run_fields_and_says_it_replaces(predictions_file, caplog):
    import logging

    folder = predictions_file.parent
    (folder / "metrics.json").write_text(json.dumps({"mIoU": 99.0, "run": "charades_test", "model_base": "ckpt"}))
    with caplog.at_level(logging.INFO):
        metrics = rescore_predictions(predictions_file)
    written = json.loads((folder / "metrics.json").read_text())
    assert written == metrics and written["mIoU"] == 48.0
    assert written["run"] == "charades_test" and written["model_base"] == "ckpt"
    assert f"replacing {folder / 'metrics.json'} and eval_plot.png" in caplog.text
