"""Evaluation: R1@m and mIoU of a checkpoint on a grounding split, resumable and data-parallel.

The metric is the paper's (TimeZero section 4.1): R1@m is the share of queries whose top-1 predicted span has
temporal IoU >= m with the ground truth (m = 0.3, 0.5, 0.7), mIoU is the mean IoU; both in percent. Unlike the
original evaluation, every query stays in the denominator: an unparsable answer, a missing or undecodable video, or an
exception during generation scores IoU 0 and is counted by kind (skipping them inflates every number).

The span parser and IoU are :mod:`open_r1.grounding`'s, the same functions the IoU reward uses, and the prompt is
:mod:`open_r1.prompts`' (the training template), so "correct" means one thing in training and evaluation.

Output folder (one run = one folder):

- ``predictions.jsonl``: one line per query, appended and flushed as results arrive, with keys ``video_id``,
  ``query_id``, ``query``, ``duration``, ``gt`` (list of ``[start, end]`` windows), ``output`` (raw model text or
  null), ``pred`` (``[start, end]`` or null), ``iou``, ``rule`` (which parse rule matched: ``"answer"``,
  ``"fallback"`` or null) and ``error`` (null or one of :data:`FAILURE_KINDS`; ``detail`` says more). A killed run
  resumes where it stopped; under torchrun each rank appends to ``predictions.rank{r}.jsonl`` and rank 0 merges the
  shards into ``predictions.jsonl`` at the end.
- ``metrics.json``: :func:`compute_metrics` of the run; ``eval_config.json``: what was evaluated (a resume with
  different settings is refused); ``eval_plot.png``: timelines of ground truth vs prediction and R1 against the IoU
  threshold.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from open_r1.configs import EvalArguments
from open_r1.grounding import parse_span_with_rule, temporal_iou
from open_r1.jsonl import read_jsonl, repair_tail

logger = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.5, 0.7)
# What can go wrong with one query; each scores IoU 0 and is counted under its name in metrics.json.
FAILURE_KINDS = ("no_answer", "missing_video", "decode_error", "generation_error")
# IoU is a ratio of differences of decimal seconds, so an IoU that is exactly m on paper can land an ulp or two below m
# in floating point: prediction 0.2-2.3 s against ground truth 0.2-7.2 s gives 0.29999999999999993. The paper counts
# IoU >= m, so such ties count.
IOU_TIE_EPS = 1e-9

# Each split's default when --split is not given: the split the paper (or the benchmark's authors) report.
DEFAULT_SPLITS = {
    "charades": "test",
    "activitynet": "val_2",
    "charades_cd": "test_ood",
    "charades_cg": "novel_composition",
}

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "eval_config.json"
PLOT_FILE = "eval_plot.png"

# --------------------------------------------------------------------------------------------------------------------
# Metrics (pure)
# --------------------------------------------------------------------------------------------------------------------


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
    keys = [k for k in metrics if k.startswith("R1@")] + ["mIoU"]
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


# --------------------------------------------------------------------------------------------------------------------
# predictions.jsonl
# --------------------------------------------------------------------------------------------------------------------


def record_key(record: dict[str, Any]) -> str:
    """A line's identity for resume and de-duplication: ``query_id``, else video id + query text."""
    return record.get("query_id") or f"{record['video_id']}\x00{record['query']}"


class PredictionsFileError(ValueError):
    """A predictions file that cannot be scored as it is; the message names the file and line."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_span(value) -> bool:
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
    if not isinstance(gt, list) or not gt or not all(_is_span(window) for window in gt):
        return "has no gt list of [start, end] numbers"
    if record.get("pred") is not None and not _is_span(record["pred"]):
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
    for number, record in read_jsonl(path, with_line_numbers=True):
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


def _write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _write_json_atomic(path: Path, obj: Any) -> None:
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
    _write_jsonl_atomic(target, records)
    for path in shards:
        path.unlink()
    return target


# --------------------------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------------------------


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
        duration = max(float(record["duration"]), 1e-6)
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


# --------------------------------------------------------------------------------------------------------------------
# Rescore
# --------------------------------------------------------------------------------------------------------------------


def rescore_predictions(
    path: str | Path, write: bool = True, plot: bool = True, allow_mixed: bool = False
) -> dict[str, Any]:
    """Metrics of a predictions file alone (no model); writes ``metrics.json`` (and the plot) beside it.

    Strict: a malformed line stops it (file and line named), always; so does a file whose lines come from runs with
    different settings (their ``run_id``) or that scores one query twice differently, unless ``allow_mixed``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path.resolve()}")
    records = read_predictions(path, strict=True, allow_conflicts=allow_mixed)
    runs = Counter(record.get("run_id") for record in records if record.get("run_id"))
    if len(runs) > 1 and not allow_mixed:
        (first, n_first), (second, n_second) = runs.most_common(2)
        raise PredictionsFileError(
            f"{path} mixes predictions of {len(runs)} runs with different settings or splits (run_id {first}: "
            f"{n_first} lines, {second}: {n_second} lines, ...); pass --allow_mixed to score them together"
        )
    records = [rescore_record(r) for r in records]
    metrics = compute_metrics(records)
    if write:
        _write_json_atomic(path.parent / METRICS_FILE, metrics)
        if plot:
            plot_predictions(records, path.parent / PLOT_FILE)
    return metrics


# --------------------------------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------------------------------


def resolve_queries(args: EvalArguments) -> tuple[list[dict[str, Any]], str]:
    """The query rows to evaluate and the run's name (``<dataset>_<split>`` or the annotation file's stem).

    Unknown dataset or split names raise ``ValueError`` listing the valid ones before anything heavy happens.
    """
    from open_r1.data import DATASETS, load_annotations, load_split, split_path

    if args.annotation_file is not None:
        rows = load_annotations(args.annotation_file)
        name = Path(args.annotation_file).stem
    else:
        split = args.split or DEFAULT_SPLITS.get(args.dataset) or next(iter(DATASETS.get(args.dataset, {})), "")
        split_path(args.dataset, split)  # unknown names raise here, listing the valid ones
        rows = load_split(args.dataset, split)
        name = f"{args.dataset}_{split}"
    if args.max_queries is not None:
        rows = rows[: args.max_queries]
    return rows, name


def default_output_dir(args: EvalArguments, name: str) -> Path:
    model_name = Path(str(args.model_base).rstrip("/")).name or "model"
    return Path("outputs") / "eval" / model_name / (name + ("_no_think" if args.no_think else ""))


def _run_config(args: EvalArguments, name: str) -> dict[str, Any]:
    """The settings that change predictions; a resume must match them (batch size, paths of videos do not)."""
    return {
        "model_base": str(args.model_base),
        "run": name,
        "annotation_file": args.annotation_file,
        "no_think": args.no_think,
        "video_first": args.video_first,
        "video_settings": dataclasses.asdict(args.to_settings()),
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature if args.do_sample else None,
        "repetition_penalty": args.repetition_penalty,
        "position_layout": args.position_layout,
    }


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _prepare_output_dir(output_dir: Path, config: dict[str, Any], overwrite: bool, rank: int, world: int) -> None:
    """Rank 0 creates (or clears) the folder and checks that a resume continues the same run."""
    if rank == 0:
        if overwrite and output_dir.exists():
            for path in [output_dir / PREDICTIONS_FILE, *shard_paths(output_dir), output_dir / METRICS_FILE]:
                path.unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        config_path = output_dir / CONFIG_FILE
        if config_path.exists() and not overwrite:
            previous = json.loads(config_path.read_text(encoding="utf-8"))
            if previous != config:
                changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                raise ValueError(
                    f"{output_dir} holds predictions of another run (differs in {', '.join(changed)}); "
                    "pass --overwrite or another --output_dir"
                )
        _write_json_atomic(config_path, config)
    if world > 1:
        _barrier()
        if not (output_dir / CONFIG_FILE).exists():
            raise RuntimeError(f"rank 0 failed to prepare {output_dir}")


def _load_model(args: EvalArguments, device):
    """The model in bf16 with flash_attention_2 on GPU (fp32 + sdpa on CPU), falling back to sdpa when FA2 fails."""
    import torch

    from open_r1.modeling import default_attn_implementation, default_dtype, load_model

    # "auto" is bf16 on GPU and fp32 on CPU (the device is a GPU whenever one is available).
    dtype = default_dtype() if args.dtype == "auto" else getattr(torch, args.dtype)
    attn = args.attn_implementation or default_attn_implementation()
    # Under a device context transformers loads the weights straight onto that GPU (no full copy in host memory per
    # rank, which is what 8 ranks of a 7B model would otherwise cost).
    with torch.device(device):
        try:
            model = load_model(
                args.model_base, attn_implementation=attn, dtype=dtype, position_layout=args.position_layout
            )
        except (ImportError, ValueError) as exc:
            if attn != "flash_attention_2":
                raise
            logger.warning("flash_attention_2 unavailable (%s); falling back to sdpa", exc)
            attn = "sdpa"
            model = load_model(
                args.model_base, attn_implementation=attn, dtype=dtype, position_layout=args.position_layout
            )
    logger.info("Loaded %s (%s, %s attention) on %s", args.model_base, dtype, attn, device)
    return model.to(device).eval(), dtype


class _Generator:
    """Batched greedy (or sampled) generation for one process: prompt -> encode -> generate -> decode."""

    def __init__(self, args: EvalArguments, device):
        import torch

        from open_r1.modeling import load_processor, vision_token_ids

        self.args = args
        self.device = device
        self.processor = load_processor(args.model_base)
        self.model, self.dtype = _load_model(args, device)
        tokenizer = self.processor.tokenizer
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = args.max_new_tokens
        config.use_cache = True
        config.suppress_tokens = vision_token_ids(tokenizer)
        if tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
        if args.repetition_penalty is not None:
            config.repetition_penalty = args.repetition_penalty
        if args.do_sample:
            config.do_sample, config.temperature = True, args.temperature
        else:
            # Greedy. Qwen2.5-VL ships do_sample=True with temperature 1e-6 (greedy in effect, as the original
            # evaluation ran it); argmax is the same choice without the sampling machinery. Its repetition_penalty
            # (1.05) is kept unless --repetition_penalty says otherwise.
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        self.generation_config = config
        torch.manual_seed(args.seed)

    def __call__(self, queries: Sequence[dict[str, Any]], clips: Sequence[Any]) -> list[str]:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from open_r1.modeling import encode_batch, per_row_patches, video_features_once
        from open_r1.prompts import build_conversation

        conversations = [
            build_conversation(q["query"], think=not self.args.no_think, video_first=self.args.video_first)
            for q in queries
        ]
        batch = encode_batch(self.processor, conversations, list(clips), padding_side="left")
        if self.args.shared_work:
            # One tower pass per distinct video of the batch (Charades-STA test has 2.8 queries per video).
            first: dict[int, torch.Tensor] = {}
            patches = per_row_patches(batch.pop("pixel_values_videos"), batch["video_grid_thw"])
            patches = [first.setdefault(id(clip), tensor.to(self.dtype)) for clip, tensor in zip(clips, patches)]
            with torch.inference_mode():
                features = video_features_once(self.model, patches, batch["video_grid_thw"], self.device)
            batch["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=tuple(features))}
        batch = {
            k: (v.to(self.device, self.dtype) if k == "pixel_values_videos" else v.to(self.device))
            if hasattr(v, "to")
            else v
            for k, v in batch.items()
        }
        with torch.inference_mode():
            out = self.model.generate(**batch, generation_config=self.generation_config)
        completions = out[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(completions, skip_special_tokens=True)


def _load_clips(source, queries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Decode each distinct video of a batch once; failures become ``(kind, message)`` tuples."""
    from open_r1.video import VideoDecodeError

    clips: dict[str, Any] = {}
    for video_id in dict.fromkeys(q["video_id"] for q in queries):
        try:
            if source.missing([video_id]):
                clips[video_id] = ("missing_video", f"no cached or raw video for {video_id}")
            else:
                clips[video_id] = source.get(video_id)
        except VideoDecodeError as exc:
            clips[video_id] = ("decode_error", str(exc))
        except Exception as exc:  # a decoder crash on one file must not end the run; it is scored 0 and reported
            logger.warning("decoding %s failed: %s: %s", video_id, type(exc).__name__, exc)
            clips[video_id] = ("decode_error", f"{type(exc).__name__}: {exc}")
    return clips


def _result(query: dict[str, Any], output: str | None, error: str | None = None, detail: str | None = None) -> dict:
    gt = [list(map(float, w)) for w in query["windows"]]
    record = {
        "video_id": query["video_id"],
        "query_id": query["query_id"],
        "query": query["query"],
        "duration": float(query["duration"]),
        "gt": gt,
        "output": output,
    }
    if error is None:
        record.update(score_output(output, gt))
    else:
        record.update(pred=None, iou=0.0, rule=None, error=error)
    if detail:
        record["detail"] = detail
    return record


def _generate_records(generate, batch, clips) -> list[dict[str, Any]]:
    """Results of one batch; a failed generate() is retried one query at a time before it counts as a failure."""
    records: dict[str, dict[str, Any]] = {}
    ready = []
    for query in batch:
        clip = clips[query["video_id"]]
        if isinstance(clip, tuple):
            records[query["query_id"]] = _result(query, None, error=clip[0], detail=clip[1])
        else:
            ready.append(query)
    groups = [ready] if ready else []
    while groups:
        group = groups.pop(0)
        try:
            outputs = generate(group, [clips[q["video_id"]] for q in group])
        except Exception as exc:  # one bad query must not end a 17k-query run; it scores 0 and is reported
            if len(group) > 1:
                logger.warning("generate() failed on a batch of %d (%s); retrying one by one", len(group), exc)
                groups = [[q] for q in group] + groups
                _empty_cuda_cache()
                continue
            logger.warning("generate() failed on %s: %s", group[0]["query_id"], exc)
            records[group[0]["query_id"]] = _result(group[0], None, "generation_error", f"{type(exc).__name__}: {exc}")
            _empty_cuda_cache()
            continue
        for query, output in zip(group, outputs):
            records[query["query_id"]] = _result(query, output)
    for query in ready:
        start = min(float(window[0]) for window in query["windows"])
        if clips[query["video_id"]].duration <= start:
            records[query["query_id"]]["clip_ends_before_gt"] = True
    return [records[q["query_id"]] for q in batch]


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_evaluation(args: EvalArguments | dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``args.model_base`` on a split; returns :func:`compute_metrics` over all its queries.

    Resumes from the predictions already in the output folder (each query is generated once). Under torchrun each
    rank takes every WORLD_SIZE-th query, writes its own shard, and rank 0 merges them at the end; every rank returns
    the same metrics (plus ``output_dir``). With ``args.rescore`` set, only rescores that file.

    Example (from Python, e.g. after training)::

        run_evaluation({"model_base": "outputs/ckpt", "dataset": "charades", "cache_dir": "cache/charades"})
    """
    if isinstance(args, dict):
        args = EvalArguments(**args)
    if args.rescore is not None:
        return rescore_predictions(args.rescore, allow_mixed=args.allow_mixed)
    from open_r1.modeling import check_model_path

    check_model_path(args.model_base)  # a misspelled local folder fails here, not after a Hub lookup
    queries, name = resolve_queries(args)
    if not queries:
        raise ValueError(f"{name}: no queries to evaluate")
    from open_r1.video import VideoSource, describe_missing

    source = VideoSource(args.to_settings(), cache_dir=args.cache_dir, video_dir=args.video_dir)
    missing = describe_missing(source, [q["video_id"] for q in queries])
    if missing and not args.allow_missing_videos:
        # Before the model loads: a misspelled --cache_dir would otherwise score every query 0 and exit 0.
        raise FileNotFoundError(f"{name}: {missing} --allow_missing_videos scores them as failures instead.")
    if missing:
        logger.warning("%s: %s They score IoU 0 (missing_video).", name, missing)
    import torch

    rank, world, local_rank = _dist_info()
    initialized_here = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo is enough: the ranks only wait for each other (a long timeout: shards can finish hours apart).
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
            initialized_here = True
    try:
        return _evaluate(args, queries, name, rank, world, local_rank, torch, source)
    finally:
        if initialized_here:
            torch.distributed.destroy_process_group()


def _evaluate(args, queries, name, rank, world, local_rank, torch, source) -> dict[str, Any]:
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args, name)
    config = _run_config(args, name)
    _prepare_output_dir(output_dir, config, args.overwrite, rank, world)
    # Every line carries its run's id, so that a file holding lines of two runs is noticed when rescored.
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]

    done = set()
    for path in [output_dir / PREDICTIONS_FILE, *shard_paths(output_dir)]:
        done.update(record_key(r) for r in read_predictions(path))
    # Sharding by position in the split (not by what is left) keeps ranks disjoint whatever each one has read.
    mine = [q for i, q in enumerate(queries) if i % world == rank and q["query_id"] not in done]
    # Similar lengths batch together (less padding), and queries of one video sit side by side (one decode).
    mine.sort(key=lambda q: (q["duration"], q["video_id"]))
    own_file = output_dir / (PREDICTIONS_FILE if world == 1 else f"predictions.rank{rank}.jsonl")
    repair_tail(own_file)
    logger.info(
        "%s: %d queries, %d already done, %d for rank %d/%d -> %s",
        name,
        len(queries),
        len(done & {q["query_id"] for q in queries}),
        len(mine),
        rank,
        world,
        output_dir,
    )

    if mine:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        generate = _Generator(args, device)
        batches = [mine[i : i + args.batch_size] for i in range(0, len(mine), args.batch_size)]
        hits = scored = 0
        # Decode the next batch's videos in a thread while the model generates the current one.
        with ThreadPoolExecutor(max_workers=1) as pool, own_file.open("a", encoding="utf-8") as out:
            pending = pool.submit(_load_clips, source, batches[0])
            progress = tqdm(total=len(mine), desc=f"eval {name}", disable=rank != 0, unit="query")
            for i, batch in enumerate(batches):
                clips = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(_load_clips, source, batches[i + 1])
                for record in _generate_records(generate, batch, clips):
                    record["run_id"] = run_id
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    hits += record_iou(record) >= 0.5 - IOU_TIE_EPS
                    scored += 1
                progress.update(len(batch))
                progress.set_postfix({"R1@0.5": f"{100 * hits / scored:.1f}"})
            progress.close()

    _barrier()
    order = [q["query_id"] for q in queries]
    if rank == 0:
        if world > 1 or shard_paths(output_dir):
            merge_predictions(output_dir, order)
        wanted = set(order)
        records = [r for r in read_predictions(output_dir / PREDICTIONS_FILE) if record_key(r) in wanted]
        missing = len(wanted) - len(records)
        if missing:
            raise RuntimeError(f"{missing} queries of {name} have no prediction in {output_dir}; rerun to resume")
        metrics = compute_metrics(records)
        metrics["run"] = name
        metrics["model_base"] = str(args.model_base)
        _write_json_atomic(output_dir / METRICS_FILE, metrics)
        plot_predictions(records, output_dir / PLOT_FILE, args.num_plot_queries)
        logger.info(
            "%s: R1@0.3 %.2f, R1@0.5 %.2f, R1@0.7 %.2f, mIoU %.2f over %d queries (%d failed) -> %s",
            name,
            metrics["R1@0.3"],
            metrics["R1@0.5"],
            metrics["R1@0.7"],
            metrics["mIoU"],
            metrics["num_queries"],
            metrics["num_failed"],
            output_dir / METRICS_FILE,
        )
    _barrier()
    metrics = json.loads((output_dir / METRICS_FILE).read_text(encoding="utf-8"))
    metrics["output_dir"] = str(output_dir)
    return metrics


__all__ = [
    "FAILURE_KINDS",
    "THRESHOLDS",
    "compute_metrics",
    "format_table",
    "merge_predictions",
    "plot_predictions",
    "read_predictions",
    "recall_at",
    "rescore_predictions",
    "rescore_record",
    "run_evaluation",
    "score_output",
]
