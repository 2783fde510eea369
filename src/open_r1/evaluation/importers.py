"""Other tools' outputs as a ``predictions.jsonl`` that ``--rescore`` scores under every protocol.

    python -m open_r1.evaluation.importers lmms-eval SUBMISSION.json --output_dir outputs/eval/peer/charades
    python -m open_r1.evaluation.importers timelens RESULTS.json --output_dir outputs/eval/timelens7b/charades \
        [--annotation_file data/TimeLens-Bench/charades-timelens.json]
    python evaluate.py --rescore outputs/eval/peer/charades/predictions.jsonl --protocol lmms-eval

Formats (both key each answer by ``"<video>>>><query>>>><ground truth>"``, the ground truth ``[s, e]`` or ``[[s, e]]``):

- ``lmms-eval``: the submission file its temporal-grounding tasks write, ``{key: answer text}`` (one JSON object).
- ``timelens``: TimeLens's results file, JSON or JSON Lines, ``{key: {"answers": text, "timestamps": [[s, e]]}}``
  (either field may be absent, not both). A line with an answer is scored from its text, under every protocol; one
  with timestamps only is scored from its first span.

Each line keeps the key as ``query_id`` (it is unique in those files, the query text need not be), the video file's
stem as ``video_id``, and the duration when ``--annotation_file`` gives it (TimeLens's dummy span for an unparsable
answer needs it; without it such answers still score 0). An entry that does not have this shape stops the import
with the file and the entry named; nothing is guessed, and an existing predictions file is never replaced.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

from open_r1.evaluation.predictions import (
    PREDICTIONS_FILE,
    PredictionsFileError,
    is_span,
    record_problem,
    write_jsonl_atomic,
)

FORMATS = ("lmms-eval", "timelens")


def _fail(path: Path, where: str, message: str) -> PredictionsFileError:
    return PredictionsFileError(f"{path}: {where}: {message}")


def _span(value: Any) -> list[float] | None:
    """``[start, end]`` as floats when ``value`` is a span as a predictions line holds one, else None."""
    return [float(value[0]), float(value[1])] if is_span(value) else None


def parse_key(key: str, path: Path, where: str) -> tuple[str, str, list[float]]:
    """``(video_id, query, [start, end])`` of a ``video>>>query>>>[s, e]`` key."""
    video, separator, rest = key.partition(">>>")
    query, separator2, truth = rest.rpartition(">>>")
    if not (separator and separator2 and video and query):
        raise _fail(path, where, f"key {key[:120]!r} is not 'video>>>query>>>[start, end]'")
    try:
        value = ast.literal_eval(truth.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, (list, tuple)) and len(value) == 1:  # [[s, e]]: TimeLens's and lmms-eval timelens's form
        value = value[0]
    window = _span(value)
    if window is None:
        raise _fail(path, where, f"ground truth {truth[:80]!r} is not [start, end] numbers")
    return Path(video).stem, query, window


def _entries(path: Path, fmt: str) -> list[tuple[str, str, Any]]:
    """``(where, key, value)`` in file order."""
    text = path.read_text(encoding="utf-8")
    try:
        objects = [("the file", json.loads(text))]
    except json.JSONDecodeError as error:
        if fmt != "timelens" or error.msg != "Extra data":
            raise _fail(path, f"line {error.lineno}", f"invalid JSON ({error.msg})") from None
        objects = []  # JSON Lines
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    objects.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as line_error:
                    raise _fail(path, f"line {number}", f"invalid JSON ({line_error.msg})") from None
    entries = []
    for where, obj in objects:
        if not isinstance(obj, dict):
            raise _fail(path, where, f"a JSON {type(obj).__name__}, expected an object of key -> answer")
        entries += [(f"{where}, entry {key[:80]!r}", key, value) for key, value in obj.items()]
    if not entries:
        raise _fail(path, "the file", "no entries")
    return entries


def import_predictions(
    fmt: str, path: str | Path, output_dir: str | Path, annotation_file: str | Path | None = None
) -> Path:
    """Write ``output_dir/predictions.jsonl`` from a ``fmt`` file; returns its path. Refuses to replace one."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fmt} file not found: {path.resolve()}")
    target = Path(output_dir) / PREDICTIONS_FILE
    if target.exists():
        raise FileExistsError(f"{target} exists; import into another --output_dir (nothing was written)")
    durations: dict[str, float] = {}
    if annotation_file is not None:
        from open_r1.data import load_annotations

        durations = {row["video_id"]: float(row["duration"]) for row in load_annotations(annotation_file)}
    records = []
    for where, key, value in _entries(path, fmt):
        video_id, query, window = parse_key(key, path, where)
        output, pred = None, None
        if fmt == "lmms-eval":
            if not isinstance(value, str):
                raise _fail(path, where, f"the answer is a JSON {type(value).__name__}, expected text")
            output = value
        else:
            if not isinstance(value, dict) or not ({"answers", "timestamps"} & set(value)):
                raise _fail(path, where, "expected an object with 'answers' and/or 'timestamps'")
            if value.get("answers") is not None:
                if not isinstance(value["answers"], str):
                    raise _fail(path, where, "'answers' is not text")
                output = value["answers"]
            elif value.get("timestamps") is not None:
                spans = value["timestamps"]
                pred = _span(spans[0]) if isinstance(spans, list) and spans else None
                if pred is None:
                    raise _fail(path, where, f"'timestamps' {str(spans)[:60]} is not a list of [start, end] numbers")
            else:
                raise _fail(path, where, "'answers' and 'timestamps' are both null")
        record = {"video_id": video_id, "query_id": key, "query": query, "duration": durations.get(video_id),
                  "gt": [window], "output": output, "pred": pred, "source": f"{fmt}:{path.name}"}  # fmt: skip
        problem = record_problem(record)
        if problem is not None:  # the importer's own shape, checked as --rescore will check it
            raise _fail(path, where, f"the line {problem}")
        records.append(record)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(target, records)
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("file", help="The tool's output file.")
    parser.add_argument("--output_dir", required=True, help="Folder for predictions.jsonl (must not hold one).")
    parser.add_argument("--annotation_file", help="Annotations giving each video's duration (optional).")
    args = parser.parse_args(argv)
    try:
        target = import_predictions(args.format, args.file, args.output_dir, args.annotation_file)
    except (OSError, ValueError) as error:
        print(f"import: {error}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    print(f"wrote {target}; score it: python evaluate.py --rescore {target} --protocol {args.format}")  # noqa: T201
    return target


if __name__ == "__main__":
    main()
