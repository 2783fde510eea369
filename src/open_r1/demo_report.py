"""What the demo reports: the paired held-out change between two sets of answers, the trend of a training signal,
and the plot of a run (``demo_plot.png``)."""

from __future__ import annotations

from pathlib import Path

SIGNAL_PLOT_KEYS = ("frac_reward_zero_std", "signal/group_reward_std", "signal/span_spread")


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` before it (NaN values, steps without the metric, left out)."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(recent) / len(recent) if recent else float("nan"))
    return out


def plot_demo(log_history: list[dict], records: dict[str, list[dict]], path: Path, window: int = 10) -> Path:
    """Left: GRPO reward per step, each reward and the total. Middle: where the signal is (share of groups with equal
    rewards, within-group reward std, spread of the sampled spans). Both as running means over ``window`` steps.
    Right: R1 against the IoU threshold per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from open_r1.evaluation import recall_at, record_iou

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
    steps = [e for e in log_history if "reward" in e]
    keys = ["reward"] + sorted({k for e in steps for k in e if k.startswith("rewards/") and k.endswith("/mean")})
    for axis, axis_keys in ((left, keys), (middle, SIGNAL_PLOT_KEYS)):
        for index, key in enumerate(axis_keys):
            values = running_mean([e.get(key, float("nan")) for e in steps], window)
            # Distinct markers and line styles, so equal curves stay visible on top of each other.
            axis.plot([e["step"] for e in steps], values, marker="os^"[index % 3], markevery=max(1, len(steps) // 20),
                      linestyle=["-", "--", ":"][index % 3], markersize=3, label=key)  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    left.set(xlabel="GRPO step", ylabel=f"mean reward (running mean, {window} steps)",
             title="GRPO rewards (training split)")  # fmt: skip
    middle.set(xlabel="GRPO step", ylabel=f"running mean, {window} steps", title="where the signal is")
    thresholds = [i / 100 for i in range(1, 101)]
    for index, (stage, stage_records) in enumerate(records.items()):
        ious = [record_iou(r) for r in stage_records]
        right.plot(thresholds, [100 * recall_at(ious, t) for t in thresholds], label=stage,
                   linestyle=["-", "--", ":", "-."][index % 4], linewidth=2.5 - 0.3 * index)  # fmt: skip
    right.set(xlabel="IoU threshold m", ylabel="R1@m (%)", title="held-out videos", ylim=(0, 100))
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def paired_change(before: list[dict], after: list[dict]) -> dict:
    """Per-query IoU change (points) from ``before`` to ``after``, records of the same queries: its mean (= the change
    of mIoU) and the mean's standard error, which says how much of the change the held-out queries can resolve."""
    from statistics import mean, stdev

    from open_r1.evaluation import record_iou

    iou = {record["query_id"]: record_iou(record) for record in before}
    changes = [100 * (record_iou(record) - iou[record["query_id"]]) for record in after]
    return {"mean": round(mean(changes), 2), "standard_error": round(stdev(changes) / len(changes) ** 0.5, 2),
            "num_queries": len(changes)}  # fmt: skip


def reward_trend(log_history: list[dict], key: str = "rewards/iou_reward/mean", window: int = 20) -> dict:
    """Mean of a logged training metric over the first and the last ``window`` steps (fewer when the run is shorter)."""
    from statistics import mean

    values = [
        entry[key] for entry in log_history if isinstance(entry.get(key), (int, float)) and entry[key] == entry[key]
    ]
    if not values:
        return {"first": None, "last": None, "window": 0}
    window = min(window, len(values))
    return {"first": round(mean(values[:window]), 3), "last": round(mean(values[-window:]), 3), "window": window}
