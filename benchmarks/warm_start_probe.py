"""Does a supervised warm start make the tiny model read time from the video? One run of the table in docs/demo.md.

    python benchmarks/warm_start_probe.py --output_dir outputs/probe --steps 300         # the demo's warm start
    python benchmarks/warm_start_probe.py --shape_size 0.333 --size 48 64 --events 2 --answer_decimals 0  # before

Writes the demo's synthetic splits (with the data options given), trains `open_r1.sft_video` from a tiny random
Qwen2.5-VL through the demo's own functions, and scores greedy answers with the evaluation loop on the held-out
videos, on all-background copies of them (`blank`: what the model answers without seeing the events) and on the
training videos; also the constant baseline. A model that reads the video scores well above `blank` on held-out.
Prints one JSON line and writes it to OUTPUT_DIR/probe.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def main() -> int:
    from open_r1 import demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo.add_task_arguments(parser, "outputs/warm_start_probe")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--answer_decimals", type=int, default=2)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--position_layout", default="reference", choices=["reference", "transformers"])
    parser.add_argument("--freeze_vision_tower", action="store_true", help="Train the language model only.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_steps", type=int, default=None, help="Also score the checkpoint every N steps.")
    parser.add_argument("--validation", action="store_true", help="Score on the demo's validation split (where "
                        "settings are chosen) instead of the held-out, blank and training videos.")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    from open_r1.evaluation import compute_metrics
    from open_r1.modeling import build_tiny_model

    started = time.perf_counter()
    out = Path(args.output_dir)
    splits = demo.make_data(out / "data", args.train_videos, demo.task_data(args))
    cache = out / "data" / "cache"
    model = build_tiny_model(out / "random_model", seed=args.seed, hidden_size=args.hidden_size,
                             num_layers=args.num_layers)  # fmt: skip
    warm = demo.train_warm_start(model, splits["train"], cache, out / "warm_start", args.seed, args.steps,
                                 args.batch_size, args.answer_decimals, args.position_layout,
                                 args.freeze_vision_tower, args.save_steps)  # fmt: skip
    keys = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
    result = {"args": vars(args)}
    if args.validation:
        videos, data_seed = demo.VALIDATION
        splits["validation"] = demo.make_split(out / "validation", videos, data_seed, "val", cache,
                                               demo.task_data(args))  # fmt: skip
        names = [("validation", "validation")]
    else:
        names = [("held_out", "test"), ("blank", "blank"), ("train", "train")]
    steps = list(range(args.save_steps, args.steps, args.save_steps)) if args.save_steps else []
    for step in [*steps, args.steps]:
        model_dir = warm / f"checkpoint-{step}" if step != args.steps else warm
        for name, split in names:
            key = name if step == args.steps else f"{name}@{step}"
            records = demo.evaluate_stage(model_dir, splits[split], cache, out / "eval" / key, 40,
                                          args.position_layout)  # fmt: skip
            result[key] = {k: compute_metrics(records)[k] for k in keys}
            result[key]["distinct_answers"] = len({r["output"] for r in records})
    constant = demo.constant_predictions(splits["train"], splits[names[0][1]])
    result["constant"] = {k: compute_metrics(constant)[k] for k in keys}
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
