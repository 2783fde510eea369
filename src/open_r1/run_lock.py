"""One job per output folder: a lock file that names the process holding it.

Two evaluations (or two data selections) started on one output folder would both do all the work and append to the
same files. The first takes ``<folder>/.lock`` (created exclusively, holding its job, pid, host, start time and
command); a second stops at once naming the first. A lock left by a process that is gone (killed, machine rebooted)
is taken over with a warning; on another host the holder cannot be checked, so the message says which file to delete
when it is known to be stale. Under torchrun only rank 0 takes it: a second launch's rank 0 fails, and torchrun ends
that launch's other ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# A lock file that cannot be read (its writer died between creating and writing it) counts as stale after this long.
UNREADABLE_GRACE_S = 10.0


class FolderInUseError(RuntimeError):
    """Another live process holds the output folder's lock; the message names it."""


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, job: str):
    """Hold ``folder``'s lock for the block (the folder is created). Raises :class:`FolderInUseError` when a live
    process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {
        "job": job,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
    }
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile
                if age < UNREADABLE_GRACE_S:
                    raise FolderInUseError(f"{folder.resolve()} is being locked by another process ({path} is being "
                                           "written); give another --output_dir") from None  # fmt: skip
            elif _alive(holder):
                where = "" if holder.get("host") == me["host"] else " (another host: if it has ended, delete the file)"
                raise FolderInUseError(
                    f"{folder.resolve()} is in use by another {holder.get('job', 'job')}: pid {holder['pid']} on "
                    f"{holder.get('host')}{where}, since {holder.get('started')} ({holder.get('command')}); wait for "
                    f"it to finish or give another --output_dir. Lock file: {path}"
                ) from None
            logger.warning("%s: taking over a stale lock (%s)", folder, holder or "unreadable")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    try:
        yield path
    finally:
        holder = _holder(path)
        if holder is not None and holder["pid"] == me["pid"] and holder["host"] == me["host"]:
            path.unlink(missing_ok=True)
