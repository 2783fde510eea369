"""The scoring conventions published temporal-grounding numbers use, applied to one generation.

The same predictions score differently under each convention (which span of the text counts, what a reversed span
is worth, whether an unparsable answer stays in the denominator), so numbers are comparable only under one protocol.
Every evaluation and every ``--rescore`` scores its file under all of them; ``--protocol`` picks the one whose numbers
sit at the top of ``metrics.json`` (all of them are under ``protocols``):

- ``timezero`` (default): this project's, :mod:`open_r1.grounding` (the reward's parser: the first span of the last
  ``<answer>`` block, else the last span in the text), every query in the denominator, IoU >= m (ties within
  :data:`~open_r1.evaluation.metrics.IOU_TIE_EPS` count).
- ``timezero-original``: TimeZero's released ``evaluate.py``: the last ``<number> to|and <number>`` anywhere in the
  text (one space either side, as its pattern is written); an answer without one, and a query whose video or
  generation failed, is **skipped** (left out of the denominator).
- ``lmms-eval``: the ``charades_sta`` task of lmms-eval 0.7.3 (``extract_time``): lower-cased text, every ``to``
  (inside words too) turned into ``-``, sentences split at ``!``, ``?`` and new lines, those naming a start, an end
  or "happen" kept (all of them when none does); then mm:ss ranges, then ``a - b``, then clock times in pairs, then
  the first number of each sentence in pairs, then ``a s - b s``; the **first** pair, **swapped** when reversed; no
  pair scores 0 and counts. It generates greedily with 50 new tokens, which cuts a ``<think>`` answer short: one
  generation cannot be re-cut, so ``generation`` reports how many answers ran longer than that.
- ``timelens``: TimeLens's rules (arXiv 2512.14698): clock times in pairs, else every ``a - b``, else every
  ``a to b``, else every number in pairs; the **first** pair, rounded to the dataset's unit (the finest decimal of
  the ground truth in the file); a reversed or empty pair scores 0 (no swap); no pair becomes the dummy span
  ``[D + 10, D + 20]`` (IoU 0, counted). Its parser is the one lmms-eval's ``timelens`` task ships.

``R1@m`` is IoU >= m, as all four publish it; ``R1@m_strict`` (IoU > m) is beside it, because some papers count that.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from open_r1.evaluation.metrics import IOU_TIE_EPS, THRESHOLDS, score_output
from open_r1.grounding import temporal_iou

__all__ = [
    "DEFAULT_PROTOCOL",
    "LMMS_EVAL_MAX_NEW_TOKENS",
    "PROTOCOLS",
    "Scored",
    "check_protocol",
    "parse_lmms_eval",
    "parse_timelens",
    "parse_timezero_original",
    "protocol_metrics",
    "protocol_report",
    "score_record",
]

PROTOCOLS = ("timezero", "timezero-original", "lmms-eval", "timelens")
DEFAULT_PROTOCOL = "timezero"
# lmms-eval's generation budget (greedy) in its charades_sta and timelens tasks.
LMMS_EVAL_MAX_NEW_TOKENS = 50

Span = tuple[float, float]


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return name


# ---------------------------------------------------------------------------------------------------------------------
# Parsers, one per convention


_ORIGINAL_PAIR = re.compile(r"(\d+\.?\d*) (?:to|and) (\d+\.?\d*)")


def parse_timezero_original(text: str) -> Span | None:
    """TimeZero's released evaluation: the last ``a to b`` / ``a and b`` (single spaces) anywhere, or None."""
    pairs = _ORIGINAL_PAIR.findall(text)
    return (float(pairs[-1][0]), float(pairs[-1][1])) if pairs else None


# lmms-eval's patterns (the regular expressions are the specification; the control flow is written here).
_LMMS_EXAMPLE = "a specific example is : 20.8 - 30.0 seconds"  # its prompt's example, removed from the text first
_LMMS_SENTENCE_END = re.compile(r"[!?\n]")
# Its keyword list (starts, ends, happens in, start time, end time, start, end, happen) reduced to the three words
# every other entry contains: a sentence matches one exactly when it matches the other.
_LMMS_KEYWORDS = ("start", "end", "happen")
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"
_LMMS_CLOCK_RANGE = re.compile(rf"\b({_CLOCK})\s*[–-]\s*({_CLOCK})\b")
_LMMS_RANGE = re.compile(r"(\d+(?:\.\d+)?)\s*[–-]\s*(\d+(?:\.\d+)?)")
_LMMS_CLOCK = re.compile(rf"\b({_CLOCK})\b")
_LMMS_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?)\b")
_LMMS_UNIT_RANGE = re.compile(r"(\d+(?:\.\d+)?)\s*s?\s*[–-]\s*(\d+(?:\.\d+)?)\s*s?")


def _clock_seconds(text: str) -> float:
    parts = [float(part) for part in text.split(":")]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def _pairs(values: Sequence[float]) -> list[Span]:
    return [(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]


def parse_lmms_eval(text: str) -> Span | None:
    """lmms-eval's ``charades_sta`` answer: its first pair (start <= end after its swap), or None."""
    text = text.lower().replace(_LMMS_EXAMPLE, "").replace("to", "-")
    sentences = _LMMS_SENTENCE_END.split(text)
    candidates = [s for s in sentences if any(word in s for word in _LMMS_KEYWORDS)] or sentences
    pairs: list[Span] = []
    for pattern, convert in ((_LMMS_CLOCK_RANGE, _clock_seconds), (_LMMS_RANGE, float)):
        for sentence in candidates:  # the first sentence holding a match gives all its matches
            found = pattern.findall(sentence)
            if found:
                pairs = [(convert(a), convert(b)) for a, b in found]
                break
        if pairs:
            break
    if not pairs:
        pairs = _pairs([_clock_seconds(t) for s in candidates for t in _LMMS_CLOCK.findall(s)])
    if not pairs:
        pairs = _pairs([float(found[0]) for s in candidates if (found := _LMMS_NUMBER.findall(s))])
    if not pairs:
        for sentence in candidates:
            found = _LMMS_UNIT_RANGE.findall(sentence)
            if found:
                pairs = [(float(a), float(b)) for a, b in found]
                break
    if not pairs:
        return None
    start, end = pairs[0]
    return (start, end) if end > start else (end, start)


_TIMELENS_CLOCK = re.compile(r"\b(\d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\d{1,2}:\d{2}(?:\.\d+)?)\b")
_TIMELENS_RANGES = (re.compile(r"(\d+\.?\d*)\s*-\s*(\d+\.?\d*)"), re.compile(r"(\d+\.?\d*)\s+to\s+(\d+\.?\d*)"))
_TIMELENS_NUMBER = re.compile(r"\b\d+\.?\d*\b")


def parse_timelens(text: str) -> Span | None:
    """TimeLens's answer: its first pair as written (a reversed pair stays reversed), or None."""
    text = text.lower()
    pairs = _pairs([_clock_seconds(t) for t in _TIMELENS_CLOCK.findall(text)])
    for pattern in _TIMELENS_RANGES:
        if pairs:
            break
        pairs = [(float(a), float(b)) for a, b in pattern.findall(text)]
    if not pairs:
        pairs = _pairs([float(n) for n in _TIMELENS_NUMBER.findall(text)])
    return pairs[0] if pairs else None


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def _overlap_iou(pred: Span, window: Sequence[float]) -> float:
    """The harnesses' IoU (lmms-eval, TimeLens, TimeZero's original): overlap over hull; 0 for a reversed pred."""
    hull = max(pred[1], window[1]) - min(pred[0], window[0])
    if not hull > 0:
        return 0.0
    iou = max(min(pred[1], window[1]) - max(pred[0], window[0]), 0) / hull
    return iou if math.isfinite(iou) else 0.0  # a 400-digit number reads as inf: no overlap to speak of


def _best(pred: Span, gt: Sequence[Sequence[float]]) -> float:
    """The best window's IoU (one window in every benchmark these harnesses score)."""
    return max((_overlap_iou(pred, window) for window in gt), default=0.0)


@dataclass(frozen=True)
class Scored:
    """One query under one protocol: ``iou`` None = left out of the denominator; ``failed``: no usable answer."""

    pred: Span | None
    iou: float | None
    failed: bool


def score_record(record: dict[str, Any], protocol: str, unit: float | None = None) -> Scored:
    """Score one predictions line under ``protocol``: its raw ``output`` re-parsed (a line with only a ``pred``, as
    imported from a tool that stored spans, uses that span). ``unit``: the rounding of ``timelens``."""
    gt = record["gt"]
    output = record.get("output")
    if output is None and record.get("pred") is None:  # no video, no answer: the protocol's failure rule
        return Scored(None, None if protocol == "timezero-original" else 0.0, True)
    if protocol == "timezero":  # the metric's own scoring of an answer (metrics.score_output)
        if output is None:
            span = tuple(record["pred"])
            return Scored(span, float(temporal_iou(span, gt)), False)
        scored = score_output(output, gt)
        return Scored(scored["pred"] and tuple(scored["pred"]), scored["iou"], scored["error"] is not None)
    parse = {"timezero-original": parse_timezero_original, "lmms-eval": parse_lmms_eval, "timelens": parse_timelens}
    span = parse[protocol](output) if output is not None else tuple(float(x) for x in record["pred"])
    if span is None:
        if protocol == "timezero-original":
            return Scored(None, None, True)
        duration = record.get("duration")
        dummy = (duration + 10.0, duration + 20.0) if protocol == "timelens" and duration is not None else None
        return Scored(dummy, 0.0, True)
    if protocol == "lmms-eval" and span[1] < span[0]:  # a stored pred gets the same swap as a parsed one
        span = (span[1], span[0])
    if protocol == "timelens" and unit:
        digits = max(0, round(-math.log10(unit)))
        span = (round(span[0], digits), round(span[1], digits))
    return Scored(span, _best(span, gt), False)


def dataset_unit(records: Sequence[dict[str, Any]]) -> float:
    """The finest decimal step of the ground-truth times in ``records`` (0.1 for Charades-STA, 0.01 for ActivityNet)."""
    digits = 0
    for record in records:
        for window in record["gt"]:
            for value in window:
                text = repr(float(value))
                if "e" not in text:
                    fraction = text.partition(".")[2].rstrip("0")
                    digits = max(digits, min(len(fraction), 3))
    return 10.0**-digits


def protocol_metrics(
    records: Sequence[dict[str, Any]], protocol: str, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """R1@m (IoU >= m), R1@m_strict (IoU > m) and mIoU in percent under ``protocol``, with its counts:
    ``num_queries`` (lines), ``num_scored`` (the denominator), ``num_failed`` (no usable answer) and ``num_skipped``
    (left out of the denominator: only ``timezero-original`` skips)."""
    check_protocol(protocol)
    unit = dataset_unit(records) if protocol == "timelens" else None
    scored = [score_record(record, protocol, unit) for record in records]
    ious = [s.iou for s in scored if s.iou is not None]
    # This project counts an IoU that is m on paper but an ulp below in floating point; the harnesses compare as is.
    eps = IOU_TIE_EPS if protocol == "timezero" else 0.0

    def percent(count: float) -> float:
        return round(100 * count / len(ious), 2) if ious else 0.0

    metrics: dict[str, Any] = {f"R1@{m:g}": percent(sum(iou >= m - eps for iou in ious)) for m in thresholds}
    metrics |= {f"R1@{m:g}_strict": percent(sum(iou > m + eps for iou in ious)) for m in thresholds}
    metrics["mIoU"] = percent(sum(ious))
    metrics["num_queries"] = len(records)
    metrics["num_scored"] = len(ious)
    metrics["num_failed"] = sum(s.failed for s in scored)
    metrics["num_skipped"] = len(records) - len(ious)
    return metrics


def generation_report(records: Sequence[dict[str, Any]], max_new_tokens: int | None) -> dict[str, Any]:
    """The generation budget and how many answers reached it (null when some answer has no token count: a file
    written before they were kept, or imported)."""
    answered = [r for r in records if r.get("output") is not None]
    counted = [r for r in answered if isinstance(r.get("num_tokens"), int)]
    known = len(counted) == len(answered)
    return {
        "max_new_tokens": max_new_tokens,
        "num_hit_budget": sum(bool(r.get("hit_budget")) for r in counted) if known else None,
        # lmms-eval's tasks stop at 50 new tokens: these answers would have been cut there.
        f"num_longer_than_{LMMS_EVAL_MAX_NEW_TOKENS}_tokens": (
            sum(r["num_tokens"] > LMMS_EVAL_MAX_NEW_TOKENS for r in counted) if known else None
        ),
    }


def protocol_report(
    records: Sequence[dict[str, Any]], protocol: str = DEFAULT_PROTOCOL, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """What joins ``metrics.json``: the chosen ``protocol``'s R1/mIoU for its top-level keys, every protocol under
    ``protocols``, and the generation budget under ``generation``."""
    check_protocol(protocol)
    every = {name: protocol_metrics(records, name) for name in PROTOCOLS}
    chosen = every[protocol]
    top = {key: chosen[key] for key in chosen if key.startswith("R1@") or key == "mIoU"}
    return top | {
        "protocol": protocol,
        "protocols": every,
        "generation": generation_report(records, max_new_tokens),
    }


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """Every protocol's numbers for ``records`` as a markdown table (the one in docs/evaluation.md)."""
    rows = ["| protocol | R1@0.3 | R1@0.5 | R1@0.7 | mIoU | scored / queries | no usable answer |", "|---" * 7 + "|"]
    for name in PROTOCOLS:
        m = protocol_metrics(records, name)
        rows.append(
            f"| {name} | {m['R1@0.3']:.2f} | {m['R1@0.5']:.2f} | {m['R1@0.7']:.2f} | {m['mIoU']:.2f} | "
            f"{m['num_scored']} / {m['num_queries']} | {m['num_failed']} |"
        )
    return "\n".join(rows)
