"""Evaluate a checkpoint on a temporal grounding split, or rescore a predictions file.

    python evaluate.py --model_base PATH --dataset charades --video_dir VIDEOS [--cache_dir CACHE] [--batch_size 8]
    python evaluate.py --model_base PATH --dataset activitynet --split val_1 --no_think ...
    python evaluate.py --rescore outputs/eval/MODEL/charades_test/predictions.jsonl

Several GPUs: ``bash scripts/evaluate.sh ...`` (torchrun, one process per GPU). All flags: ``--help``.
``python -m open_r1.evaluate`` is the same command; the work is in :mod:`open_r1.evaluation`.
"""

import json
import logging
import os
import sys

from transformers import HfArgumentParser

from open_r1.configs import EvalArguments, normalize_video_flags
from open_r1.evaluation import format_table, rescore_predictions, run_evaluation


def main(argv=None) -> dict:
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    argv = normalize_video_flags(list(sys.argv[1:] if argv is None else argv))
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(args=argv)
    if args.rescore is not None:
        metrics = rescore_predictions(args.rescore, allow_mixed=args.allow_mixed)
        title = f"rescored {args.rescore}"
    else:
        metrics = run_evaluation(args)
        title = f"{metrics.get('run', args.dataset)}: {args.model_base}"
    if rank == 0:
        print(format_table(metrics, title=title))
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
