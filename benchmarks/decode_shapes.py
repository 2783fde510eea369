"""How many compiled decode shapes a real run needs, against the compiled-shape budget and dynamo's recompile limit.

A static decode compiles one graph per (rows, cache length) shape (``open_r1.decoding.StaticDecoder``); dynamo stops
at its recompile limit (8), and the decoder compiles at most half of it, decoding further shapes eagerly. The cache
length is the run's high-water mark, grown by at least 25 % at a time (``StaticDecoder.cache_length_for``); sized per
call instead (``HIGH_WATER = False``: each call's need rounded up to 512 tokens) every bucket would be a shape. This
script counts both for the bundled splits at the paper's settings, without a model: every query's prompt length is its rendered question (the bundled tokenizer and chat
template) plus its video tokens (qwen-vl-utils' frame count and resize rules at 2 fps and 3584 x 28 x 28 pixels, for
source frames of ``--source_size``).

- training rollouts (the recipes: one query x 8 completions per process, in a shuffled order, ``--orders`` of them):
  rows ``per_device_train_batch_size``, cache = prompt + ``max_completion_length`` (1024);
- evaluation (``scripts/evaluate.sh``: queries sorted by video, batches of ``--eval_batch_size``): rows per batch,
  cache = the batch's longest prompt + ``max_new_tokens`` (1024); the last, shorter batch is a shape of its own.

    python benchmarks/decode_shapes.py
    python benchmarks/decode_shapes.py --source_size 360 640 --eval_batch_size 32
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from eval_bound import video_grid  # noqa: E402

SPLITS = {"charades": ("train", "test"), "activitynet": ("train", "val_2")}
MARKER = "zzqueryzz"  # survives normalize_query (lower case, no final period)


def prompt_lengths(rows: list[dict], processor, source_size: tuple[int, int]) -> list[int]:
    """Tokens of each row's prompt: its question rendered by the chat template, the one video placeholder replaced by
    the clip's merged video tokens."""
    from open_r1.prompts import build_conversation

    merge = 4  # 2 x 2 spatial merge
    text = processor.apply_chat_template(build_conversation(MARKER), add_generation_prompt=True, tokenize=False)
    before, after = text.split(MARKER)
    tokenizer = processor.tokenizer
    fixed = len(tokenizer(before + after)["input_ids"]) - 1  # the <|video_pad|> placeholder becomes the video tokens
    from open_r1.data import normalize_query

    queries = tokenizer([normalize_query(row["query"]) for row in rows])["input_ids"]
    grids: dict[str, int] = {}
    lengths = []
    for row, query in zip(rows, queries, strict=True):
        if row["video_id"] not in grids:
            grids[row["video_id"]] = math.prod(video_grid(float(row["duration"]), source_size)) // merge
        lengths.append(fixed + len(query) + grids[row["video_id"]])
    return lengths


def shapes_of(calls: list[tuple[int, int]], high_water: bool) -> Counter:
    """The (rows, cache length) shape of each ``(rows, needed length)`` call, in order, under either sizing."""
    from open_r1 import decoding

    decoder = decoding.StaticDecoder("cpu", backend="eager")
    previous, decoding.HIGH_WATER = decoding.HIGH_WATER, high_water
    try:
        return Counter((rows, decoder.cache_length_for(needed)) for rows, needed in calls)
    finally:
        decoding.HIGH_WATER = previous


def training_calls(lengths: list[int], rows_per_rollout: int, new_tokens: int, seed: int) -> list[tuple[int, int]]:
    order = random.Random(seed).sample(range(len(lengths)), len(lengths))
    return [(rows_per_rollout, lengths[i] + new_tokens) for i in order]


def evaluation_calls(rows: list[dict], lengths: list[int], batch_size: int, new_tokens: int) -> list[tuple[int, int]]:
    order = sorted(range(len(rows)), key=lambda i: rows[i]["video_id"])
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [(len(batch), max(lengths[i] for i in batch) + new_tokens) for batch in batches]


def describe(shapes: Counter) -> str:
    return ", ".join(f"{rows} rows x {length} ({count:,})" for (rows, length), count in sorted(shapes.items()))


def main(argv=None) -> dict:
    from open_r1.data import load_split
    from open_r1.decoding import CACHE_LENGTH_BUCKET, recompile_limit
    from open_r1.modeling import ASSETS_DIR, load_processor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--rows_per_rollout", type=int, default=8, help="per_device_train_batch_size of the recipes")
    parser.add_argument("--max_completion_length", type=int, default=1024)
    parser.add_argument("--eval_batch_size", type=int, default=64, help="Rows per evaluation batch (the GPU cap).")
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--source_size", type=int, nargs=2, default=[270, 480], help="Source frame height, width.")
    parser.add_argument("--orders", type=int, default=10, help="Shuffled training orders to try (seeds 0..N-1).")
    args = parser.parse_args(argv)
    processor = load_processor(ASSETS_DIR)
    limit = recompile_limit()
    budget = max(1, limit // 2)
    print(f"cache bucket {CACHE_LENGTH_BUCKET} tokens; compiled-shape budget {budget} (dynamo's limit {limit})")
    results = {}
    for dataset in args.datasets:
        train_split, test_split = SPLITS[dataset]
        train_rows, test_rows = load_split(dataset, train_split), load_split(dataset, test_split)
        train_lengths = prompt_lengths(train_rows, processor, tuple(args.source_size))
        test_lengths = prompt_lengths(test_rows, processor, tuple(args.source_size))
        runs = {
            f"training on {train_split}": [
                training_calls(train_lengths, args.rows_per_rollout, args.max_completion_length, seed)
                for seed in range(args.orders)
            ],
            f"evaluation on {test_split}": [
                evaluation_calls(test_rows, test_lengths, args.eval_batch_size, args.max_new_tokens)
            ],
        }
        print(f"{dataset}: prompts {min(train_lengths):,}-{max(train_lengths):,} tokens ({train_split}), "
              f"{min(test_lengths):,}-{max(test_lengths):,} ({test_split})")  # fmt: skip
        results[dataset] = {}
        for name, orders in runs.items():
            per_call = shapes_of(orders[0], high_water=False)
            grown = [shapes_of(calls, high_water=True) for calls in orders]
            most = max(len(shapes) for shapes in grown)
            results[dataset][name] = {"per_call": len(per_call), "high_water_max": most}
            print(f"  {name}: per-call buckets {len(per_call)} shapes ({describe(per_call)})")
            print(f"  {name}: high-water cache {most} shapes at most over {len(orders)} order(s), budget {budget}: "
                  f"{'within' if most <= budget else 'OVER'} ({describe(grown[0])})")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
