"""Score a predictions file under every protocol and print one table; nothing is written.

python -m open_r1.evaluation.compare docs/samples/protocol_outputs.jsonl
"""

import argparse
from collections.abc import Sequence

from open_r1.evaluation.predictions import read_predictions
from open_r1.evaluation.protocols import markdown_table


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Score a predictions file under every protocol.", allow_abbrev=False)
    parser.add_argument("predictions", help="A predictions.jsonl (this project's, or imported).")
    table = markdown_table(read_predictions(parser.parse_args(argv).predictions, strict=True))
    print(table)  # noqa: T201
    return table


if __name__ == "__main__":
    main()
