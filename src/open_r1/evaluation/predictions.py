"""The predictions store: ``predictions.jsonl`` read, validated, merged across ranks, rescored, written atomically."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from open_r1.evaluation.metrics import compute_metrics, rescore_record
from open_r1.evaluation.plots import plot_predictions
from open_r1.evaluation.protocols import DEFAULT_PROTOCOL, protocol_report
from open_r1.jsonl import read_jsonl

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "eval_config.json"
PLOT_FILE = "eval_plot.png"


def record_key(record: dict[str, Any]) -> str:
    """A line's identity for resume and de-duplication: ``query_id``, else video id + query text."""
    return record.get("query_id") or f"{record['video_id']}\x00{record['query']}"


class PredictionsFileError(ValueError):
    """A predictions file that cannot be scored as it is; the message names the file and line."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_span(value) -> bool:
    """``[start, end]``: two finite numbers (not booleans) in a list or tuple."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(x) for x in value)


def record_problem(record) -> str | None:
    """Why a predictions line is not a usable record (its JSON parsed), or None.

    A record is an object with a ``query_id`` (or ``video_id`` + ``query``), ``gt`` (a list of ``[start, end]``
    numbers), ``pred`` null or ``[start, end]``, ``output`` null or text, and optional numeric ``iou``.
    """
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    query_id = record.get("query_id")
    if not (isinstance(query_id, (str, int)) and not isinstance(query_id, bool) and str(query_id)):
        if not (isinstance(record.get("video_id"), str) and isinstance(record.get("query"), str)):
            return "has no query_id (nor video_id and query)"
    gt = record.get("gt")
    if not isinstance(gt, list) or not gt or not all(is_span(window) for window in gt):
        return "has no gt list of [start, end] numbers"
    if record.get("pred") is not None and not is_span(record["pred"]):
        return f"has a pred that is not [start, end] numbers: {str(record['pred'])[:60]}"
    if record.get("output") is not None and not isinstance(record["output"], str):
        return "has an output that is not text"
    if record.get("iou") is not None and not _is_number(record["iou"]):
        return "has a non-numeric iou"
    return None


def read_predictions(
    path: str | Path, strict: bool = False, allow_conflicts: bool = False, report: dict | None = None
) -> list[dict[str, Any]]:
    """The records of a predictions file, one per query.

    Rules: a line that does not parse as JSON (the last line of a killed run may be cut short) is skipped with a
    warning. A line that parses but is not a record (:func:`record_problem`) is skipped with a warning naming file and
    line (the query is then evaluated again on resume), or, with ``strict`` (rescoring), raises
    :class:`PredictionsFileError`. A query that appears twice is reported and its first line kept; with ``strict``,
    lines that differ raise (two runs concatenated) unless ``allow_conflicts``. ``report``, when given, receives
    ``{"bad_lines": [...], "duplicates": [...]}``.
    """
    path = Path(path)
    records: dict[str, dict[str, Any]] = {}
    bad, duplicates, conflicts = [], [], []
    try:
        lines = list(read_jsonl(path, with_line_numbers=True, strict=strict))
    except ValueError as error:  # strict: an unreadable line stops a rescore, named
        raise PredictionsFileError(str(error)) from error
    for number, record in lines:
        problem = record_problem(record)
        if problem is not None:
            if strict:
                raise PredictionsFileError(f"{path}:{number}: line {problem}")
            bad.append(f"{path}:{number}: line {problem}")
            continue
        key = str(record_key(record))
        if key in records:
            duplicates.append(key)
            if records[key] != record:
                conflicts.append((key, number))
            continue
        records[key] = record
    if bad:
        logger.warning("%d malformed line(s) skipped: %s", len(bad), "; ".join(bad[:3]))
    if duplicates:
        logger.warning(
            "%s: %d queries appear more than once (e.g. %s), %d with different content; the first line of each is used",
            path, len(duplicates), duplicates[0], len(conflicts),
        )  # fmt: skip
    if strict and conflicts and not allow_conflicts:
        key, number = conflicts[0]
        raise PredictionsFileError(
            f"{path}:{number}: query {key} was already scored differently earlier in the file ({len(conflicts)} such "
            "conflicts: two runs concatenated?); pass --allow_mixed to keep the first line of each"
        )
    if report is not None:
        report.update(bad_lines=bad, duplicates=duplicates)
    return list(records.values())


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def shard_paths(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("predictions.rank*.jsonl"))


def merge_predictions(output_dir: str | Path, order: Sequence[str] = ()) -> Path:
    """Fold the per-rank shards into ``predictions.jsonl`` (one line per query, in ``order`` first) and delete them."""
    output_dir = Path(output_dir)
    merged: dict[str, dict[str, Any]] = {}
    shards = shard_paths(output_dir)
    for path in [output_dir / PREDICTIONS_FILE, *shards]:
        for record in read_predictions(path):
            merged.setdefault(record_key(record), record)
    rank = {key: i for i, key in enumerate(order)}
    records = sorted(merged.values(), key=lambda r: rank.get(record_key(r), len(rank)))
    target = output_dir / PREDICTIONS_FILE
    write_jsonl_atomic(target, records)
    for path in shards:
        path.unlink()
    return target


def rescore_predictions(
    path: str | Path,
    write: bool = True,
    plot: bool = True,
    allow_mixed: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
) -> dict[str, Any]:
    """Metrics of a predictions file alone (no model); writes ``metrics.json`` (and the plot) beside it. Every line's
    raw answer is scored under every protocol (:mod:`~open_r1.evaluation.protocols`), ``protocol``'s at the top.

    Strict: a malformed line stops it (file and line named), always; so does a file whose lines come from runs with
    different settings (their ``run_id``) or that scores one query twice differently, unless ``allow_mixed``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path.resolve()}")
    records = read_predictions(path, strict=True, allow_conflicts=allow_mixed)
    expected = _run_config_value(path.parent, "num_queries")
    if isinstance(expected, int) and len(records) < expected:
        raise PredictionsFileError(
            f"{path} holds {len(records)} of the {expected} queries its run was written for (cut short, or the run "
            "has not finished): run the same evaluation command again to complete it; nothing was rescored"
        )
    runs = Counter(record.get("run_id") for record in records if record.get("run_id"))
    if len(runs) > 1 and not allow_mixed:
        (first, n_first), (second, n_second) = runs.most_common(2)
        raise PredictionsFileError(
            f"{path} mixes predictions of {len(runs)} runs with different settings or splits (run_id {first}: "
            f"{n_first} lines, {second}: {n_second} lines, ...); pass --allow_mixed to score them together"
        )
    report = protocol_report(records, protocol, _run_config_value(path.parent, "max_new_tokens"))
    records = [rescore_record(r) for r in records]
    metrics = compute_metrics(records) | report
    if write:
        target = path.parent / METRICS_FILE
        # The run's own fields (its name and model) stay: they come from the run, not from the predictions.
        metrics |= {key: value for key, value in _run_fields(path.parent).items() if key not in metrics}
        logger.info("rescored %s: replacing %s%s", path, target, " and " + PLOT_FILE if plot else "")
        write_json_atomic(target, metrics)
        if plot:
            plot_predictions(records, path.parent / PLOT_FILE)
    return metrics


def _saved_dict(path: Path) -> dict[str, Any]:
    """A run's JSON file (its metrics or settings) as a dict; empty when absent or unreadable."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _run_config_value(folder: Path, key: str):
    """``key`` of the evaluation run's settings beside a predictions file (None without them)."""
    return _saved_dict(folder / CONFIG_FILE).get(key)


def _run_fields(folder: Path) -> dict[str, Any]:
    """``run`` and ``model_base`` of the evaluation run in ``folder``: from its metrics.json, else its config."""
    for name in (METRICS_FILE, CONFIG_FILE):
        saved = _saved_dict(folder / name)
        fields = {key: saved[key] for key in ("run", "model_base") if key in saved}
        if fields:
            return fields
    return {}
