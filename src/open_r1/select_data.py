"""Data selection for GRPO: keep the training queries whose sampled answers disagree.

    python -m open_r1.select_data --config recipes/charades/grpo.yaml --model_name_or_path CHECKPOINT \\
        --output_dir outputs/selection/charades [--min_reward_std 0.0] [--max_mean_iou 1.0]
    torchrun --nproc_per_node 4 -m open_r1.select_data ...        # sharded; a killed run resumes where it stopped

A GRPO group whose rewards are all equal has zero advantage everywhere, so it teaches nothing (see
:mod:`open_r1.signals`). This command samples ``num_generations`` completions for every training query from a
checkpoint (the warm start or the base model) through the training code itself: the recipe's flags, the
``VideoGRPOTrainer`` rollout (video encoding, shared prefill, sampling settings, reward functions), so the rewards are
the ones a GRPO step would see. It records each query's rewards, their mean and standard deviation, and writes:

- ``OUTPUT_DIR/scores.rank<R>.jsonl``: one line per query (appended as it goes; what a resumed run skips);
- ``OUTPUT_DIR/annotations.selected.json``: the kept queries as a TimeZero-format annotation file (train on it with
  ``--annotation_file``; query ids are renumbered within each video, the report names the source ids);
- ``OUTPUT_DIR/selection_report.json``: thresholds, counts (kept and each reason for dropping), the kept source query
  ids and the rollout signal over all queries.

A query is kept when its total rewards differ (standard deviation not close to 0, as TRL tests it for
``frac_reward_zero_std``), their standard deviation is at least ``--min_reward_std`` and its mean IoU reward is at most
``--max_mean_iou``. Once every query is scored, running again with other thresholds only refilters.

``--mode difficulty --target_count N`` draws N queries instead, weighted towards a difficulty d = 1 - mean IoU
(TimeLens's data recipe, :func:`draw_by_difficulty`), from the same scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig, ModelConfig

from open_r1.configs import GRPOScriptArguments
from open_r1.run_lock import folder_lock

__all__ = ["SelectionArguments", "decide", "main", "read_scores", "write_selection"]

logger = logging.getLogger("open_r1.select_data")

SELECTED_FILE = "annotations.selected.json"
REPORT_FILE = "selection_report.json"
CONFIG_FILE = "selection_config.json"
# What makes two scoring runs comparable: a resumed run must sample the same way from the same checkpoint.
CONFIG_KEYS = ("model", "weights", "annotation_file", "dataset", "split", "num_generations", "temperature", "top_k", "top_p",
               "min_p", "repetition_penalty", "max_completion_length", "reward_funcs", "reward_weights", "no_think",
               "video_first", "video", "position_layout", "timestamps")  # fmt: skip


@dataclass
class SelectionArguments:
    """Thresholds of ``python -m open_r1.select_data`` (the sampling flags are the training recipe's)."""

    min_reward_std: float = field(
        default=0.0,
        metadata={"help": "Keep a query only if the standard deviation of its total rewards is at least this (the "
                  "default keeps every query whose rewards are not all equal)."},
    )  # fmt: skip
    max_mean_iou: float = field(
        default=1.0,
        metadata={"help": "Drop a query whose mean IoU reward is above this (already solved); 1.0 drops none."},
    )
    overwrite_scores: bool = field(
        default=False, metadata={"help": "Discard scores of an earlier run in --output_dir instead of resuming."}
    )
    mode: str = field(
        default="filter",
        metadata={"help": "filter: the thresholds above; difficulty: draw --target_count queries with Gaussian weights "
                  "over the difficulty d = 1 - mean IoU divided by the density of d (TimeLens). Both from the same "
                  "scores: switching mode samples nothing again."},
    )  # fmt: skip
    target_count: int = field(default=0, metadata={"help": "Queries drawn by --mode difficulty (required there)."})
    difficulty_centre: float = field(
        default=0.95, metadata={"help": "Centre of the Gaussian over d (TimeLens's code: mean IoU about 0.05)."}
    )
    difficulty_width: float = field(default=0.2, metadata={"help": "Its standard deviation (TimeLens: 0.2)."})

    def __post_init__(self):
        from open_r1.configs import check_finite

        check_finite(self)
        if self.mode not in ("filter", "difficulty"):
            raise ValueError(f"--mode must be filter or difficulty, got {self.mode!r}")
        if self.mode == "difficulty" and self.target_count < 1:
            raise ValueError("--mode difficulty needs --target_count N (how many queries to draw)")
        if self.difficulty_width <= 0:
            raise ValueError(f"--difficulty_width must be positive, got {self.difficulty_width}")
        if self.min_reward_std < 0:
            raise ValueError(f"--min_reward_std must be at least 0, got {self.min_reward_std}")
        if not 0.0 <= self.max_mean_iou <= 1.0:
            raise ValueError(f"--max_mean_iou must be in [0, 1], got {self.max_mean_iou}")


def decide(score: dict, min_reward_std: float, max_mean_iou: float) -> str:
    """``"kept"`` or why the query is dropped: ``"unscored"`` (no reward scored any sample), ``"equal_rewards"``,
    ``"low_std"`` or ``"solved"``."""
    from open_r1.signals import is_zero_std

    if score["reward_std"] is None:
        return "unscored"
    if is_zero_std(score["reward_std"]):
        return "equal_rewards"
    if score["reward_std"] < min_reward_std:
        return "low_std"
    if score["mean_iou"] is not None and score["mean_iou"] > max_mean_iou:
        return "solved"
    return "kept"


DIFFICULTY_BINS = 10


def difficulty_histogram(difficulties: list[float]) -> list[int]:
    """Counts of d in :data:`DIFFICULTY_BINS` equal bins over [0, 1] (d = 1 closes the last bin)."""
    counts = [0] * DIFFICULTY_BINS
    for d in difficulties:
        counts[difficulty_bin(d)] += 1
    return counts


def difficulty_bin(d: float) -> int:
    """d's bin; 1e-9 absorbs the rounding of ``1 - mean IoU`` (1 - 0.9 is 0.09999999999999998, not bin 0)."""
    return min(max(int(d * DIFFICULTY_BINS + 1e-9), 0), DIFFICULTY_BINS - 1)


def draw_by_difficulty(difficulty: dict[str, float], target: int, centre: float, width: float, seed: int) -> set[str]:
    """``target`` query ids drawn without replacement with weight ``exp(-(d - centre)^2 / 2 width^2) / density(d)``,
    the density being the share of queries in d's bin (:func:`difficulty_histogram`): the drawn set's difficulties
    follow the Gaussian rather than the pool's own distribution (TimeLens). Efraimidis-Spirakis keys ``u^(1/w)``,
    seeded: the same scores and seed draw the same queries."""
    import random

    counts = difficulty_histogram(list(difficulty.values()))
    generator = random.Random(seed)
    keys = []
    for query_id, d in sorted(difficulty.items()):
        density = counts[difficulty_bin(d)] / len(difficulty)
        weight = math.exp(-((d - centre) ** 2) / (2 * width**2)) / density
        # log(u) / w orders as u^(1/w) without underflow; a weight that underflows to 0 is drawn last.
        keys.append((math.log(1.0 - generator.random()) / weight if weight > 0 else -math.inf, query_id))
    return {query_id for _, query_id in sorted(keys, reverse=True)[:target]}


def query_score(row: dict, rewards: dict[str, list[float]], total: list[float], spans: list) -> dict:
    """One ``scores.rank<R>.jsonl`` line: a query's sampled rewards and their summary."""
    import torch

    from open_r1.signals import group_reward_stats, span_spread

    mean, std = group_reward_stats(torch.tensor(total, dtype=torch.float64), len(total))
    iou = [v for v in rewards.get("iou_reward") or [] if not math.isnan(v)]

    def value(v):  # a sample no reward scored is null in the JSON (NaN is not JSON)
        return None if math.isnan(v) else round(v, 6)

    return {
        "query_id": row["query_id"],
        "video_id": row["video_id"],
        "input": score_input(row),
        "rewards": {name: [value(v) for v in values] for name, values in rewards.items()},
        "total": [value(v) for v in total],
        # None (JSON null), not NaN, when no reward scored any sample.
        "reward_mean": None if math.isnan(mean.item()) else mean.item(),
        "reward_std": None if math.isnan(std.item()) else std.item(),
        "mean_iou": sum(iou) / len(iou) if iou else None,
        "span_spread": span_spread(spans),
    }


def score_input(row: dict) -> str:
    """A digest of what a query's samples are computed on (its video, query text, windows and duration): a score is
    reused only for the same content, not merely the same query id (an edited annotation file keeps its ids)."""
    key = [row["video_id"], row.get("raw_query"), row.get("query"), row["windows"], row["duration"]]
    return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]


def read_scores(output_dir: Path, rows: list[dict] | None = None) -> dict[str, dict]:
    """Every query scored so far in ``output_dir`` (all ranks' files; the first line of a query counts). With
    ``rows``, only scores computed on each row's current content (:func:`score_input`)."""
    from open_r1.jsonl import read_jsonl

    current = None if rows is None else {row["query_id"]: score_input(row) for row in rows}
    scores: dict[str, dict] = {}
    for path in sorted(output_dir.glob("scores.rank*.jsonl")):
        for record in read_jsonl(path):
            if not (isinstance(record, dict) and "query_id" in record and "reward_std" in record):
                continue
            if current is not None and record.get("input") != current.get(record["query_id"]):
                continue
            scores.setdefault(record["query_id"], record)
    return scores


def write_selection(rows: list[dict], scores: dict[str, dict], args: SelectionArguments, output_dir: Path,
                    config: dict) -> dict:  # fmt: skip
    """Apply the thresholds to every row's score; write the filtered annotation file and the report; return the
    report."""
    from open_r1.evaluation.predictions import write_json_atomic
    from open_r1.signals import is_zero_std

    missing = [row["query_id"] for row in rows if row["query_id"] not in scores]
    if missing:
        raise RuntimeError(f"{len(missing)} queries have no score (e.g. {missing[0]}); run again to resume")
    reasons = {"kept": 0, "unscored": 0, "equal_rewards": 0, "low_std": 0, "solved": 0}
    difficulty = {
        row["query_id"]: 1.0 - min(max(scores[row["query_id"]]["mean_iou"], 0.0), 1.0)
        for row in rows
        if scores[row["query_id"]]["mean_iou"] is not None
    }
    drawn = None
    if args.mode == "difficulty":
        reasons = {"kept": 0, "unscored": 0, "not_drawn": 0}
        drawn = draw_by_difficulty(difficulty, args.target_count, args.difficulty_centre, args.difficulty_width,
                                   int(config.get("seed") or 0))  # fmt: skip
    selected: dict[str, dict] = {}
    kept_ids = []
    for row in rows:
        if drawn is None:
            reason = decide(scores[row["query_id"]], args.min_reward_std, args.max_mean_iou)
        else:
            reason = (
                "unscored"
                if row["query_id"] not in difficulty
                else "kept"
                if row["query_id"] in drawn
                else "not_drawn"
            )
        reasons[reason] += 1
        if reason != "kept":
            continue
        kept_ids.append(row["query_id"])
        record = selected.setdefault(row["video_id"], {"duration": row["duration"], "timestamps": [], "sentences": []})
        windows = [list(map(float, w)) for w in row["windows"]]
        record["timestamps"].append(windows[0] if len(windows) == 1 else windows)
        record["sentences"].append(row["raw_query"])
    stds = [std for std in (scores[row["query_id"]]["reward_std"] for row in rows) if std is not None]
    spreads = [s for s in (scores[row["query_id"]]["span_spread"] for row in rows) if s is not None]
    report = {
        "config": config,
        "mode": args.mode,
        "thresholds": {"min_reward_std": args.min_reward_std, "max_mean_iou": args.max_mean_iou}
        if drawn is None
        else {"target_count": args.target_count, "centre": args.difficulty_centre, "width": args.difficulty_width},
        "counts": {"queries": len(rows), **reasons},
        # d = 1 - mean IoU of the sampled answers, in 10 bins over [0, 1]: the pool, and what was kept.
        "difficulty_histogram": {
            "before": difficulty_histogram(list(difficulty.values())),
            "after": difficulty_histogram([difficulty[q] for q in kept_ids if q in difficulty]),
        },
        "signal": {
            "zero_std_share": sum(map(is_zero_std, stds)) / len(stds) if stds else None,
            "group_reward_std": sum(stds) / len(stds) if stds else None,
            "span_spread": sum(spreads) / len(spreads) if spreads else None,
        },
        "selected_file": str(output_dir / SELECTED_FILE),
        "kept_query_ids": kept_ids,
    }
    if selected:
        write_json_atomic(output_dir / SELECTED_FILE, selected)
    else:
        (output_dir / SELECTED_FILE).unlink(missing_ok=True)
        report["selected_file"] = None
    write_json_atomic(output_dir / REPORT_FILE, report)
    return report


def check_config(output_dir: Path, config: dict, overwrite: bool) -> None:
    """Refuse to resume scores sampled another way; with ``overwrite``, start over (the main process only)."""
    path = output_dir / CONFIG_FILE
    if overwrite:
        for old in output_dir.glob("scores.rank*.jsonl"):
            old.unlink()
        path.unlink(missing_ok=True)
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        changed = {k: (old.get(k), config.get(k)) for k in CONFIG_KEYS if old.get(k) != config.get(k)}
        if changed:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{output_dir} holds scores sampled with other settings ({shown}); pass "
                             "--overwrite_scores true to start over, or another --output_dir")  # fmt: skip


def score_queries(trainer, rows: list[dict], dataset, output_dir: Path, done: set[str]) -> None:
    """Sample and score every row not in ``done``, each rank its share, appending to its own scores file."""
    import torch
    from tqdm.auto import tqdm

    from open_r1.jsonl import repair_tail

    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    generations = trainer.num_generations
    # Queries per rollout, as in training; at least one (all its samples on this process) when a process holds part
    # of a group in training (per_device_train_batch_size < num_generations, which TRL allows).
    per_batch = max(1, trainer.args.per_device_train_batch_size // generations)
    todo = [i for i, row in enumerate(rows) if row["query_id"] not in done]
    mine = todo[rank::world]
    # Every rank runs the same number of rollouts (the rewards are gathered across ranks); padding rows are not kept.
    batches = -(-len(todo) // (world * per_batch)) if todo else 0
    padded = mine + [(mine or todo)[-1]] * (batches * per_batch - len(mine)) if batches else []
    path = output_dir / f"scores.rank{rank}.jsonl"
    repair_tail(path)
    trainer.model.train()  # the rollout's training mode: the recipe's num_generations, TRL's train metrics
    progress = tqdm(total=len(todo), desc="scoring queries", unit="query", disable=not accelerator.is_main_process)
    with path.open("a", encoding="utf-8") as out, torch.no_grad():
        for b in range(batches):
            indices = padded[b * per_batch : (b + 1) * per_batch]
            real = len(mine) - b * per_batch
            inputs = [dataset[i] for i in indices for _ in range(generations)]
            trainer._generate_and_score_completions(inputs)
            rollout = trainer.last_rollout
            start = rank * len(inputs)
            names = trainer.reward_func_names
            for q, i in enumerate(indices[: max(real, 0)]):
                rows_of_query = slice(start + q * generations, start + (q + 1) * generations)
                per_func = rollout["rewards_per_func"][rows_of_query]
                rewards = {name: per_func[:, k].tolist() for k, name in enumerate(names)}
                score = query_score(rows[i], rewards, rollout["total"][rows_of_query].tolist(),
                                    rollout["spans"][rows_of_query])  # fmt: skip
                out.write(json.dumps(score) + "\n")
            out.flush()
            os.fsync(out.fileno())
            progress.update(min(per_batch * world, len(todo) - b * per_batch * world))
    progress.close()


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
         selection_args: SelectionArguments) -> dict | None:  # fmt: skip
    """Score (resuming), then filter on the main process; returns the report there (None elsewhere)."""
    from open_r1.grpo_video import build_dataset, preflight
    from open_r1.modeling import load_model, load_processor, weights_digest
    from open_r1.trainer import VideoGRPOTrainer

    if training_args.deepspeed:
        raise ValueError(
            "data selection samples with one whole model per process (a 7B model in bf16 needs 16 GB): run it "
            f"without the recipe's DeepSpeed config ({training_args.deepspeed}); give it a recipe without the "
            "deepspeed line"
        )
    reward_funcs, rows, source, _ = preflight(script_args, training_args, model_args, job="data selection")
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Selection needs the rewards, not the KL: no reference model; nothing reported, nothing saved.
    training_args.beta = 0.0
    training_args.remove_unused_columns = False
    training_args.report_to = []
    training_args.save_strategy = "no"
    config = {
        "model": str(model_args.model_name_or_path),
        "weights": weights_digest(model_args.model_name_or_path),  # retrained into the same folder: other samples
        "annotation_file": script_args.annotation_file,
        "dataset": None if script_args.annotation_file else script_args.dataset,
        "split": None if script_args.annotation_file else script_args.split,
        "num_generations": training_args.num_generations,
        "temperature": training_args.temperature,
        "top_k": training_args.top_k,
        "top_p": training_args.top_p,
        "min_p": training_args.min_p,
        "repetition_penalty": training_args.repetition_penalty,
        "max_completion_length": training_args.max_completion_length,
        "reward_funcs": list(script_args.reward_funcs),
        "reward_weights": training_args.reward_weights,
        "no_think": script_args.no_think,
        "video_first": script_args.video_first,
        # What the model sees of each video (frame rate, pixel budgets, frame cap) and where it places it.
        "video": dataclasses.asdict(script_args.to_settings()),
        "position_layout": script_args.position_layout,
        # Only when not the paper's layout: scores written before the option resume as before.
        **({"timestamps": script_args.timestamps} if script_args.timestamps != "mrope" else {}),
        "seed": training_args.seed,
    }
    dataset = build_dataset(rows, script_args)
    # Sampling only: the weights in the recipe's dtype (no fp32 masters, nothing is updated).
    model = load_model(model_args.model_name_or_path, attn_implementation=model_args.attn_implementation,
                       dtype=model_args.dtype, position_layout=script_args.position_layout)  # fmt: skip
    trainer = VideoGRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=dataset,
        processing_class=load_processor(model_args.model_name_or_path), video_loader=source.get,
        freeze_vision_tower=True, position_layout=script_args.position_layout, shared_work=script_args.shared_work,
        whole_groups=script_args.whole_groups, decode=script_args.decode,
    )  # fmt: skip
    accelerator = trainer.accelerator
    # One selection per output folder: the main process holds the lock until the report is written.
    with folder_lock(output_dir, "data selection") if accelerator.is_main_process else contextlib.nullcontext():
        return _select(trainer, rows, dataset, output_dir, config, selection_args)


def _select(trainer, rows, dataset, output_dir: Path, config: dict, selection_args: SelectionArguments) -> dict | None:
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        check_config(output_dir, config, selection_args.overwrite_scores)
        (output_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    accelerator.wait_for_everyone()
    done = set(read_scores(output_dir, rows))
    changed = set(read_scores(output_dir)) - done
    if changed:
        logger.warning("%d queries changed since they were scored (e.g. %s: the annotation file was edited under the "
                       "same ids): scored again", len(changed), sorted(changed)[0])  # fmt: skip
    logger.info("%d queries, %d already scored, %d completions each, %d processes", len(rows),
                len(done & {r["query_id"] for r in rows}), trainer.num_generations, accelerator.num_processes)  # fmt: skip
    score_queries(trainer, rows, dataset, output_dir, done)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    scores = read_scores(output_dir, rows)
    report = write_selection(rows, scores, selection_args, output_dir, config)
    counts = report["counts"]
    if report["mode"] == "difficulty":
        logger.info("drew %d of %d queries by difficulty (%d unscored); d histogram before %s, after %s -> %s",
                    counts["kept"], counts["queries"], counts["unscored"], report["difficulty_histogram"]["before"],
                    report["difficulty_histogram"]["after"], report["selected_file"])  # fmt: skip
        return report
    if counts["queries"] and counts["equal_rewards"] + counts["unscored"] == counts["queries"]:
        parsed = [s for s in scores.values() if s.get("mean_iou")]
        logger.warning(
            "kept no query: the samples of every query got equal rewards (or none). %s",
            "No sampled answer scored any IoU: does the checkpoint write '<answer>a to b</answer>'? A supervised warm "
            "start (python -m open_r1.sft_video) teaches the format" if not parsed else
            "Raise the temperature, or start from another checkpoint",
        )  # fmt: skip
    logger.info(
        "kept %d of %d queries (dropped: %d unscored, %d equal rewards, %d below --min_reward_std, %d above "
        "--max_mean_iou); zero-spread share %s, mean within-query reward std %s -> %s",
        counts["kept"], counts["queries"], counts["unscored"], counts["equal_rewards"], counts["low_std"],
        counts["solved"], report["signal"]["zero_std_share"], report["signal"]["group_reward_std"],
        report["selected_file"],
    )  # fmt: skip
    return report


def cli(argv: list[str] | None = None):
    from open_r1.grpo_video import run_entry_point

    def run(script_args, training_args, model_args, selection_args):
        return main(script_args, training_args, model_args, selection_args)

    return run_entry_point((GRPOScriptArguments, GRPOConfig, ModelConfig, SelectionArguments), run,
                           "data selection", argv)  # fmt: skip


if __name__ == "__main__":
    cli()
    sys.exit(0)
