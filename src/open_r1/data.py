"""Annotation loaders: temporal-grounding annotation files -> one row per (video, query).

Formats, detected from the file content (never from the file name):

- **TimeZero / Charades JSON** ``{video_id: {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}``.
  Charades-CG (``novels``/``news`` keys) and ActivityNet Captions (``v_`` ids) share this shape; extra keys are
  ignored. A timestamp entry may also be a list of windows ``[[s, e], [s, e]]`` (QVHighlights style).
- **Charades-CD JSON**: the same shape with ``video_duration`` instead of ``duration`` (plus frame-level keys).
- **TALL txt** (Gao et al., ICCV 2017): one query per line, ``VID START END##sentence``. The file carries no
  durations; they come from the Charades v1 CSV ``length`` column (the bundled train + test CSVs by default).

Every row has the keys ``video_id, query_id, query, raw_query, start, end, duration, windows``:
``query_id`` is ``f"{video_id}#{k}"`` with ``k`` the query's position within its video in file order (so the TALL
txt and the TimeZero JSON of Charades-STA give identical ids), ``query`` is :func:`normalize_query` of ``raw_query``
(the text exactly as in the file), and ``windows`` lists every ground-truth window (usually one; ``start``/``end``
are the first one).

Anomaly policy (each case is counted in one log line per file and in the :class:`AnnotationStats` returned with
``return_stats=True``, whose ``anomalies`` lists the query ids concerned; never silent):

- **Reversed segment** (start > end; 4 in Charades-STA train, 2 in ActivityNet train): start and end are swapped.
  This is the repair PDVC's ``train_modified.json`` applies to the two ActivityNet ones, and Charades-CD test-ood
  carries two of the Charades ones (LEOL6, AKKWU) already swapped. AKKWU [38.0, 13.0] stays beyond its 12.27 s video
  after the swap (counted again below).
- **Zero-length segment** (start == end; 2 in ActivityNet train): kept by :func:`load_annotations`. A zero-length
  ground truth has IoU 0 with every prediction, so in GRPO all completions of that prompt get the same IoU reward
  and it carries no grounding signal; :func:`load_split` therefore drops them from training splits. Evaluation splits
  never lose a query (the official query counts are the denominators of every published number).
- **Ground-truth end beyond the duration** (Charades-STA: 1,789 train / 562 test queries, up to 1.5 s): kept as is.
  Clipping would change the official numbers (27 Charades-STA test queries could no longer reach IoU 0.7).
- **Leading/trailing whitespace** (most ActivityNet sentences after the first start with a space: 25,731 train /
  11,639 val_1 / 11,483 val_2) and **repeated inner whitespace** (e.g. 33 Charades-STA train sentences):
  ``raw_query`` keeps the text, ``query`` is normalised; both counted.
- **Non-ASCII text** (e.g. "piñata"; 24 / 24 / 8 ActivityNet sentences): kept in both ``raw_query`` and ``query``; counted.

Malformed files (invalid JSON, wrong shape, missing keys, timestamps/sentences of different lengths, non-numeric or
non-finite times, a TALL video missing from the duration CSV, an unknown format) raise ``ValueError`` naming the file
and the first offending record; a missing file raises ``FileNotFoundError`` with its path.

Bundled splits are addressed by name, with paths resolved inside the installed package::

    >>> rows = load_split("charades", "test")
    >>> len(rows), rows[0]["query"]
    (3720, 'person turn a light on')
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ANNOTATIONS_DIR = Path(__file__).resolve().parent / "annotations"
"""Bundled annotation files (copied with provenance and licence notes, see ``annotations/README.md``)."""

CHARADES_DURATION_CSVS = (
    ANNOTATIONS_DIR / "charades_sta" / "charades_v1" / "Charades_v1_train.csv",
    ANNOTATIONS_DIR / "charades_sta" / "charades_v1" / "Charades_v1_test.csv",
)
"""Charades v1 metadata; the ``length`` column gives the durations that TALL txt files lack."""

DATASETS: dict[str, dict[str, str]] = {
    # TimeZero's "val.json" is the official Charades-STA *test* split (3,720 queries); it is what the paper reports.
    "charades": {
        "train": "charades_sta/timezero/train.json",
        "test": "charades_sta/timezero/val.json",
    },
    # TimeZero evaluates ActivityNet on val_2 (17,031 queries).
    "activitynet": {
        "train": "activitynet/captions/train.json",
        "val_1": "activitynet/captions/val_1.json",
        "val_2": "activitynet/captions/val_2.json",
    },
    "charades_cd": {
        "test_iid": "charades_sta/tfvtg/charades_test_iid.json",
        "test_ood": "charades_sta/tfvtg/charades_test_ood.json",
    },
    "charades_cg": {
        "novel_composition": "charades_sta/tfvtg/novel_composition.json",
        "novel_word": "charades_sta/tfvtg/novel_word.json",
        "test_trivial": "charades_sta/tfvtg/test_trivial.json",
    },
}
"""Dataset name -> split -> annotation path relative to :data:`ANNOTATIONS_DIR`."""

TIMELENS_BENCH = {
    "charades_timelens": ("charades-timelens.json", 3363, 1313),
    "activitynet_timelens": ("activitynet-timelens.json", 4500, None),
    "qvhighlights_timelens": ("qvhighlights-timelens.json", 1541, None),
}
"""TimeLens-Bench (arXiv 2512.14698: Charades-STA, ActivityNet Captions and QVHighlights re-annotated): dataset name ->
(file name, queries, videos) with the sizes the paper gives (None: not given). Not bundled (its licence and size):
``hf download TencentARC/TimeLens-Bench --repo-type=dataset --local-dir data/TimeLens-Bench``; the files are read from
``$TIMELENS_BENCH_DIR`` or else ``data/TimeLens-Bench`` under the working folder (TimeLens's own layout)."""

TRAIN_SPLITS = frozenset({"train"})
"""Splits that :func:`load_split` may filter (zero-length segments); every other split keeps all its queries."""


_TALL_LINE = re.compile(r"^(?P<vid>\S+)\s+(?P<start>\S+)\s+(?P<end>\S+)\s*##(?P<sentence>.*)$")
_WHITESPACE = re.compile(r"\s+")
_EPS = 1e-6


def normalize_timelens_query(text: str) -> str:
    """TimeLens-Bench's query normalisation: runs of whitespace to one space, outer spaces and periods stripped (case
    kept, as TimeLens evaluates).

    >>> normalize_timelens_query("  A man  opens the door.. ")
    'A man opens the door'
    """
    return _WHITESPACE.sub(" ", text).strip().strip(".").strip()


def normalize_query(text: str) -> str:
    """Normalise a query as TimeZero's training did: strip, lower-case, drop one final ``'.'``.

    Inner whitespace is left as it is, exactly as in the paper's training code, so the released checkpoints see the
    text they were trained on. Training and evaluation both call this function (the original evaluation fed the raw
    sentence instead).

    >>> normalize_query("  A person opens the door.")
    'a person opens the door'
    """
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    return text


@dataclass
class AnnotationStats:
    """What :func:`load_annotations` found in one file, anomalies included (see the module docstring)."""

    path: str
    format: str
    num_videos: int = 0
    num_queries: int = 0
    reversed_swapped: int = 0
    zero_length: int = 0
    zero_length_dropped: int = 0
    end_beyond_duration: int = 0
    negative_start: int = 0
    outer_whitespace: int = 0
    inner_whitespace: int = 0
    non_ascii: int = 0
    anomalies: dict[str, list[str]] = field(default_factory=dict)
    """Anomaly name -> the query ids concerned (so a user can look them up)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.num_queries} queries / {self.num_videos} videos ({self.format}); "
            f"reversed segments swapped: {self.reversed_swapped}, zero-length segments: {self.zero_length} "
            f"(dropped: {self.zero_length_dropped}), GT end beyond duration (kept): {self.end_beyond_duration}, "
            f"negative start (kept): {self.negative_start}, leading/trailing whitespace stripped: "
            f"{self.outer_whitespace}, inner whitespace collapsed: {self.inner_whitespace}, "
            f"non-ASCII (kept): {self.non_ascii}"
        )

    def _note(self, kind: str, query_id: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.anomalies.setdefault(kind, []).append(query_id)


# --------------------------------------------------------------------------------------------------------------------
# Parsing helpers: each raises ValueError naming the file and the record.


def _fail(path: Path, where: str, message: str) -> ValueError:
    return ValueError(f"{path}: {where}: {message}")


def _number(value: Any, path: Path, where: str, what: str, text: bool = False) -> float:
    """A finite float; strings are accepted only from text formats (``text=True``: TALL txt, CSV)."""
    # bool is an int subclass; `true` as a timestamp is a broken file, not 1.0.
    allowed = (int, float, str) if text else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise _fail(path, where, f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise _fail(path, where, f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise _fail(path, where, f"{what} must be finite, got {value!r}")
    return number


def _window(value: Any, path: Path, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(path, where, f"a timestamp must be [start, end], got {value!r}")
    return [_number(value[0], path, where, "start"), _number(value[1], path, where, "end")]


def _windows(value: Any, path: Path, where: str) -> list[list[float]]:
    """``[s, e]`` or ``[[s, e], ...]`` -> a non-empty list of windows."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(w, (list, tuple)) for w in value):
        return [_window(w, path, where) for w in value]
    return [_window(value, path, where)]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load keeps the last of two equal keys silently; a duplicated video id would lose queries.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_durations_csv(paths: str | Path | Iterable[str | Path]) -> dict[str, float]:
    """Video id -> duration (s) from Charades v1 style CSVs (columns ``id`` and ``length``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    durations: dict[str, float] = {}
    for csv_path in map(Path, paths):
        if not csv_path.is_file():
            raise FileNotFoundError(f"durations CSV not found: {csv_path.resolve()}")
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "length"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; need 'id' and 'length'")
            for line_no, record in enumerate(reader, start=2):
                where = f"line {line_no} (video {record['id']!r})"
                durations[record["id"]] = _number(record["length"], csv_path, where, "length", text=True)
    return durations


def _json_records(path: Path, text: str) -> tuple[str, list[tuple[str, float, list[Any], list[Any]]]]:
    """Parse a dict-shaped JSON file -> (format name, [(video_id, duration, timestamps, sentences), ...])."""
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        hint = " (JSON Lines files are not supported)" if error.msg == "Extra data" else ""
        raise ValueError(f"{path}: invalid JSON{hint}: {error}") from None
    except ValueError as error:  # duplicate key
        raise ValueError(f"{path}: {error}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be an annotation file") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: unknown annotation format: a JSON {type(data).__name__} at top level; expected an object "
            '{video_id: {"duration", "timestamps", "sentences"}}'
        )
    records = []
    for video_id, record in data.items():
        where = f"record {video_id!r}"
        if not isinstance(record, dict):
            raise _fail(path, where, f"expected an object with duration, timestamps, sentences; got {record!r:.80}")
        if "spans" in record and "queries" in record:  # TimeLens-Bench: the same content under other names
            record = {**record, "timestamps": record["spans"], "sentences": record["queries"]}
        missing = [key for key in ("timestamps", "sentences") if key not in record]
        if "duration" not in record and "video_duration" not in record:
            missing.insert(0, "duration")
        if missing:
            raise _fail(path, where, f"missing key(s) {missing}; has {sorted(record)}")
        duration_key = "duration" if "duration" in record else "video_duration"
        duration = _number(record[duration_key], path, where, duration_key)
        if duration <= 0:
            raise _fail(path, where, f"{duration_key} must be positive, got {duration}")
        timestamps, sentences = record["timestamps"], record["sentences"]
        if not isinstance(timestamps, list) or not isinstance(sentences, list):
            raise _fail(path, where, "timestamps and sentences must be lists")
        if len(timestamps) != len(sentences):
            raise _fail(path, where, f"{len(timestamps)} timestamps but {len(sentences)} sentences")
        records.append((video_id, duration, timestamps, sentences))
    if not records:
        raise ValueError(f"{path}: no annotations in the file")
    first = data[records[0][0]]
    if "video_duration" in first:
        fmt = "charades_cd_json"
    elif "spans" in first and "queries" in first:
        fmt = "timelens_json"
    elif all(video_id.startswith("v_") for video_id, *_ in records):
        fmt = "activitynet_json"
    else:
        fmt = "timezero_json"
    return fmt, records


def _tall_records(
    path: Path, text: str, durations_csv: str | Path | Sequence[str | Path] | None
) -> list[tuple[str, float, list[Any], list[Any]]]:
    """Parse a TALL txt file, grouping lines by video in order of first appearance."""
    durations = read_durations_csv(CHARADES_DURATION_CSVS if durations_csv is None else durations_csv)
    grouped: dict[str, tuple[list[Any], list[Any]]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _TALL_LINE.match(line.strip("\r\n"))
        if match is None:
            raise _fail(path, f"line {line_no}", f"expected 'VID START END##sentence', got {line!r:.100}")
        where = f"line {line_no} (video {match['vid']!r})"
        window = [_number(match[key], path, where, key, text=True) for key in ("start", "end")]
        if match["vid"] not in durations:
            raise _fail(path, where, "video not found in the durations CSV (Charades v1 'length' column)")
        timestamps, sentences = grouped.setdefault(match["vid"], ([], []))
        timestamps.append(window)
        sentences.append(match["sentence"])
    if not grouped:
        raise ValueError(f"{path}: no annotations in the file")
    return [(vid, durations[vid], ts, sents) for vid, (ts, sents) in grouped.items()]


def _detect_and_parse(
    path: Path, durations_csv: str | Path | Sequence[str | Path] | None
) -> tuple[str, list[tuple[str, float, list[Any], list[Any]]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: unknown annotation format: not UTF-8 text ({error})") from None
    head = text.lstrip()[:1]
    if head in ("{", "["):
        return _json_records(path, text)
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if _TALL_LINE.match(first_line.strip()):
        return "tall_txt", _tall_records(path, text, durations_csv)
    raise ValueError(
        f"{path}: unknown annotation format (first line {first_line!r:.80}); supported: TimeZero/Charades JSON, "
        "Charades-CD JSON, ActivityNet Captions JSON, TALL txt 'VID START END##sentence'"
    )


# --------------------------------------------------------------------------------------------------------------------
# Public API


def load_annotations(
    path: str | Path,
    durations_csv: str | Path | Sequence[str | Path] | None = None,
    *,
    drop_zero_length: bool = False,
    return_stats: bool = False,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], AnnotationStats]:
    """Read an annotation file (format detected from its content) into one row per query.

    Args:
        path: a TimeZero/Charades JSON, Charades-CD JSON, ActivityNet Captions JSON or TALL txt file.
        durations_csv: Charades v1 CSV(s) with ``id`` and ``length`` columns, used only for TALL txt files
            (default: the bundled Charades v1 train + test CSVs).
        drop_zero_length: drop queries whose every window has zero length (for training only; the default keeps
            every query, as evaluation needs).
        return_stats: also return the :class:`AnnotationStats` of the file.

    Returns:
        ``rows`` (or ``(rows, stats)``), rows in file order with keys ``video_id, query_id, query, raw_query,
        start, end, duration, windows``. See the module docstring for the anomaly policy.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is malformed or of an unknown format (the message names the file and the record).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"annotation file is a folder, not a file: {path.resolve()} (give the .json or .txt "
                                "file inside it)")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {Path(path).resolve()}")
    fmt, records = _detect_and_parse(path, durations_csv)
    stats = AnnotationStats(path=str(path), format=fmt, num_videos=len(records))
    rows: list[dict[str, Any]] = []
    for video_id, duration, timestamps, sentences in records:
        for k, (timestamp, raw_query) in enumerate(zip(timestamps, sentences)):
            query_id = f"{video_id}#{k}"
            where = f"record {video_id!r}, query {k}"
            if not isinstance(raw_query, str):
                raise _fail(path, where, f"sentence must be a string, got {raw_query!r:.80}")
            query = (normalize_timelens_query if fmt == "timelens_json" else normalize_query)(raw_query)
            if not query:
                raise _fail(path, where, f"empty sentence {raw_query!r}")
            windows = _windows(timestamp, path, where)
            for window in windows:
                if window[0] > window[1]:
                    window.reverse()
                    stats._note("reversed_swapped", query_id)
            zero_length = all(start == end for start, end in windows)
            if zero_length:
                stats._note("zero_length", query_id)
            # The tolerance ignores float noise in the files (ActivityNet stores durations like 70.28999999999999).
            if any(end > duration + _EPS for _, end in windows):
                stats._note("end_beyond_duration", query_id)
            if any(start < 0 for start, _ in windows):
                stats._note("negative_start", query_id)
            if raw_query != raw_query.strip():
                stats._note("outer_whitespace", query_id)
            if _WHITESPACE.sub(" ", raw_query.strip()) != raw_query.strip():
                stats._note("inner_whitespace", query_id)
            if not raw_query.isascii():
                stats._note("non_ascii", query_id)
            if zero_length and drop_zero_length:
                stats._note("zero_length_dropped", query_id)
                continue
            rows.append(
                {
                    "video_id": video_id,
                    "query_id": query_id,
                    "query": query,
                    "raw_query": raw_query,
                    "start": windows[0][0],
                    "end": windows[0][1],
                    "duration": duration,
                    "windows": windows,
                }
            )
    stats.num_queries = len(rows)
    stats.num_videos = len({row["video_id"] for row in rows})
    logger.info("Loaded %s: %s", path.name, stats.summary())
    return (rows, stats) if return_stats else rows


def dataset_splits(dataset: str) -> list[str] | None:
    """The split names of a bundled dataset or of a TimeLens-Bench one (its single ``test``); None if unknown."""
    if dataset in TIMELENS_BENCH:
        return ["test"]
    return list(DATASETS[dataset]) if dataset in DATASETS else None


def split_path(dataset: str, split: str) -> Path:
    """The annotation file of ``dataset``/``split`` (bundled, or TimeLens-Bench's single ``test`` split, see
    :data:`TIMELENS_BENCH`); unknown names raise ``ValueError`` listing valid ones."""
    splits = dataset_splits(dataset)
    if splits is None:
        raise ValueError(
            f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASETS))} (bundled), "
            f"{', '.join(TIMELENS_BENCH)} (TimeLens-Bench)"
        )
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for dataset {dataset!r}; known splits: {', '.join(splits)}")
    if dataset in TIMELENS_BENCH:
        path = Path(os.environ.get("TIMELENS_BENCH_DIR", "data/TimeLens-Bench")) / TIMELENS_BENCH[dataset][0]
        if not path.is_file():
            raise FileNotFoundError(
                f"{dataset}: {path.resolve()} not found. TimeLens-Bench is not bundled: download it with `hf download "
                "TencentARC/TimeLens-Bench --repo-type=dataset --local-dir data/TimeLens-Bench`, then run from the "
                "folder holding data/ or set TIMELENS_BENCH_DIR (or give the file with --annotation_file)"
            )
        return path
    return ANNOTATIONS_DIR / DATASETS[dataset][split]


def check_benchmark_size(dataset: str, rows: Sequence[dict[str, Any]], path: str | Path) -> str | None:
    """A warning (logged and returned) when a TimeLens-Bench file does not hold the queries and videos the paper
    reports (another version of the file, or the wrong one); None when it does or ``dataset`` is not one of them."""
    if dataset not in TIMELENS_BENCH:
        return None
    _, queries, videos = TIMELENS_BENCH[dataset]
    found = (len(rows), len({row["video_id"] for row in rows}))
    if found[0] == queries and videos in (None, found[1]):
        return None
    message = (
        f"{path} holds {found[0]} queries over {found[1]} videos; the TimeLens paper reports {queries} queries"
        + (f" over {videos} videos" if videos else "")
        + f" for {dataset}: numbers on this file are not comparable with published ones"
    )
    logger.warning("%s", message)
    return message


def load_split(
    dataset: str,
    split: str,
    *,
    drop_zero_length: bool | None = None,
    return_stats: bool = False,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], AnnotationStats]:
    """Load a bundled split by name, e.g. ``load_split("charades", "test")`` (see :data:`DATASETS`).

    ``drop_zero_length`` defaults to True for training splits and False otherwise; asking to drop queries from an
    evaluation split raises ``ValueError`` (official counts are the metric denominators).
    """
    path = split_path(dataset, split)
    if drop_zero_length is None:
        drop_zero_length = split in TRAIN_SPLITS
    elif drop_zero_length and split not in TRAIN_SPLITS:
        raise ValueError(f"{dataset}/{split} is an evaluation split: every query is kept (official counts)")
    loaded = load_annotations(path, drop_zero_length=drop_zero_length, return_stats=return_stats)
    check_benchmark_size(dataset, loaded[0] if return_stats else loaded, path)
    return loaded
