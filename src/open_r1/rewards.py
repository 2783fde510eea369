"""Reward functions for GRPO on temporal video grounding: the file to edit when you try a new reward.

Each reward follows TRL's reward-function contract (see `trl.GRPOTrainer`): it is called with the batch's
`completions` (one per sampled answer; a `str`, or a conversation `[{"role": "assistant", "content": ...}]`) and every
dataset column as a keyword argument holding one value per completion (`solution`, `duration`, ...), plus extras
(`prompts`, `completion_ids`, `trainer_state`) that a reward may ignore through `**kwargs`. It returns one float per
completion. Rewards here are pure: no I/O, deterministic, and they never raise, whatever the model wrote.

Dataset columns used: `solution` = the ground truth `[start, end]` in seconds (or a list of windows; the best one
counts), `duration` = the video length in seconds.

Rewards are chosen by name with `--reward_funcs iou format` (the paper's pair). To add one, write a function and
register it with one line:

>>> def brief_answer_reward(completions, **kwargs):
...     '''1.0 when the answer block is under 40 characters.'''
...     texts = completion_texts(completions)
...     return [float(len(t.rpartition("<answer>")[2]) < 40) for t in texts]
>>> REWARD_FUNCS["brief_answer"] = brief_answer_reward
>>> [f.__name__ for f in get_reward_funcs(["iou", "brief_answer"])]
['iou_reward', 'brief_answer_reward']
>>> brief_answer_reward(["<think>x</think><answer>5.0s to 11.6s</answer>"])
[1.0]
>>> del REWARD_FUNCS["brief_answer"]

In the repository, add the entry to the `REWARD_FUNCS` literal at the bottom of this file instead.
"""

import json
import logging
import math
import numbers
from collections.abc import Callable, Sequence

from open_r1.grounding import parse_span, temporal_iou

__all__ = [
    "REWARD_FUNCS",
    "completion_text",
    "completion_texts",
    "format_reward",
    "get_reward_funcs",
    "iou_reward",
    "solution_windows",
    "tiou_reward",
]

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]


def completion_text(completion) -> str:
    """The text of one completion, whatever shape TRL hands over.

    Args:
        completion: A string, or a conversation: a list of messages `{"role": ..., "content": ...}` (one message
            dict is accepted too) whose content is a string or a list of parts `{"type": "text", "text": ...}`.

    Returns:
        The assistant text (all assistant messages joined; every message if none is marked assistant); `""` for
        anything unrecognised.
    """
    try:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            completion = [completion]
        if not isinstance(completion, (list, tuple)):
            return ""
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"] or messages
        return "".join(_content_text(m.get("content")) for m in assistant)
    except Exception:  # a reward must never stop training
        return ""


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def solution_windows(solution) -> list[tuple[float, float]]:
    """Ground-truth windows from one `solution` value.

    Args:
        solution: `[start, end]`, a list of windows `[[s, e], ...]`, their JSON text (`"[3.1, 7.9]"`), or an answer
            string such as `"<answer>3.1 to 7.9</answer>"` (the original TimeZero dataset's form).

    Returns:
        The windows as `(start, end)` float tuples; empty when nothing usable is found (reward 0).
    """
    try:
        if hasattr(solution, "tolist"):  # numpy arrays, torch tensors
            solution = solution.tolist()
        if isinstance(solution, bytes):
            solution = solution.decode("utf-8", "replace")
        if isinstance(solution, str):
            try:
                solution = json.loads(solution)
            except ValueError:
                span = parse_span(solution, strict=False)
                return [span] if span is not None else []
        if not isinstance(solution, Sequence) or isinstance(solution, str):
            return []
        if len(solution) == 2 and all(_is_number(x) for x in solution):
            windows = [solution]
        else:
            windows = [w for w in solution if isinstance(w, Sequence) and len(w) == 2 and all(map(_is_number, w))]
        return [(float(s), float(e)) for s, e in windows if math.isfinite(float(s)) and math.isfinite(float(e))]
    except Exception:
        return []


def _is_number(value) -> bool:
    # numbers.Real covers Python and NumPy scalars; bool is a Real too but never a time.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _column(values, index: int):
    """`values[index]`, or None when the column is missing or too short."""
    try:
        return values[index]
    except (TypeError, IndexError, KeyError):
        return None


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def iou_reward(completions, solution=None, **kwargs) -> list[float]:
    """Temporal IoU of the answered span with the ground truth (paper eq. 4).

    The span is read from the last `<answer>…</answer>` block (`parse_span(strict=True)`); a completion without a
    parsable answer gets 0. The same `temporal_iou` scores evaluation, so the reward is the metric.

    Args:
        completions: One completion per sample (string or conversation).
        solution: One ground truth per completion (`[start, end]` or a list of windows).
        **kwargs: Other dataset columns and TRL extras, ignored.

    Returns:
        One reward in `[0, 1]` per completion.
    """
    rewards = []
    for i, completion in enumerate(_as_list(completions)):
        try:
            span = parse_span(completion_text(completion), strict=True)
            rewards.append(_clamp(temporal_iou(span, solution_windows(_column(solution, i)))))
        except Exception:
            rewards.append(0.0)
    return rewards


_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


def _follows_format(text: str) -> bool:
    # Plain string checks, not a backtracking regex: linear on any input, and "exactly one block of each" is explicit.
    text = text.strip()
    if not (text.startswith(_THINK_OPEN) and text.endswith(_ANSWER_CLOSE)):
        return False
    if any(text.count(tag) != 1 for tag in (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)):
        return False
    think_end, answer_start = text.find(_THINK_CLOSE), text.find(_ANSWER_OPEN)
    if answer_start < think_end:
        return False
    return text[think_end + len(_THINK_CLOSE) : answer_start].strip() == ""


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the completion is exactly `<think>…</think>` then `<answer>…</answer>`, else 0.0 (paper eq. 3).

    The stripped completion must start with `<think>`, end with `</answer>`, hold each of the four tags exactly
    once, and have only whitespace between `</think>` and `<answer>`. Block contents may span lines. (The original
    code's lazy regex also accepted repeated blocks such as `<think>a</think><answer>1</answer><answer>2</answer>`;
    here they score 0.)

    Args:
        completions: One completion per sample (string or conversation).
        **kwargs: Dataset columns and TRL extras, ignored.

    Returns:
        One reward, 0.0 or 1.0, per completion.
    """
    rewards = []
    for completion in _as_list(completions):
        try:
            rewards.append(1.0 if _follows_format(completion_text(completion)) else 0.0)
        except Exception:
            rewards.append(0.0)
    return rewards


def _tiou(span, window: tuple[float, float], duration: float) -> float:
    iou = temporal_iou(span, window)
    if iou <= 0.0:
        return 0.0
    start_penalty = 1.0 - abs(span[0] - window[0]) / duration
    end_penalty = 1.0 - abs(span[1] - window[1]) / duration
    return _clamp(iou * max(start_penalty, 0.0) * max(end_penalty, 0.0))


_warned_no_duration = False


def tiou_reward(completions, solution=None, duration=None, **kwargs) -> list[float]:
    """Timestamp-aware IoU: IoU × (1 − |Δstart| / duration) × (1 − |Δend| / duration), clamped to [0, 1].

    From Time-R1, the follow-up version of the TimeZero paper by the same authors (Wang et al., 2025,
    arXiv:2503.13377v2): two predictions with the same IoU are told apart by how far each boundary is from the
    ground truth, measured as a fraction of the video. Not used in the TimeZero paper itself.

    With several ground-truth windows the best-scoring one counts. When a row has no usable `duration` (missing,
    non-positive or non-finite), the boundary terms cannot be normalised and the plain IoU is returned; this is
    logged once.

    Args:
        completions: One completion per sample (string or conversation).
        solution: One ground truth per completion (`[start, end]` or a list of windows).
        duration: One video duration in seconds per completion (the dataset's `duration` column).
        **kwargs: Other dataset columns and TRL extras, ignored.

    Returns:
        One reward in `[0, 1]` per completion.
    """
    global _warned_no_duration
    rewards = []
    for i, completion in enumerate(_as_list(completions)):
        try:
            span = parse_span(completion_text(completion), strict=True)
            windows = solution_windows(_column(solution, i))
            video_duration = _column(duration, i)
            video_duration = float(video_duration) if _is_number(video_duration) else math.nan
            if not (math.isfinite(video_duration) and video_duration > 0):
                if not _warned_no_duration:
                    logger.warning("tiou_reward: no valid `duration` for a row; using the plain IoU for such rows")
                    _warned_no_duration = True
                rewards.append(_clamp(temporal_iou(span, windows)))
                continue
            if span is None:
                rewards.append(0.0)
                continue
            rewards.append(max((_tiou(span, w, video_duration) for w in windows), default=0.0))
        except Exception:
            rewards.append(0.0)
    return rewards


def completion_texts(completions) -> list[str]:
    """The text of every completion of a batch (:func:`completion_text`), whatever container TRL (or a test) hands
    over: a lone string or message counts as one completion, anything not iterable as none."""
    return [completion_text(c) for c in _as_list(completions)]


def _as_list(completions) -> list:
    """The completions as a list (a lone string counts as one completion); [] for anything else."""
    if isinstance(completions, (str, dict)):
        return [completions]
    try:
        return list(completions)
    except TypeError:
        return []


REWARD_FUNCS: dict[str, RewardFunc] = {
    "iou": iou_reward,
    "format": format_reward,
    "tiou": tiou_reward,
}


def get_reward_funcs(names) -> list[RewardFunc]:
    """The reward functions for `--reward_funcs`, in the order given.

    Args:
        names: Registry names, e.g. `["iou", "format"]` (a single name string is accepted too).

    Returns:
        The functions from `REWARD_FUNCS`.

    Raises:
        ValueError: An unknown name (or none at all); the message lists the known names. Raised at start-up, before
            any model is loaded.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names or [])
    known = ", ".join(sorted(REWARD_FUNCS))
    if not names:
        raise ValueError(f"No reward function selected; choose from: {known}")
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"Unknown reward function(s) {unknown}; known reward functions: {known}")
    return [REWARD_FUNCS[name] for name in names]
