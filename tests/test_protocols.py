"""Scoring protocols (open_r1.evaluation.protocols) against the conventions' own code and rules.

lmms-eval's parser and metric are the oracle, run from its released wheel (lmms-eval 0.7.3, fetched once into
tests/.oracles/ and checked against its sha256; not an install dependency). Only the two imports its task module
makes for logging and submission files are replaced by empty modules; the parsing and scoring code runs as shipped.
TimeLens's rules (first pair, no swap, dummy span, rounding) and TimeZero's original evaluation are written out here.
"""

import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from open_r1.evaluation.protocols import (
    PROTOCOLS,
    parse_lmms_eval,
    parse_timelens,
    parse_timezero_original,
    protocol_metrics,
    protocol_report,
    score_record,
)

ORACLE_DIR = Path(__file__).resolve().parent / ".oracles"
WHEEL = "lmms_eval-0.7.3-py3-none-any.whl"
WHEEL_SHA256 = "5709f9f9f56a8f5f22bf379571bd1c5e7702af5ae2bbb9637001c5dd91168895"


def _wheel() -> Path:
    path = ORACLE_DIR / WHEEL
    if not path.is_file():
        ORACLE_DIR.mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "lmms-eval==0.7.3", "-d", str(ORACLE_DIR), "-q"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0 or not path.is_file():
            message = f"could not fetch the lmms-eval wheel (the oracle): {done.stderr[-500:]}"
            if os.environ.get("CI"):
                pytest.fail(message)  # CI reaches the registry: a missing oracle there is a failure, not a skip
            pytest.skip(message)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == WHEEL_SHA256, f"{path} is not the lmms-eval 0.7.3 wheel the tests were written against"
    return path


def _load_task(name: str, tmp_path_factory):
    """lmms_eval/tasks/<name>/utils.py from the wheel, as a module."""
    folder = tmp_path_factory.mktemp(f"oracle_{name}")
    with zipfile.ZipFile(_wheel()) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(f"lmms_eval/tasks/{name}/")]
        wheel.extractall(folder, members)
    stubs = {
        "loguru": types.SimpleNamespace(logger=types.SimpleNamespace(info=print, warning=print, debug=print)),
        "lmms_eval": types.ModuleType("lmms_eval"),
        "lmms_eval.tasks": types.ModuleType("lmms_eval.tasks"),
        "lmms_eval.tasks._task_utils": types.ModuleType("lmms_eval.tasks._task_utils"),
        "lmms_eval.tasks._task_utils.file_utils": types.ModuleType("lmms_eval.tasks._task_utils.file_utils"),
    }
    stubs["lmms_eval.tasks._task_utils"].file_utils = stubs["lmms_eval.tasks._task_utils.file_utils"]
    with pytest.MonkeyPatch.context() as patch:
        for module, stub in stubs.items():
            if module not in sys.modules:
                patch.setitem(sys.modules, module, stub)
        spec = importlib.util.spec_from_file_location(f"oracle_{name}", folder / "lmms_eval/tasks" / name / "utils.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lmms_charades(tmp_path_factory):
    return _load_task("charades_sta", tmp_path_factory)


@pytest.fixture(scope="module")
def lmms_timelens(tmp_path_factory):
    return _load_task("timelens", tmp_path_factory)


def answers() -> list[str]:
    """A few hundred varied answers: the paper's format, prose, mm:ss, reversed and several pairs, none, unicode."""
    numbers = [("5.0", "11.6"), ("3.2", "8.1"), ("12", "7"), ("0.5", "2.25"), ("14", "20")]
    separators = [" to ", " - ", "–", " and ", " — ", " ~ ", "s - ", " until "]
    spans = [a + sep + b for (a, b), sep in itertools.product(numbers, separators)]
    spans += ["0:05 - 0:12", "1:02:03 - 1:02:09", "2s - 6s", "00:14 to 00:03"]
    frames = [
        "<think>the person stands up</think> <answer>{}</answer>",
        "<think>first 1.0 to 2.0, then later</think><answer>{}</answer>",
        "The event happens in {} seconds.",
        "It starts at 3.5 and ends at 9.25. Answer: {}",
        "{}",
        "happens in {}\nalso 20 - 30",
        "Stop! {} ? the end is near",
        "tomato at {} today",
        "A specific example is : 20.8 - 30.0 seconds. {}",
        "the answer: {}!",
    ]
    texts = [frame.format(span) for frame, span in itertools.product(frames, spans)]
    texts += [
        "", "no number at all", "starts at 7", "start 3\nend 9", "start 9\nend 3", "12", "at 1:05 and 1:15",
        "the clip 1:05 then 2:10 then 3:00", "from 14.2 seconds until 20.0 seconds", "between 3 and 9 s",
        "It happens at 3.", "00:00:04 - 00:00:09", "<answer>5.0 to 11.6</answer><answer>6 to 8</answer>",
        "x3 to 7", "-3 to 4", "3.5.6 - 7", "the event happens from 2 to 5 and again 6 to 9",
        "Ends at 8, starts at 2", "9 - 9", "1" * 30 + " - 40",
    ]  # fmt: skip
    return texts


GT = [3.0, 9.0]


def test_the_answer_corpus_is_varied():
    texts = answers()
    assert len(texts) >= 300
    parsed = [parse_lmms_eval(t) for t in texts]
    assert sum(p is None for p in parsed) >= 3 and len({p for p in parsed if p}) >= 20


def test_lmms_eval_parser_equals_its_code_on_every_answer(lmms_charades):
    for text in answers():
        theirs = lmms_charades.extract_time(text)
        ours = parse_lmms_eval(text)
        assert (None if not theirs else tuple(theirs[0])) == ours, text


@pytest.mark.parametrize("gt", [[3.0, 9.0], [0.0, 5.1], [11.0, 12.0], [24.3, 30.4]])
def test_lmms_eval_metrics_equal_its_aggregation(lmms_charades, gt):
    texts = answers()
    submission = [{f"v{i}.mp4>>>query {i}>>>{gt}": text} for i, text in enumerate(texts)]
    theirs = lmms_charades._temporal_grounding_compute_metrics(submission)
    records = [{"gt": [gt], "output": text, "duration": 30.0} for text in texts]
    ours = protocol_metrics(records, "lmms-eval")
    for their_key, our_key in (("IOU@3", "R1@0.3"), ("IOU@5", "R1@0.5"), ("IOU@7", "R1@0.7"), ("mIOU", "mIoU")):
        assert ours[our_key] == round(theirs[their_key], 2), (their_key, ours, theirs)
    # An answer without a pair scores 0 and stays in the denominator.
    assert ours["num_scored"] == len(texts) and ours["num_failed"] == sum(
        not lmms_charades.extract_time(t) for t in texts
    )


def test_timelens_parser_equals_the_code_lmms_eval_ships_for_it(lmms_timelens):
    for text in answers():
        theirs = lmms_timelens.extract_time(text)
        assert (tuple(theirs[0]) if theirs else None) == parse_timelens(text), text


def test_timelens_rules_first_pair_no_swap_dummy_span_and_rounding():
    record = {"gt": [[3.0, 9.0]], "duration": 30.0}
    # The first pair, as written: a reversed pair scores 0 (lmms-eval would swap it and score 1).
    assert score_record(record | {"output": "9 - 3 or 3 - 9"}, "timelens").iou == 0.0
    assert score_record(record | {"output": "9 - 3 or 3 - 9"}, "lmms-eval").iou == 1.0
    # No pair: the dummy span [D + 10, D + 20], IoU 0, counted.
    dummy = score_record(record | {"output": "no idea"}, "timelens")
    assert (dummy.pred, dummy.iou, dummy.failed) == ((40.0, 50.0), 0.0, True)
    # Rounded to the dataset's unit (0.1 s here) before the IoU: 3.04 - 9.04 becomes 3.0 - 9.0.
    rounded = score_record(record | {"output": "3.04 - 9.04"}, "timelens", unit=0.1)
    assert rounded.pred == (3.0, 9.0) and rounded.iou == 1.0
    records = [{"gt": [[3.1, 9.0]], "duration": 30.0, "output": "3.04 - 9.04"}, {"gt": [[0.5, 2.25]], "output": "x"}]
    assert protocol_metrics(records, "timelens")["mIoU"] == round(
        100 * (9.0 - 3.1) / (9.04 - 3.04) / 2, 2
    )  # unit 0.01


def test_timezero_original_rules_last_pair_single_spaces_failures_skipped():
    # The last "a to b" / "a and b" anywhere, one space either side (its pattern), reasoning included.
    assert parse_timezero_original("<think>maybe 1 to 2</think><answer>5.0 to 11.6</answer>") == (5.0, 11.6)
    assert parse_timezero_original("<answer>5.0 to 11.6</answer> or 7 and 8") == (7.0, 8.0)
    assert parse_timezero_original("5.0  to 11.6") is None and parse_timezero_original("3.2 - 8.1") is None
    assert parse_timezero_original("from 0:05 to 0:12") == (5.0, 0.0)  # its pattern reads "05 to 0"
    records = [
        {"gt": [[3.0, 9.0]], "output": "<answer>3 to 9</answer>"},
        {"gt": [[3.0, 9.0]], "output": "<answer>3 - 9</answer>"},  # unparsable for it: skipped
        {"gt": [[3.0, 9.0]], "output": None, "error": "missing_video"},  # skipped too
        {"gt": [[3.0, 9.0]], "output": "<answer>0 to 3</answer>"},
    ]
    metrics = protocol_metrics(records, "timezero-original")
    assert (metrics["num_scored"], metrics["num_skipped"], metrics["R1@0.5"], metrics["mIoU"]) == (2, 2, 50.0, 50.0)
    # This project counts all four: the same file gives 25 / 25 (the unicode-free "3 - 9" parses for it: 50 / 50).
    ours = protocol_metrics(records, "timezero")
    assert (ours["num_scored"], ours["R1@0.5"], ours["mIoU"]) == (4, 50.0, 50.0)


def test_r1_is_reported_at_both_at_least_and_more_than_m():
    records = [{"gt": [[0.0, 10.0]], "output": "<answer>0 to 5</answer>"}]  # IoU exactly 0.5
    for protocol in PROTOCOLS:
        metrics = protocol_metrics(records, protocol)
        assert metrics["R1@0.5"] == 100.0 and metrics["R1@0.5_strict"] == 0.0, protocol


def test_report_puts_the_chosen_protocol_on_top_and_every_protocol_beside_it():
    records = [
        {"gt": [[3.0, 9.0]], "output": "<think>x</think><answer>9.0 to 3.0</answer>", "num_tokens": 60},
        {"gt": [[3.0, 9.0]], "output": "The event happens in 3 - 9 seconds.", "num_tokens": 12},
        {"gt": [[3.0, 9.0]], "output": "<answer>3.0 to 9.0", "num_tokens": 16, "hit_budget": True},
    ]
    report = protocol_report(records, "lmms-eval", max_new_tokens=16)
    assert set(report["protocols"]) == set(PROTOCOLS) and report["protocol"] == "lmms-eval"
    assert report["R1@0.5"] == report["protocols"]["lmms-eval"]["R1@0.5"] == 100.0  # swapped, "3 - 9", "3.0 - 9.0"
    assert report["protocols"]["timezero"]["R1@0.5"] == round(100 * 2 / 3, 2)  # reversed answer block scores 0
    assert report["protocols"]["timelens"]["R1@0.5"] == round(100 * 2 / 3, 2)  # no swap either
    assert report["generation"] == {"max_new_tokens": 16, "num_hit_budget": 1, "num_longer_than_50_tokens": 1}
    # Lines written before token counts were kept: unknown, not 0.
    assert protocol_report([{"gt": [[1.0, 2.0]], "output": "1 to 2"}])["generation"]["num_hit_budget"] is None
    with pytest.raises(ValueError, match="unknown protocol 'lmms'; known: timezero, timezero-original"):
        protocol_report(records, "lmms")


def test_rescore_with_a_protocol_rewrites_metrics_only(tmp_path):
    from open_r1 import evaluate

    lines = [
        {"video_id": "v", "query_id": f"v#{i}", "query": "q", "duration": 20.0, "gt": [[3.0, 9.0]], "output": text}
        for i, text in enumerate(["<answer>9 to 3</answer>", "it happens in 3 - 9 seconds", "<answer>3 to 9</answer>"])
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = path.read_bytes()
    metrics = evaluate.main(["--rescore", str(path), "--protocol", "lmms-eval"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["protocol"] == "lmms-eval" and saved["R1@0.5"] == 100.0 == metrics["R1@0.5"]
    # This project's parser: the reversed answer block scores 0; the prose answer parses by its evaluation fallback.
    assert saved["protocols"]["timezero"]["R1@0.5"] == round(200 / 3, 2)
    assert saved["protocols"]["timezero-original"]["num_scored"] == 2
    assert path.read_bytes() == before  # the predictions are never rewritten
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--rescore", str(path), "--protocol", "timelenz"])
    assert stop.value.code == 2


def test_the_docs_table_is_what_the_command_prints(capsys):
    """docs/evaluation.md's protocol table on the committed sample comes from `python -m open_r1.evaluation.compare`."""
    from open_r1.evaluation.compare import main

    repo = Path(__file__).resolve().parents[1]
    table = main([str(repo / "docs" / "samples" / "protocol_outputs.jsonl")])
    assert table in (repo / "docs" / "evaluation.md").read_text()
    # The sample separates the conventions: four different R1@0.5 / mIoU rows.
    assert len({tuple(row.split("|")[2:6]) for row in table.splitlines()[2:]}) == 4
