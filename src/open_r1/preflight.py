"""Pre-flight: every check that needs no model runs before anything loads, and every problem is named in one message.

Training, the warm start and evaluation each collect their problems here: the model (a local checkpoint folder with
its config, or a Hub id that resolves quickly), the annotation file, the videos or cache and their settings, the
output folder, and the job's own arithmetic. One problem is raised as it is (its own exception type and message);
several are raised together as :class:`PreflightError`, one line each.
"""

from __future__ import annotations

import json
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
        problems = checkpoint_problems(folder)
        return "; ".join(problems) if problems else None
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


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path.resolve()} is not readable JSON ({' '.join(str(error).split())[:120]})"


def _safetensors_problem(path: Path) -> tuple[dict | None, str | None]:
    """The header of a safetensors file, or why it is not a complete one (read without loading any tensor)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            header_size = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < header_size <= min(size - 8, 100_000_000):
                return None, f"{path.resolve()} is truncated or not a safetensors file (no complete header)"
            header = json.loads(handle.read(header_size))
    except FileNotFoundError:
        return None, f"{path.resolve()} is missing"
    except (OSError, ValueError) as error:
        return None, f"{path.resolve()} has a damaged header ({' '.join(str(error).split())[:120]})"
    ends = [info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size != expected:
        return None, f"{path.resolve()} is truncated or damaged: {size} bytes, its header describes {expected}"
    return header, None


# The language model's sizes a checkpoint's config.json must give (the weights' shapes are checked against the first
# two).
MODEL_SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def checkpoint_problems(folder: Path) -> list[str]:
    """What is wrong with a local checkpoint folder, each naming the file: config.json readable; weights present and
    complete (safetensors headers and sizes, every shard of an index), the embedding's shape the config's vocabulary x
    hidden size; tokenizer, processor and chat-template files present. Nothing is loaded."""
    problems = []
    config, problem = _read_json(folder / "config.json")
    if problem:
        problems.append(problem)
        config = None
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        weights = [folder / "model.safetensors"]
    elif index.exists():
        mapping, problem = _read_json(index)
        if problem:
            problems.append(problem)
        weights = sorted({folder / name for name in ((mapping or {}).get("weight_map") or {}).values()})
    elif any((folder / name).exists() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        weights = []  # pickled weights: left to transformers
    else:
        weights = []
        problems.append(f"no weights in {folder.resolve()} (model.safetensors, or model.safetensors.index.json)")
    text = (config.get("text_config") or config) if isinstance(config, dict) else {}
    if isinstance(config, dict):
        # A config.json that is valid JSON but gives no sizes ({}, or only the model type) makes transformers build
        # its default-size model (hidden 8192, 80 layers) and run out of memory without naming the file.
        missing = [key for key in MODEL_SIZE_KEYS if not isinstance(text.get(key), int) or text.get(key) <= 0]
        if missing:
            problems.append(f"{(folder / 'config.json').resolve()} gives no {', '.join(missing)} (for the language "
                            "model, under text_config): transformers would build a default-size model")  # fmt: skip
    for path in weights:
        header, problem = _safetensors_problem(path)
        if problem:
            problems.append(problem)
            continue
        for name, info in header.items():
            if name.endswith("embed_tokens.weight") and {"vocab_size", "hidden_size"} <= set(text):
                if list(info["shape"]) != [text["vocab_size"], text["hidden_size"]]:
                    problems.append(
                        f"{path.resolve()}: {name} is {info['shape']}, but config.json says vocab_size "
                        f"{text['vocab_size']} x hidden_size {text['hidden_size']}"
                    )
    if not (
        (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists() and (folder / "merges.txt").exists()
    ):
        problems.append(f"no tokenizer in {folder.resolve()} (tokenizer.json, or vocab.json + merges.txt)")
    if not any((folder / name).exists() for name in ("preprocessor_config.json", "processor_config.json")):
        problems.append(
            f"no processor config in {folder.resolve()} (processor_config.json or preprocessor_config.json)"
        )
    has_template = any((folder / name).exists() for name in ("chat_template.jinja", "chat_template.json"))
    if not has_template:
        tokenizer_config, _ = _read_json(folder / "tokenizer_config.json")
        if not (isinstance(tokenizer_config, dict) and tokenizer_config.get("chat_template")):
            problems.append(f"no chat template in {folder.resolve()} (chat_template.jinja or tokenizer_config.json)")
    return problems


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
