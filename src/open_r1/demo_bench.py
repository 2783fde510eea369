"""The demo as an ablation bench: recipe arms x seeds, one table with paired standard errors.

    python -m open_r1.demo_bench --output_dir outputs/bench --seeds 10 11 12 13 14 15 16 17 18 19
    python -m open_r1.demo_bench --output_dir outputs/bench --table      # the table of the runs done so far

Each (arm, seed) is one full ``python -m open_r1.demo`` run in ``OUTPUT_DIR/<arm>/seed<seed>`` (its own process, one
CPU thread unless OMP_NUM_THREADS says otherwise; ``--jobs`` at a time). A run with a ``summary.json`` is not run
again, so an interrupted bench resumes where it stopped, unless its warm start's check would end at another step under
today's margin (:func:`check_still_holds`): then its folder is kept as ``seed<seed>.stale<k>`` and the run is redone.
The arms (:data:`ARMS`) are the paper's recipe and the TimeLens changes one at a time, then together with
difficulty-weighted data. The table (``bench.md`` and ``bench.json``) gives, per arm and stage, the min / median / max
over seeds of held-out R1@0.5 and mIoU; how many seeds' warm starts clear both baselines (constant and blank) by
:data:`CLEAR_MARGIN` R1@0.5, and the steps they trained; GRPO − warm start (mean over queries with its paired standard
error, per seed, then the median); and the arm's GRPO − the ``timezero`` arm's on the same seed and queries, with its
paired standard error. A run whose check would end elsewhere under today's margin is marked stale in the table.

The default seeds 10-19 were used to choose nothing: the demo's settings come from seeds 0-5 and its validation split.
One rule changed after seeds 10-14 ran: the warm start's check margin (``open_r1.demo.WARM_START_MARGIN``, 15 -> 25),
set from the splits' sizes after two of those seeds passed it narrowly; seeds 15-19 ran only under the new margin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from statistics import median, stdev

logger = logging.getLogger("open_r1.demo_bench")

# name: the demo's flags for it.
ARMS = {
    "timezero": ["--recipe", "timezero"],
    "interleaved": ["--recipe", "timezero", "--timestamps", "interleaved"],
    "answer_only": ["--recipe", "timezero", "--no_think", "on"],
    "timelens": ["--recipe", "timelens"],
}
DEFAULT_SEEDS = tuple(range(10, 20))
CLEAR_MARGIN = 15.0  # R1@0.5 points a warm start must clear both baselines by
STAGES = ("random", "constant", "blank", "sft", "grpo")


def run_dir(output_dir: Path, arm: str, seed: int) -> Path:
    return Path(output_dir) / arm / f"seed{seed}"


def run_arm(output_dir: Path, arm: str, seed: int, extra: list[str]) -> int:
    """One demo run in its own process (its log in ``demo.log`` next to it); returns its exit code."""
    folder = run_dir(output_dir, arm, seed)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "open_r1.demo", "--output_dir", str(folder), "--seed", str(seed), *ARMS[arm],
               *extra]  # fmt: skip
    with open(folder / "demo.log", "w", encoding="utf-8") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)).wait()


def check_still_holds(record: dict | None, margin: float) -> bool:
    """Whether a finished run's warm-start check (``summary.json``'s ``warm_start_check``) ends at the same step under
    ``margin``: the check passes at its first score reaching the threshold, and training up to there is the same, so
    the recorded scores decide it. A run without a check (``--warm_start_check off``, a given warm start) holds."""
    if not record:
        return True
    threshold = record["validation_constant_R1@0.5"] + margin
    first = next((check["step"] for check in record["checks"] if check["score"] >= threshold), None)
    recorded = record["steps"] if record["passed"] else None
    return first == recorded


def finished(output_dir: Path, arm: str, seed: int) -> bool:
    """A run counts as done when its ``summary.json`` exists and its warm-start check holds under today's margin; a
    stale run's folder is moved aside (``seed<seed>.stale<k>``), never deleted."""
    from open_r1.demo import WARM_START_MARGIN

    folder = run_dir(output_dir, arm, seed)
    if not (folder / "summary.json").is_file():
        return False
    if check_still_holds(json.loads((folder / "summary.json").read_text()).get("warm_start_check"), WARM_START_MARGIN):
        return True
    k = 1
    while folder.with_name(f"{folder.name}.stale{k}").exists():
        k += 1
    folder.rename(folder.with_name(f"{folder.name}.stale{k}"))
    logger.info("%s seed %d: its warm start's check ends elsewhere with margin %g; redone (old run in %s.stale%d)",
                arm, seed, WARM_START_MARGIN, folder.name, k)  # fmt: skip
    return False


def run_all(output_dir: Path, arms: list[str], seeds: list[int], jobs: int, extra: list[str]) -> list[str]:
    """Run every missing or stale (arm, seed), ``jobs`` at a time; returns the runs that failed."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    todo = [(arm, seed) for seed in seeds for arm in arms if not finished(output_dir, arm, seed)]
    logger.info("%d runs to do (%d done already)", len(todo), len(arms) * len(seeds) - len(todo))
    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_arm, output_dir, arm, seed, extra): (arm, seed) for arm, seed in todo}
        for done, future in enumerate(as_completed(futures), 1):
            arm, seed = futures[future]
            code = future.result()
            logger.info("[%d/%d] %s seed %d: %s", done, len(todo), arm, seed, "done" if code == 0 else f"exit {code}")
            if code:
                failed.append(f"{arm}/seed{seed} (exit {code}; see its demo.log)")
    return failed


def stage_records(folder: Path, stage: str) -> list[dict]:
    """The prediction records of one evaluated stage (``eval/<stage>``) of a demo run, read strictly."""
    from open_r1.evaluation import PREDICTIONS_FILE, read_predictions

    return read_predictions(folder / "eval" / stage / PREDICTIONS_FILE, strict=True)


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": median(values), "max": max(values)} if values else {}


def summarise(output_dir: Path, arms: list[str], seeds: list[int]) -> dict:
    """The bench's numbers from the finished runs (a run without ``summary.json`` is left out and counted)."""
    from open_r1.demo import WARM_START_MARGIN
    from open_r1.demo_report import paired_change

    table: dict = {"seeds": seeds, "arms": {}}
    gaps, seconds = [], []  # over every finished run of every arm
    for arm in arms:
        done = [seed for seed in seeds if (run_dir(output_dir, arm, seed) / "summary.json").is_file()]
        summaries = {s: json.loads((run_dir(output_dir, arm, s) / "summary.json").read_text()) for s in done}
        for summary in summaries.values():
            seconds.append(summary["seconds"])
            if (summary.get("warm_start_check") or {}).get("checks"):
                gaps.append(summary["warm_start_check"]["checks"][-1]["score"] - summary["sft"]["R1@0.5"])
        entry: dict = {"seeds_done": done, "stages": {}}
        for stage in STAGES:
            entry["stages"][stage] = {
                key: spread([summaries[s][stage][key] for s in done]) for key in ("R1@0.5", "mIoU")
            }  # fmt: skip
        clears = [s for s in done if summaries[s]["sft"]["R1@0.5"]
                  >= max(summaries[s]["constant"]["R1@0.5"], summaries[s]["blank"]["R1@0.5"]) + CLEAR_MARGIN]  # fmt: skip
        entry["warm_start_clears"] = {"count": len(clears), "of": len(done), "seeds": clears}
        # Steps the warm start trained (its check's end; absent where no check ran).
        steps = {str(s): (summaries[s].get("warm_start_check") or {}).get("steps") for s in done}
        entry["warm_start_steps"] = {"per_seed": steps, **spread([v for v in steps.values() if v is not None])}
        # Runs whose check would end elsewhere under today's margin (a --table before the bench redid them).
        entry["stale_seeds"] = [s for s in done if not check_still_holds(summaries[s].get("warm_start_check"),
                                                                         WARM_START_MARGIN)]  # fmt: skip
        if entry["stale_seeds"]:
            logger.warning("%s: seeds %s ran under another warm-start margin (run the bench to redo them)", arm,
                           entry["stale_seeds"])  # fmt: skip
        gains = {s: summaries[s]["grpo_vs_sft"]["mIoU_change"] for s in done}
        entry["grpo_minus_sft"] = {"per_seed": {str(s): gains[s] for s in done},
                                   "median": median([g["mean"] for g in gains.values()]) if gains else None}  # fmt: skip
        if arm != "timezero":
            versus = {}
            for s in done:
                base = run_dir(output_dir, "timezero", s)
                if (base / "summary.json").is_file():
                    versus[str(s)] = paired_change(stage_records(base, "grpo"),
                                                   stage_records(run_dir(output_dir, arm, s), "grpo"))  # fmt: skip
            entry["grpo_minus_timezero"] = {
                "per_seed": versus,
                "median": median([v["mean"] for v in versus.values()]) if versus else None,
            }
        table["arms"][arm] = entry
    # How far a validation score says something about held-out queries: the warm start's last check minus its
    # held-out R1@0.5, per run; and the runs' wall time.
    table["validation_minus_held_out"] = {"runs": len(gaps), "sd": stdev(gaps) if len(gaps) > 1 else None,
                                          **spread(gaps)}  # fmt: skip
    table["seconds"] = {"runs": len(seconds), **spread(seconds)}
    return table


def markdown(table: dict) -> str:
    """``bench.md``: one row per arm."""

    def triple(cell: dict) -> str:
        return f"{cell['median']:.1f} ({cell['min']:.1f}–{cell['max']:.1f})" if cell else "–"

    lines = [
        "| arm | seeds | warm start clears baselines by 15 | sft R1@0.5 | grpo R1@0.5 | sft mIoU | grpo mIoU | "
        "grpo − sft mIoU (median; per seed ± paired SE) | grpo − timezero mIoU (median; per seed ± paired SE) | "
        "warm-start steps (median; min–max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, entry in table["arms"].items():
        stages = entry["stages"]
        gains = entry["grpo_minus_sft"]
        per_seed = ", ".join(f"{g['mean']:+.1f}±{g['standard_error']:.1f}" for g in gains["per_seed"].values())
        versus = entry.get("grpo_minus_timezero")
        if versus is None:
            against = "–"
        elif not versus["per_seed"]:
            against = "no paired timezero run"
        else:
            seeds = ", ".join(f"{v['mean']:+.1f}±{v['standard_error']:.1f}" for v in versus["per_seed"].values())
            against = f"{versus['median']:+.1f}; {seeds}"
        clears = entry["warm_start_clears"]
        steps = entry["warm_start_steps"]
        warm_steps = f"{steps['median']:g} ({steps['min']:g}–{steps['max']:g})" if "median" in steps else "–"
        stale = f" ({len(entry['stale_seeds'])} stale)" if entry.get("stale_seeds") else ""
        lines.append(
            f"| {arm} | {len(entry['seeds_done'])}{stale} | {clears['count']} of {clears['of']} | "
            f"{triple(stages['sft']['R1@0.5'])} | {triple(stages['grpo']['R1@0.5'])} | {triple(stages['sft']['mIoU'])} "
            f"| {triple(stages['grpo']['mIoU'])} | "
            + (f"{gains['median']:+.1f}; {per_seed}" if gains["per_seed"] else "–")
            + f" | {against} | {warm_steps} |"
        )
    gap, seconds = table.get("validation_minus_held_out", {}), table.get("seconds", {})
    if gap.get("sd") is not None:
        lines.append(f"\nWarm start's last validation check − its held-out R1@0.5 over {gap['runs']} runs: SD "
                     f"{gap['sd']:.2f} ({gap['min']:+.2f} to {gap['max']:+.2f}).")  # fmt: skip
    if seconds.get("runs"):
        lines.append(
            f"Wall time per run: {seconds['min']:.0f}–{seconds['max']:.0f} s (median {seconds['median']:.0f} s)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output_dir", default="outputs/bench")
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--jobs", type=int, default=1, help="Demo runs at a time (each uses one CPU thread).")
    parser.add_argument("--table", action="store_true", help="Only write the table of the runs done so far.")
    args, extra = parser.parse_known_args(argv)  # anything else goes to every demo run (e.g. --grpo_steps 100)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    output_dir = Path(args.output_dir)
    failed = [] if args.table else run_all(output_dir, args.arms, args.seeds, max(1, args.jobs), extra)
    table = summarise(output_dir, args.arms, args.seeds)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "bench.json").write_text(json.dumps(table, indent=1))
    text = markdown(table)
    (output_dir / "bench.md").write_text(text)
    print(text)  # noqa: T201
    if failed:
        logger.error("%d runs failed: %s", len(failed), "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
