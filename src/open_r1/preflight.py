"""Pre-flight: every check that needs no model runs before anything loads, and every problem is named in one message.

Training, the warm start and evaluation each collect their problems here: the model (a local checkpoint folder with
its config, or a Hub id that resolves quickly), the annotation file, the videos or cache and their settings, the
output folder, and the job's own arithmetic. One problem is raised as it is (its own exception type and message);
several are raised together as :class:`PreflightError`, one line each.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from open_r1.modeling import check_model_path

logger = logging.getLogger(__name__)

# Seconds a Hub lookup may take before the model is reported unreachable (transformers would retry for minutes).
HUB_TIMEOUT_S = 8.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = ("1", "true", "yes", "on")


class PreflightError(ValueError):
    """Several problems found before anything was loaded; the message lists each."""


class Preflight:
    """Collects the problems of one job's checks.

    >>> checks = Preflight("evaluation")
    >>> checks.run(int, "seven")  # a failing check is recorded, and gives None
    >>> checks.problems
    ["invalid literal for int() with base 10: 'seven'"]
    """

    def __init__(self, job: str):
        self.job = job
        self.problems: list[str] = []
        self._errors: list[BaseException] = []

    def run(self, check: Callable[..., Any], *args, **kwargs) -> Any:
        """``check(*args, **kwargs)``, or None after recording its error (FileNotFoundError, ValueError, OSError)."""
        try:
            return check(*args, **kwargs)
        except (OSError, ValueError) as error:
            self.fail(error)
            return None

    def add(self, problem: str | None) -> None:
        """Record a problem found without an exception (None: nothing to record)."""
        if problem:
            self.fail(ValueError(problem))

    def fail(self, error: BaseException) -> None:
        """Record ``error``; raised as it is when it is the only problem."""
        self._errors.append(error)
        self.problems.append(str(error))

    def finish(self) -> None:
        """Raise the one problem as it was, or all of them as a :class:`PreflightError`; nothing when all is well."""
        if len(self._errors) == 1:
            raise self._errors[0]
        if self._errors:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            raise PreflightError(f"{self.job}: {len(self.problems)} problems, found before loading anything:\n{lines}")


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def model_problem(path: str | Path | None, flag: str = "--model_name_or_path") -> str | None:
    """Why ``path`` cannot be loaded as a model, or None.

    A folder must hold ``config.json`` (without it transformers builds a default-size model before looking at the
    weights). A path that looks local and does not exist is named. Anything else is taken for a Hub id: accepted when
    a copy is cached, refused at once in offline mode, else looked up on the Hub within :data:`HUB_TIMEOUT_S`.
    """
    if path is None:
        return f"give {flag}"
    text = str(path)
    try:
        check_model_path(text)
    except FileNotFoundError as error:
        return str(error)
    folder = Path(text).expanduser()
    if folder.exists():
        if not folder.is_dir():
            return f"{flag} is a file, not a model folder: {folder.resolve()}"
        if not (folder / "config.json").is_file():
            return f"no config.json in the model folder {folder.resolve()} (a checkpoint folder holds config.json)"
        return None
    where = f"not a local folder (no {folder.resolve()})"
    if not _HUB_ID.fullmatch(text):
        return f"{flag} {text!r}: {where}, and not a Hub id (org/name)"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(text, "config.json"), str):
        return None
    if _offline():
        return f"{flag} {text!r}: {where}, and offline mode (HF_HUB_OFFLINE) has no cached copy of that Hub model"
    logger.info("%s %r is not a local folder, trying the Hub as %r", flag, text, text)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(text, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return None  # exists; loading says what access it needs
    except RepositoryNotFoundError:
        return f"{flag} {text!r}: {where}, and the Hub has no model {text!r} (or it is private)"
    except Exception as error:  # no network, DNS, timeout, proxy: all end the same way for the user
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        return (
            f"{flag} {text!r}: {where}, and the Hub could not be reached to look it up ({reason}); "
            "with a cached copy set HF_HUB_OFFLINE=1"
        )
    return None


def output_problem(path: str | Path | None, flag: str = "--output_dir") -> str | None:
    """Why results cannot be written under ``path``, or None: a file in the way, or no write permission."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        return f"{flag} is a file, not a folder: {folder.resolve()}"
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{flag} {folder.resolve()} cannot be created: {existing.resolve()} is a file"
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {folder.resolve()} cannot be written: no write permission on {existing.resolve()}"
    return None
