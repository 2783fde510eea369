"""Append-only JSON Lines files that survive being killed mid-write (preprocess manifest, evaluation predictions).

Writers append one line per record and flush; a run killed mid-write can leave a last line without its newline.
:func:`repair_tail` drops that line before appending again, and :func:`read_jsonl` skips any line that does not
parse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def repair_tail(path: str | Path) -> None:
    """Drop a last line that lacks its newline (a write cut short by a kill) so that appending starts cleanly."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(data) - keep)
        with path.open("r+b") as f:
            f.truncate(keep)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file (none if it does not exist); unreadable lines are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return
    bad = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                bad += 1
    if bad:
        logger.warning("%s: skipped %d unreadable line(s) (cut short by a killed run?)", path, bad)
