"""Evaluate a checkpoint on a temporal grounding split, or rescore a predictions file.

    python evaluate.py --model_base PATH --dataset charades --video_dir VIDEOS [--cache_dir CACHE] [--batch_size 8]
    python evaluate.py --model_base PATH --dataset activitynet --split val_1 --no_think ...
    python evaluate.py --rescore outputs/eval/MODEL/charades_test/predictions.jsonl

Several GPUs: ``bash scripts/evaluate.sh ...`` (torchrun, one process per GPU). All flags: ``--help``.
``--preflight`` runs only the checks that need no model (``scripts/evaluate.sh`` does, before torchrun starts); any
problem found is printed as one ``pre-flight (evaluation): ...`` message, exit status 2.
``python -m open_r1.evaluate`` is the same command; the work is in :mod:`open_r1.evaluation`.
"""

import json
import logging
import os
import sys

from transformers import HfArgumentParser

from open_r1.configs import EvalArguments, normalize_video_flags
from open_r1.evaluation import format_table, rescore_predictions, run_evaluation
from open_r1.evaluation.runner import check_evaluation


def main(argv=None) -> dict:
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    argv = normalize_video_flags(list(sys.argv[1:] if argv is None else argv))
    preflight_only = "--preflight" in argv
    argv = [arg for arg in argv if arg != "--preflight"]
    try:
        # allow_abbrev=False: a misspelled flag fails instead of matching another one.
        (args,) = HfArgumentParser(EvalArguments, allow_abbrev=False).parse_args_into_dataclasses(args=argv)
        checked = None if args.rescore is not None else check_evaluation(args)
    except (OSError, ValueError) as error:
        # The checks' problems as one message (the training launcher's form), not a traceback; exit status 2.
        print(f"pre-flight (evaluation): {error}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    if preflight_only:
        logging.getLogger(__name__).info("evaluation pre-flight: no problem found")
        return None
    if args.rescore is not None:
        metrics = rescore_predictions(args.rescore, allow_mixed=args.allow_mixed, protocol=args.protocol)
        title = f"rescored {args.rescore}"
    else:
        metrics = run_evaluation(args, checked)
        title = f"{metrics.get('run', args.dataset)}: {args.model_base}"
    if rank == 0:
        print(format_table(metrics, title=title))
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
