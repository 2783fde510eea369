"""Evaluate a checkpoint on a temporal grounding split, or rescore a predictions file: ``python evaluate.py --help``.

The command is :mod:`open_r1.evaluate` (also ``python -m open_r1.evaluate``); ``bash scripts/evaluate.sh`` runs it
with one process per GPU.
"""

import sys

from open_r1.evaluate import main

if __name__ == "__main__":
    main(sys.argv[1:])
