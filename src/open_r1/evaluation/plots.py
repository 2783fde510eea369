"""``eval_plot.png``: ground-truth vs predicted timelines and R1 against the IoU threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from open_r1.evaluation.metrics import THRESHOLDS, recall_at, record_iou


def plot_predictions(records: Sequence[dict[str, Any]], path: str | Path, num_queries: int = 12) -> Path:
    """Save a PNG: ground truth vs prediction timelines for ``num_queries`` queries, and R1 against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    ious = [record_iou(r) for r in records]
    step = max(1, len(records) // max(1, num_queries))
    shown = records[::step][:num_queries]
    fig, (ax_lines, ax_curve) = plt.subplots(
        1, 2, figsize=(13, 0.45 * max(len(shown), 6) + 1.5), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    for y, record in enumerate(reversed(shown)):
        # An imported line may lack the duration: its spans' furthest end scales the timeline instead.
        spans = [*record["gt"], *([record["pred"]] if record.get("pred") is not None else [])]
        duration = max(float(record.get("duration") or max(end for _, end in spans)), 1e-6)
        for start, end in record["gt"]:
            ax_lines.barh(y + 0.18, (end - start) / duration, left=start / duration, height=0.32, color="#2a9d8f")
        if record.get("pred") is not None:
            start, end = record["pred"]
            ax_lines.barh(y - 0.18, (end - start) / duration, left=start / duration, height=0.32, color="#e76f51")
            label = f"IoU {record_iou(record):.2f}"
        else:
            label = record.get("error") or "no answer"
        ax_lines.text(1.01, y, label, va="center", fontsize=8)
    ax_lines.set_yticks(range(len(shown)))
    ax_lines.set_yticklabels([_short(r["query"], 48) for r in reversed(shown)], fontsize=8)
    ax_lines.set_xlim(0, 1)
    ax_lines.set_xlabel("time / video duration")
    ax_lines.set_title("ground truth (teal, upper bar) vs prediction (coral, lower bar)")
    # m = 0 would count every query (IoU >= 0), so the curve starts just above it.
    grid = [i / 100 for i in range(1, 101)]
    ax_curve.plot(grid, [100 * recall_at(ious, m) for m in grid], color="#264653")
    r1s = [100 * recall_at(ious, m) for m in THRESHOLDS]
    ax_curve.plot(THRESHOLDS, r1s, "o", color="#e76f51")
    summary = "\n".join(f"R1@{m:g} = {r1:.2f}" for m, r1 in zip(THRESHOLDS, r1s))
    ax_curve.text(
        0.97, 0.97, summary, transform=ax_curve.transAxes, ha="right", va="top", fontsize=9, family="monospace"
    )
    ax_curve.set_xlabel("IoU threshold m")
    ax_curve.set_ylabel("R1@m (%)")
    ax_curve.set_xlim(0, 1)
    ax_curve.set_ylim(0, 100)
    ax_curve.set_title(f"{len(records)} queries, mIoU {100 * sum(ious) / max(1, len(ious)):.2f}")
    ax_curve.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
