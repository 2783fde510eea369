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


def read_jsonl(path: str | Path, with_line_numbers: bool = False, strict: bool = False) -> Iterator[Any]:
    """The values of a JSON Lines file (none if it does not exist); unreadable lines are skipped with a warning that
    names the file and the first such line, or, with ``strict``, raise ``ValueError`` naming ``file:line``. With
    ``with_line_numbers``, yields ``(line_number, value)``."""
    path = Path(path)
    if not path.is_file():
        return
    bad = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as error:  # RecursionError: absurdly deep nesting
                if strict:
                    raise ValueError(f"{path}:{number}: line is not JSON (cut short by a killed run?)") from error
                bad.append(number)
                continue
            yield (number, value) if with_line_numbers else value
    if bad:
        logger.warning(
            "%s: skipped %d unreadable line(s), first at line %d (cut short by a killed run?)", path, len(bad), bad[0]
        )
