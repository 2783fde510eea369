"""Does the tiny model use the video at all? Answer-token loss on held-out videos against all-background copies.

    python benchmarks/video_use_probe.py --steps 250                                  # the demo's task
    python benchmarks/video_use_probe.py --shape_size 0.667 --size 48 64 --steps 250  # shapes 2/3 of the side
    python benchmarks/video_use_probe.py --events 2 --steps 1000 --eval_every 250     # two events, the query picks one

A plain teacher-forced loop (AdamW, lr 3e-3, batch 16, 30 warm-up steps, gradient clipping at 1) over the demo's
synthetic splits, through the warm start's own collator (:class:`open_r1.sft_video.VideoSFTCollator`: the paper's
prompt, the cache, the reference 3-D positions), on a tiny random Qwen2.5-VL. Every ``--eval_every`` steps it prints
the mean answer-token loss on the held-out queries and on the same queries over all-background copies of their
videos. Equal losses mean the model answers without looking at the video; a held-out loss below the blank loss means
it reads the event. Cheaper and less noisy than greedy scores for telling those apart (``warm_start_probe.py`` gives
the greedy scores through the real trainer). ``--one_d_positions`` replaces the 3-D positions by 1-D ones.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def main() -> int:
    from open_r1 import demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    demo.add_task_arguments(parser, "outputs/video_use_probe")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--answer_decimals", type=int, default=2)
    parser.add_argument("--one_d_positions", action="store_true", help="Text-style 1-D positions for every token.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from open_r1 import modeling
    from open_r1.configs import VideoArguments
    from open_r1.data import load_annotations
    from open_r1.sft_video import SFTScriptArguments, VideoSFTCollator, build_dataset
    from open_r1.video import VideoSource

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.output_dir)
    splits = demo.make_data(out / "data", args.train_videos, demo.task_data(args))
    model_dir = modeling.build_tiny_model(out / "random_model", seed=args.seed)
    model = modeling.load_model(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    processor = modeling.load_processor(model_dir)
    source = VideoSource(VideoArguments(**demo.DEMO_VIDEO).to_settings(), cache_dir=out / "data" / "cache")
    script_args = SFTScriptArguments(annotation_file=str(splits["train"]), cache_dir=str(out / "data" / "cache"),
                                     answer_decimals=args.answer_decimals, **demo.DEMO_VIDEO)  # fmt: skip
    collate = VideoSFTCollator(processor, source.get)
    rows = {name: list(build_dataset(load_annotations(path), script_args)) for name, path in splits.items()}

    def forward(batch):
        if args.one_d_positions:
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            batch = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
            batch["position_ids"] = positions[None].expand(3, -1, -1)
        return model(**batch)

    @torch.no_grad()
    def answer_loss(queries: list[dict]) -> float:
        model.eval()
        total = count = 0
        for start in range(0, len(queries), 16):
            batch = collate(queries[start : start + 16])
            logits, labels = forward(batch).logits[:, :-1], batch["labels"][:, 1:]
            mask = labels != -100
            total += torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
            count += int(mask.sum())
        model.train()
        return round(total / count, 4)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    started, result = time.perf_counter(), {"args": vars(args), "evals": []}
    for step in range(1, args.steps + 1):
        loss = forward(collate(rng.sample(rows["train"], min(16, len(rows["train"]))))).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            entry = {"step": step, "train_loss": round(loss.item(), 4), "held_out": answer_loss(rows["test"]),
                     "blank": answer_loss(rows["blank"]), "seconds": round(time.perf_counter() - started)}  # fmt: skip
            result["evals"].append(entry)
            print(json.dumps(entry), flush=True)
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
