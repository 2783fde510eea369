"""The paired held-out mIoU change between two demo runs (e.g. with and without data selection), per query.

    python benchmarks/demo_paired.py OUTPUT_A OUTPUT_B [--stage grpo]

Both folders are ``python -m open_r1.demo --output_dir`` outputs over the same held-out videos; the change is B − A in
points with its standard error (``open_r1.demo.paired_change``, the number ``summary.json`` gives for grpo − sft).
The README's "selection − no selection" figures are ``OUTPUT_A`` = the ``--select_data off`` run, ``OUTPUT_B`` = the
default run of the same seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from open_r1.demo import paired_change
from open_r1.demo_bench import stage_records


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("before", type=Path, help="Demo output folder A.")
    parser.add_argument("after", type=Path, help="Demo output folder B.")
    parser.add_argument("--stage", default="grpo", help="Evaluated stage (eval/<stage>): grpo, sft, blank, random.")
    args = parser.parse_args(argv)
    before, after = (stage_records(folder, args.stage) for folder in (args.before, args.after))
    change = paired_change(before, after)
    print(f"{args.stage} mIoU, {args.after} - {args.before}: {change['mean']:+.2f} "  # noqa: T201
          f"(paired SE {change['standard_error']:.2f}, {change['num_queries']} queries)")  # fmt: skip
    return change


if __name__ == "__main__":
    main()
