import doctest
import math
import random
import time

import numpy as np
import pytest

import open_r1.grounding
from open_r1.grounding import parse_span, parse_span_with_rule, temporal_iou

PAPER_ANSWER = (
    "<think>The person opens the door ... <timestep>5.0s to 11.6s</timestep></think><answer>5.0s to 11.6s</answer>"
)


@pytest.mark.parametrize(
    "text, span, rule",
    [
        ("<answer>12.54 to 17.83</answer>", (12.54, 17.83), "answer"),  # the prompt's own example
        (PAPER_ANSWER, (5.0, 11.6), "answer"),  # the paper's Figure 1 output, with a span inside <think> too
        ("<answer>3 and 7</answer>", (3.0, 7.0), "answer"),  # integers joined by "and"
        ("<answer>5.0s to 11.6s</answer>", (5.0, 11.6), "answer"),  # "s" units
        ("<answer>5.0 seconds to 11.6 seconds</answer>", (5.0, 11.6), "answer"),  # spelled-out units
        ("<answer>5 sec - 9 sec</answer>", (5.0, 9.0), "answer"),  # "sec" units with a hyphen
        ("<answer>12.5 - 17.8</answer>", (12.5, 17.8), "answer"),  # hyphen with spaces
        ("<answer>12.5-17.8</answer>", (12.5, 17.8), "answer"),  # hyphen without spaces
        ("<answer>12.5 – 17.8</answer>", (12.5, 17.8), "answer"),  # en dash
        ("<answer>12.5—17.8</answer>", (12.5, 17.8), "answer"),  # em dash
        ("<answer>from 3 to 7</answer>", (3.0, 7.0), "answer"),  # leading "from"
        ("<answer>The event happens between 3.2 and 7.9 seconds.</answer>", (3.2, 7.9), "answer"),  # a sentence
        ("<answer>12.54 to 17.83.</answer>", (12.54, 17.83), "answer"),  # trailing full stop is not a decimal
        ("<answer> 1 TO 2 </answer>", (1.0, 2.0), "answer"),  # case-insensitive separator, padding
        ("<ANSWER>1 to 2</ANSWER>", (1.0, 2.0), "answer"),  # case-insensitive tags
        ("<answer>\n4.00 to 9.50\n</answer>", (4.0, 9.5), "answer"),  # newlines inside the block
        ("<answer>0 to 1</answer><answer>5 to 9</answer>", (5.0, 9.0), "answer"),  # several blocks: last wins
        ("<answer>0 to 1</answer> then <answer>5 to 9", (0.0, 1.0), "answer"),  # unclosed last block ignored
        ("<answer>2 to 4 or 6 to 8</answer>", (2.0, 4.0), "answer"),  # two spans in the block: the first
        ("<answer>9.0 to 4.0</answer>", (9.0, 4.0), "answer"),  # reversed span kept as written
        ("<answer>3 to 3</answer>", (3.0, 3.0), "answer"),  # zero-length span kept as written
        ("<answer>unsure</answer> maybe 3 to 7", (3.0, 7.0), "fallback"),  # empty answer: last span in the text
        ("1 to 2, no wait, 3 to 4", (3.0, 4.0), "fallback"),  # no tags: the last span anywhere
        ("<think>2 to 5</think>", (2.0, 5.0), "fallback"),  # only a span in the reasoning
        ("", None, None),  # empty text
        ("<answer></answer>", None, None),  # empty answer, nothing else
        ("<answer>-3 to 7</answer>", None, None),  # negative start is not misread as 3
        ("<answer>0:12 to 0:17</answer>", None, None),  # clock times are not misread as 12 to 0
        ("<answer>7.5.2 to 9</answer>", None, None),  # malformed number
        ("<answer>abc3 to 7</answer>", None, None),  # a number glued to a word does not start a span
        ("<answer>" + "9" * 400 + " to 5</answer>", None, None),  # overflows to inf: never returned
        ("just the number 42", None, None),  # one number is not a span
        (None, None, None),  # not a string
        (b"<answer>1 to 2</answer>", None, None),  # bytes are not text
    ],
)
def test_parse_span_with_rule(text, span, rule):
    assert parse_span_with_rule(text) == (span, rule)


@pytest.mark.parametrize(
    "text, strict, span",
    [
        ("<answer>5.0s to 11.6s</answer>", True, (5.0, 11.6)),  # answer rule: same in both modes
        ("<answer>5.0s to 11.6s</answer>", False, (5.0, 11.6)),
        ("from 3 to 7", True, None),  # no answer block: the reward sees nothing
        ("from 3 to 7", False, (3.0, 7.0)),  # evaluation falls back to the text
        ("<answer>none</answer> 3 to 7", True, None),  # unparsable answer block: strict gives nothing
        ("<answer>none</answer> 3 to 7", False, (3.0, 7.0)),
    ],
)
def test_parse_span_strictness(text, strict, span):
    assert parse_span(text, strict=strict) == span


def test_parse_span_returns_floats():
    start, end = parse_span("<answer>3 to 7</answer>")
    assert type(start) is float and type(end) is float


@pytest.mark.parametrize(
    "garbage",
    [
        "1" * 1_000_000,  # one long digit run
        " " * 1_000_000,  # whitespace only
        "1" + " " * 1_000_000 + "x",  # a number followed by a huge gap
        "1 " * 500_000,  # many numbers, no separator
        "1." * 500_000,  # dotted digits
        "<answer>" * 125_000,  # many opening tags, never closed
        "</answer>" * 110_000,  # many closing tags, never opened
        "1 to " * 200_000,  # a chain of spans
        "0.5 seconds" * 90_000,  # units without separators
    ],
)
def test_parse_is_linear_on_huge_garbage(garbage):
    t0 = time.perf_counter()
    parse_span_with_rule(garbage)
    parse_span_with_rule("<answer>" + garbage + "</answer>")
    assert time.perf_counter() - t0 < 2.0


def test_parse_random_megabyte_fast_and_sane():
    rng = random.Random(0)
    text = "".join(rng.choice("0123456789 .-–:tosandec<>/answerthink\n") for _ in range(1_000_000))
    t0 = time.perf_counter()
    span, rule = parse_span_with_rule(text)
    assert time.perf_counter() - t0 < 2.0
    assert rule in {"answer", "fallback"}
    assert all(math.isfinite(x) and x >= 0 for x in span)


@pytest.mark.parametrize(
    "pred, gt, iou",
    [
        ((0.0, 10.0), [0.0, 10.0], 1.0),  # identical
        ((2.0, 6.0), [4.0, 8.0], 2 / 6),  # overlap 2 of union 6
        ((0.0, 10.0), [5.0, 15.0], 5 / 15),  # half-overlap of equal lengths
        ((3.0, 7.0), [0.0, 10.0], 4 / 10),  # prediction inside ground truth
        ((0.0, 10.0), [3.0, 7.0], 4 / 10),  # ground truth inside prediction
        ((12.54, 17.83), [12.5, 17.8], 5.26 / 5.33),  # near miss: 0.98687
        ((5.0, 11.6), [4.0, 11.6], 6.6 / 7.6),  # the paper's answer against a wider ground truth
        ((0.0, 1.0), [2.0, 3.0], 0.0),  # disjoint
        ((0.0, 2.0), [2.0, 4.0], 0.0),  # touching at one point
        ((-1.0, 3.0), [0.0, 2.0], 2 / 4),  # a negative start (from another caller) is just arithmetic
        ((6.0, 2.0), [2.0, 6.0], 0.0),  # reversed prediction
        ((5.0, 5.0), [4.0, 6.0], 0.0),  # zero-length prediction
        ((math.nan, 5.0), [0.0, 5.0], 0.0),  # non-finite prediction
        ((0.0, math.inf), [0.0, 5.0], 0.0),  # infinite prediction
        (None, [0.0, 5.0], 0.0),  # nothing parsed
        ((2.0, 6.0), [[10.0, 12.0], [2.0, 5.0]], 3 / 4),  # several windows: the best
        ((2.0, 6.0), [[2.0, 4.0], [4.0, 6.0]], 2 / 4),  # each window alone, never their union
        ((2.0, 6.0), [], 0.0),  # no ground truth
        ((2.0, 6.0), None, 0.0),  # no ground truth
        ((2.0, 6.0), [5.0, 5.0], 0.0),  # zero-length ground truth
        ((2.0, 6.0), [8.0, 4.0], 0.0),  # reversed ground truth never matches
        ((2.0, 6.0), [math.nan, 6.0], 0.0),  # non-finite ground truth
        ((2.0, 6.0), (4.0, 8.0), 2 / 6),  # tuple ground truth
        ((2.0, 6.0), np.array([4.0, 8.0]), 2 / 6),  # numpy ground truth
        ((2.0, 6.0), np.array([[9.0, 10.0], [4.0, 8.0]]), 2 / 6),  # numpy windows
        ([2, 6], [4, 8], 2 / 6),  # integers and lists
        ((2.0, 6.0), "4 to 8", 0.0),  # a string is not a window
    ],
)
def test_temporal_iou(pred, gt, iou):
    assert temporal_iou(pred, gt) == pytest.approx(iou, abs=1e-12)


def test_doctests():
    assert doctest.testmod(open_r1.grounding).failed == 0
