"""Rewards checked as the trainer calls them: a NaN, inf or non-number stops the run naming the reward and the row.

TRL reads NaN as "no reward for this row" and would count a broken reward as 0, or an inf would poison the group's
advantages; neither shows in the logs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable


class NonFiniteRewardError(ValueError):
    """A reward function returned NaN, inf or a non-number; the message names the function and the row."""


def reward_problem(value) -> str | None:
    """Why one reward value cannot be trained on, or None. ``None`` is allowed: TRL's "no reward for this row"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return f"returned {type(value).__name__} {str(value)[:40]!r}, not a number"
    if not math.isfinite(float(value)):
        return f"returned {float(value)}"
    return None


def checked_reward(func: Callable, name: str) -> Callable:
    """``func`` with its outputs checked: a NaN, inf or non-number raises :class:`NonFiniteRewardError` naming the
    reward, the row and its query; ``None`` passes (TRL skips such a row for that reward, with its own warning)."""
    if getattr(func, "_open_r1_checked", False):
        return func

    def check(outputs, kwargs):
        for row, value in enumerate(outputs):
            problem = reward_problem(value)
            if problem is not None:
                columns = {key: kwargs[key][row] for key in ("video_id", "query", "solution") if key in kwargs}
                completion = kwargs["completions"][row] if "completions" in kwargs else None
                raise NonFiniteRewardError(
                    f"reward {name!r} {problem} for row {row} ({columns}; completion {str(completion)[:200]!r}); "
                    "rewards must be finite numbers (None: no reward for this row)"
                )
        return outputs

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def checked_async(*args, **kwargs):
            return check(await func(*args, **kwargs), kwargs)

        checked_async._open_r1_checked = True
        return checked_async

    @functools.wraps(func)
    def checked(*args, **kwargs):
        return check(func(*args, **kwargs), kwargs)

    checked._open_r1_checked = True
    return checked
