"""The paper's metrics as pure functions of prediction records: R1@m, mIoU, failures by kind (TimeZero section 4.1)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from open_r1.grounding import parse_span_with_rule, temporal_iou

THRESHOLDS = (0.3, 0.5, 0.7)
# What can go wrong with one query; each scores IoU 0 and is counted under its name in metrics.json.
FAILURE_KINDS = ("no_answer", "missing_video", "decode_error", "generation_error")
# IoU is a ratio of differences of decimal seconds, so an IoU that is exactly m on paper can land an ulp or two below m
# in floating point: prediction 0.2-2.3 s against ground truth 0.2-7.2 s gives 0.29999999999999993. The paper counts
# IoU >= m, so such ties count.
IOU_TIE_EPS = 1e-9


def recall_at(ious: Sequence[float], threshold: float) -> float:
    """Share (0..1) of ``ious`` that are >= ``threshold`` (ties within :data:`IOU_TIE_EPS` count as hits)."""
    if not ious:
        return 0.0
    return sum(iou >= threshold - IOU_TIE_EPS for iou in ious) / len(ious)


def record_iou(record: dict[str, Any]) -> float:
    """The IoU a record contributes: its ``iou``, or 0 for a failed query (error set or iou missing)."""
    if record.get("error") or record.get("iou") is None:
        return 0.0
    return float(record["iou"])


def compute_metrics(records: Iterable[dict[str, Any]], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """R1@m and mIoU (percent, two decimals) over every record; failures count as IoU 0.

    Args:
        records: one dict per query with ``iou`` (float or None), ``error`` (None or a :data:`FAILURE_KINDS`
            name) and ``rule`` (the parse rule that matched, ``"answer"``/``"fallback"``/None).
        thresholds: the IoU thresholds m of R1@m.

    Returns:
        ``{"R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "num_queries", "num_failed", "failures": {kind: count},
        "num_fallback_parses"}``.

    Example:
        >>> compute_metrics([{"iou": 0.6}, {"iou": 0.3}, {"iou": None, "error": "no_answer"}])["R1@0.3"]
        66.67
    """
    records = list(records)
    if not records:
        raise ValueError("no predictions to score")
    ious = [record_iou(r) for r in records]
    metrics: dict[str, Any] = {f"R1@{m:g}": round(100 * recall_at(ious, m), 2) for m in thresholds}
    metrics["mIoU"] = round(100 * sum(ious) / len(ious), 2)
    metrics["num_queries"] = len(records)
    failures = Counter(r["error"] for r in records if r.get("error"))
    failures.update({"no_answer": sum(1 for r in records if not r.get("error") and r.get("iou") is None)})
    metrics["num_failed"] = sum(failures.values())
    metrics["failures"] = {kind: failures.get(kind, 0) for kind in FAILURE_KINDS} | {
        kind: n for kind, n in failures.items() if kind not in FAILURE_KINDS
    }
    metrics["num_fallback_parses"] = sum(1 for r in records if r.get("rule") == "fallback")
    # Scored like any other query (the denominator keeps them), but the model never saw the window: a truncated file.
    metrics["num_clip_ends_before_gt"] = sum(1 for r in records if r.get("clip_ends_before_gt"))
    return metrics


def format_table(metrics: dict[str, Any], title: str | None = None) -> str:
    """A small text table of ``metrics`` for the terminal and logs."""
    keys = [k for k in metrics if k.startswith("R1@") and not k.endswith("_strict")] + ["mIoU"]
    head = " | ".join(f"{k:>7}" for k in keys)
    row = " | ".join(f"{metrics[k]:>7.2f}" for k in keys)
    failures = ", ".join(f"{kind} {n}" for kind, n in metrics.get("failures", {}).items() if n) or "none"
    lines = [title] if title else []
    lines += [
        head,
        "-" * len(head),
        row,
        f"{metrics['num_queries']} queries; failed (IoU 0): {metrics.get('num_failed', 0)} ({failures}); "
        f"fallback parses: {metrics.get('num_fallback_parses', 0)}",
    ]
    if metrics.get("protocols"):
        chosen = metrics.get("protocol", "timezero")
        lines.append(
            f"protocol {chosen} at the top; R1@0.5 / mIoU under each: "
            + "; ".join(f"{name} {m['R1@0.5']:.2f} / {m['mIoU']:.2f}" for name, m in metrics["protocols"].items())
        )
    lines += [f"WARNING: {warning}" for warning in metrics.get("warnings", [])]
    return "\n".join(lines)


def score_output(output: str | None, gt: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Parse a model answer and score it against the ground-truth windows: ``{"pred", "iou", "rule", "error"}``."""
    if output is None:
        return {"pred": None, "iou": 0.0, "rule": None, "error": "generation_error"}
    span, rule = parse_span_with_rule(output)
    if span is None:
        return {"pred": None, "iou": 0.0, "rule": rule, "error": "no_answer"}
    pred = [float(span[0]), float(span[1])]
    return {"pred": pred, "iou": float(temporal_iou(pred, gt)), "rule": rule, "error": None}


def rescore_record(record: dict[str, Any]) -> dict[str, Any]:
    """Recompute one predictions line: ``pred`` if present, else ``output`` parsed; ``iou`` always recomputed.

    A failure recorded without an output (missing video, decode or generation error) stays that failure.
    """
    record = dict(record)
    gt = record["gt"]
    if record.get("pred") is not None:
        pred = [float(x) for x in record["pred"]]
        record.update(pred=pred, iou=float(temporal_iou(pred, gt)), error=None)
    elif record.get("output") is not None:
        record.update(score_output(record["output"], gt))
    else:
        record.update(pred=None, iou=0.0, error=record.get("error") or "generation_error")
    return record
