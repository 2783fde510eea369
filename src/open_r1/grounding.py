"""Read a time span out of model text and score it: the one definition shared by the reward and the metric.

Parse rules (`parse_span_with_rule`):

1. ``"answer"``: the first span inside the **last complete** ``<answer>…</answer>`` block (tags are
   case-insensitive). A model that revises itself is scored on its final answer.
2. ``"fallback"``: otherwise the last span anywhere in the text, as the original TimeZero evaluation did. Only
   `parse_span(text, strict=False)` (evaluation) uses it; the reward uses ``strict=True``.
3. ``None``: no span found.

A span is two non-negative decimal numbers joined by ``to``, ``and``, ``until``, ``through``, ``-``, ``–``, ``—`` or
``~``; each number may carry a unit ``s``, ``sec``, ``secs``, ``second`` or ``seconds``. All of these parse to
``(12.54, 17.83)``-style tuples::

    12.54 to 17.83 | from 3 and 7 | 5.0s to 11.6s | 5.0 seconds to 11.6 seconds | 12.5 - 17.8 | 12.5–17.8

Numbers are returned as written: a reversed span ``(9.0, 4.0)`` stays reversed, so the IoU scores it 0 and the
metric can count it. A number preceded by a minus sign, glued to a word (``x3``) or written as a clock time
(``0:12``) does not start a span, so negative and clock-time answers are rejected rather than misread; non-finite
values (a 400-digit number overflows to ``inf``) are never returned.

The patterns are linear-time (no nested quantifiers; a span cannot start in the middle of a number or word), so a
megabyte of garbage parses in milliseconds.
"""

import math
import re
from collections import deque
from collections.abc import Sequence

__all__ = ["Span", "parse_span", "parse_span_with_rule", "temporal_iou"]

Span = tuple[float, float]

_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)?"
_SEPARATOR = r"\s*(?:to|and|until|through|-|–|—|~)\s*"
# The look-behind keeps a span from starting inside a number or word, or after a minus sign (no negatives, and no
# quadratic rescans of long digit runs); the look-ahead rejects clock times such as "3 to 0:17".
_SPAN = re.compile(
    rf"(?<![\w.\-:])(?P<start>{_NUMBER}){_UNIT}{_SEPARATOR}(?P<end>{_NUMBER})(?![\d:]|\.\d)",
    re.IGNORECASE,
)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)


def _spans(text: str):
    """Yield every finite span in `text`, left to right."""
    for match in _SPAN.finditer(text):
        start, end = float(match.group("start")), float(match.group("end"))
        if math.isfinite(start) and math.isfinite(end):
            yield start, end


def _last(iterable):
    """The last item of an iterable (consumed in constant memory), or None."""
    tail = deque(iterable, maxlen=1)
    return tail[0] if tail else None


def _last_answer_block(text: str) -> str | None:
    """Content of the last complete `<answer>…</answer>` block, or None."""
    close = _last(_ANSWER_CLOSE.finditer(text))
    if close is None:
        return None
    opening = _last(_ANSWER_OPEN.finditer(text, 0, close.start()))
    if opening is None:
        return None
    return text[opening.end() : close.start()]


def parse_span_with_rule(text: str) -> tuple[Span | None, str | None]:
    """Parse a span and report which rule found it.

    Args:
        text: Model output. Anything that is not a `str` parses to nothing.

    Returns:
        `(span, rule)`: `rule` is `"answer"` (from the last `<answer>` block), `"fallback"` (last span anywhere in
        the text) or `None` (no span; `span` is then `None` too).
    """
    if not isinstance(text, str):
        return None, None
    block = _last_answer_block(text)
    if block is not None:
        span = next(_spans(block), None)
        if span is not None:
            return span, "answer"
    span = _last(_spans(text))
    if span is not None:
        return span, "fallback"
    return None, None


def parse_span(text: str, strict: bool = True) -> Span | None:
    """The predicted `(start, end)` in seconds, as written by the model.

    Args:
        text: Model output.
        strict: Only accept a span inside the last `<answer>…</answer>` block (training rewards). With `False`
            (evaluation), fall back to the last span anywhere in the text, as the original evaluation did.

    Returns:
        `(start, end)` as floats, in the order written (a reversed span stays reversed), or `None`.

    >>> parse_span("<think>...</think><answer>5.0s to 11.6s</answer>")
    (5.0, 11.6)
    >>> parse_span("it starts at 3 and ends at 7") is None, parse_span("from 3 to 7", strict=False)
    (True, (3.0, 7.0))
    """
    span, rule = parse_span_with_rule(text)
    if strict and rule != "answer":
        return None
    return span


def _as_window(value) -> Span | None:
    """`(start, end)` from a 2-sequence of finite numbers, else None."""
    try:
        start, end = value
        start, end = float(start), float(end)
    except (TypeError, ValueError, OverflowError):
        return None
    if not (math.isfinite(start) and math.isfinite(end)):
        return None
    return start, end


def _gt_windows(gt) -> list[Span]:
    """Normalise `gt` (one window or a list of windows) to a list of valid windows."""
    if hasattr(gt, "tolist"):  # numpy arrays, torch tensors
        gt = gt.tolist()
    if isinstance(gt, (str, bytes)) or not isinstance(gt, Sequence):
        return []
    single = _as_window(gt)
    if single is not None:
        windows = [single]
    else:
        windows = [w for w in map(_as_window, gt) if w is not None]
    # A reversed ground truth is a data error that the loaders fix (open_r1.data swaps it); here it cannot match.
    return [(s, e) for s, e in windows if e >= s]


def temporal_iou(pred, gt) -> float:
    """Temporal intersection over union of a predicted span with the ground truth.

    Args:
        pred: `(start, end)` or `None`. Reversed (`end < start`), zero-length or non-finite spans score 0.
        gt: One window `[start, end]` or a list of windows; with several, the best-matching one counts.
            Reversed or non-finite ground-truth windows never match.

    Returns:
        IoU in `[0, 1]`; 0 whenever nothing valid can be compared. The union is at least the prediction's length,
        which is positive, so there is no division by zero.

    >>> temporal_iou((2.0, 6.0), [4.0, 8.0])
    0.3333333333333333
    >>> temporal_iou((2.0, 6.0), [[10.0, 12.0], [2.0, 5.0]])
    0.75
    """
    span = _as_window(pred) if pred is not None else None
    if span is None:
        return 0.0
    start, end = span
    if end <= start:
        return 0.0
    best = 0.0
    for gt_start, gt_end in _gt_windows(gt):
        intersection = min(end, gt_end) - max(start, gt_start)
        if intersection <= 0:
            continue
        union = max(end, gt_end) - min(start, gt_start)
        best = max(best, intersection / union)
    return min(max(best, 0.0), 1.0)
