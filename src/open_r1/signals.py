"""Where GRPO's learning signal is: per-group statistics of a rollout's rewards and sampled spans.

A GRPO step learns only from groups whose rewards differ: the advantage ``(r - mean) / (std + 1e-4)`` of a group with
equal rewards is 0 for every completion, so such a group adds nothing but the KL term. Three numbers per rollout say
how much of a step carries signal (the trainer logs them each step; ``open_r1.select_data`` records them per query):

- ``zero_std_share``: the share of groups whose total rewards are all equal (TRL logs the same number per row as
  ``frac_reward_zero_std``); a group that no reward scored (every reward None) is left out of this and the next
  number, and a rollout with no scored group gives NaN (not logged);
- ``group_reward_std``: the mean over groups of the within-group standard deviation of the total reward (Bessel's
  correction, as TRL's advantage uses); TRL's ``reward_std`` is the standard deviation over the whole batch instead,
  which stays high when every group is constant but the groups differ from each other;
- ``span_spread``: the mean over groups of ``1 - IoU`` between pairs of the group's parsed spans (0: all sampled
  answers name the same span; groups with fewer than two parsed answers are left out), and ``span_parsed`` the share
  of completions whose answer parses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from open_r1.grounding import Span, temporal_iou

logger = logging.getLogger(__name__)

__all__ = [
    "SIGNAL_KEYS",
    "EarlyStopOnSignal",
    "SignalWatch",
    "early_stop_callback",
    "group_reward_stats",
    "is_zero_std",
    "rollout_signals",
    "span_spread",
]

# The names the trainer logs under (``signal/<name>``).
SIGNAL_KEYS = ("zero_std_share", "group_reward_std", "span_spread", "span_parsed")


def is_zero_std(std: torch.Tensor | float) -> torch.Tensor | bool:
    """TRL's test for a group without signal, ``torch.isclose(std, 0)``: absolute tolerance 1e-8 (elementwise)."""
    return abs(std) <= 1e-8


def group_reward_stats(rewards: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and standard deviation (Bessel's correction; NaN rewards, unscorable completions, left out) of
    ``rewards`` laid out group after group, ``num_generations`` rows each."""
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.detach().double().view(-1, num_generations)
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1)
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1) / count.clamp(min=1)
    squares = torch.where(valid, (grouped - mean[:, None]) ** 2, torch.zeros_like(grouped)).sum(dim=1)
    std = torch.sqrt(squares / (count - 1).clamp(min=1))
    std = torch.where(count > 1, std, torch.zeros_like(std))
    # A group no reward scored has no mean and no spread (NaN), rather than a spread of 0 that would count it as
    # "all rewards equal".
    mean = torch.where(count > 0, mean, torch.full_like(mean, math.nan))
    std = torch.where(count > 0, std, torch.full_like(std, math.nan))
    return mean, std


def span_spread(spans: Sequence[Span | None]) -> float | None:
    """``1 -`` the mean IoU over pairs of the parsed spans (None when fewer than two parse)."""
    parsed = [span for span in spans if span is not None]
    if len(parsed) < 2:
        return None
    pairs = [(a, b) for i, a in enumerate(parsed) for b in parsed[i + 1 :]]
    # Two equal answers agree whatever they are; otherwise a zero-length or reversed span overlaps nothing, as in the
    # reward.
    return 1.0 - sum(1.0 if a == b else temporal_iou(a, [b]) for a, b in pairs) / len(pairs)


def rollout_signals(rewards: torch.Tensor, spans: Sequence[Span | None], num_generations: int) -> dict[str, float]:
    """The numbers of the module docstring for one rollout: ``rewards`` the total reward per completion and ``spans``
    the parsed answer per completion (None when it does not parse), both group after group."""
    if len(spans) != rewards.numel():
        raise ValueError(f"{len(spans)} spans for {rewards.numel()} rewards")
    _, std = group_reward_stats(rewards, num_generations)
    scored = ~torch.isnan(std)  # groups with at least one scored completion; the others have no signal to measure
    std = std[scored]
    zero = is_zero_std(std)
    spreads = [span_spread(spans[i : i + num_generations]) for i in range(0, len(spans), num_generations)]
    spreads = [value for value in spreads if value is not None]
    return {
        "zero_std_share": zero.double().mean().item() if std.numel() else math.nan,
        "group_reward_std": std.mean().item() if std.numel() else math.nan,
        "span_spread": sum(spreads) / len(spreads) if spreads else math.nan,
        "span_parsed": sum(span is not None for span in spans) / max(len(spans), 1),
    }


class SignalWatch:
    """Says once, with the likely cause, when a training run learns nothing: no completion of the first rollout
    parses, or every group of ``rollouts`` rollouts in a row had equal rewards (every advantage 0: the policy moves
    only with the KL term). A run from a damaged or untrained checkpoint otherwise logged rewards of 0 for hundreds of
    steps without a word."""

    def __init__(self, rollouts: int = 10):
        self.rollouts = rollouts
        self.in_a_row = 0
        self.warned = False

    def first_rollout(self, spans: Sequence[Span | None]) -> None:
        if spans and all(span is None for span in spans):
            logger.warning(
                "no completion of the first rollout (%d) has a parsable answer ('a to b' inside <answer>): the IoU "
                "reward is 0 for all of them. Is the checkpoint damaged or untrained for this format, or does it "
                "expect another prompt (--no_think, --video_first)? A supervised warm start (python -m "
                "open_r1.sft_video) teaches the format", len(spans),
            )  # fmt: skip

    def update(self, signals: dict[str, float], example: Callable[[], str]) -> None:
        """One rollout's :func:`rollout_signals`; ``example`` gives one of its completions' text."""
        self.in_a_row = self.in_a_row + 1 if signals["zero_std_share"] == 1.0 else 0
        if self.in_a_row != self.rollouts or self.warned:
            return
        self.warned = True
        if signals["span_parsed"] == 0:
            cause = (f"no sampled answer parses ('a to b' inside <answer>); the model writes e.g. {example()[:120]!r}. "
                     "A supervised warm start (python -m open_r1.sft_video) teaches the format")  # fmt: skip
        else:
            cause = ("the samples of each query get equal rewards (its queries all solved or all missed at this "
                     "temperature; python -m open_r1.select_data keeps the ones whose rewards differ)")  # fmt: skip
        logger.warning("the last %d rollouts had no group whose rewards differ: every advantage was 0 and the policy "
                       "learned nothing but the KL term. Likely cause: %s", self.rollouts, cause)  # fmt: skip


class EarlyStopOnSignal:
    """Stops a GRPO run when its training signal has stopped rising (TimeLens, arXiv 2512.14698: training past that
    point degraded results): at each logging step the mean of the last ``window`` logged values of the IoU reward
    (``rewards/<reward>/mean``) and of the within-group reward std (``signal/group_reward_std``) is compared with the
    best such mean so far; after ``patience`` logging steps in a row in which neither improved, the run stops, saves
    its checkpoint and says why (log, ``state.log_history`` and ``early_stop.json`` in the output folder).

    A ``transformers.TrainerCallback`` (built by :func:`early_stop_callback`, so that this module imports no trainer).
    """

    def __init__(self, patience: int, window: int = 10, reward_key: str = "rewards/iou_reward/mean"):
        if patience < 1 or window < 1:
            raise ValueError(f"early stopping needs patience and window >= 1, got {patience} and {window}")
        self.patience, self.window = patience, window
        self.keys = (reward_key, "signal/group_reward_std")
        self.history: dict[str, list[float]] = {key: [] for key in self.keys}
        self.best: dict[str, float] = {}
        self.stale = 0
        self.reason: str | None = None

    def observe(self, logs: dict[str, float]) -> str | None:
        """One logging step's values; returns the reason to stop (once), else None."""
        if self.reason is not None or not all(isinstance(logs.get(key), (int, float)) for key in self.keys):
            return None
        improved = False
        for key in self.keys:
            values = self.history[key]
            values.append(float(logs[key]))
            windowed = sum(values[-self.window :]) / len(values[-self.window :])
            if key not in self.best or windowed > self.best[key]:
                improved = improved or key in self.best
                self.best[key] = windowed
        first = len(self.history[self.keys[0]]) == 1
        self.stale = 0 if (improved or first) else self.stale + 1
        if self.stale < self.patience:
            return None
        self.reason = (
            f"early stop: neither the {self.window}-step mean of {self.keys[0]} (best {self.best[self.keys[0]]:.4f}) "
            f"nor of {self.keys[1]} (best {self.best[self.keys[1]]:.4f}) has improved for {self.patience} logging "
            "steps"
        )
        return self.reason


def early_stop_callback(patience: int, window: int = 10, reward_key: str = "rewards/iou_reward/mean"):
    """The :class:`EarlyStopOnSignal` rule as a ``transformers.TrainerCallback``."""
    import json
    from pathlib import Path

    from transformers import TrainerCallback

    class EarlyStop(TrainerCallback):
        def __init__(self):
            self.rule = EarlyStopOnSignal(patience, window, reward_key)

        def on_log(self, args, state, control, logs=None, **kwargs):
            reason = self.rule.observe(logs or {})
            if reason is None:
                return control
            logger.warning("%s: stopping at step %d and saving", reason, state.global_step)
            state.log_history.append({"early_stop": reason, "step": state.global_step})
            if state.is_world_process_zero:
                Path(args.output_dir).mkdir(parents=True, exist_ok=True)
                stop = {"step": state.global_step, "reason": reason, "best": self.rule.best}
                (Path(args.output_dir) / "early_stop.json").write_text(json.dumps(stop, indent=2) + "\n")
            control.should_training_stop = True
            control.should_save = True
            return control

    return EarlyStop()


def validation_gate(score, threshold: float, first_step: int, every: int):
    """A ``TrainerCallback`` that saves at ``first_step`` and every ``every`` steps after, scores each such checkpoint
    with ``score(folder, step)`` (the demo: R1@0.5 on its validation split) and stops training once it reaches
    ``threshold``.
    The random state of the run is put back after each score, so scoring does not change the training that follows.
    ``checks`` lists ``{"step", "score"}``; ``passed_at`` is the step that passed (None: none did)."""
    import random

    import numpy
    import torch
    from transformers import TrainerCallback

    class ValidationGate(TrainerCallback):
        def __init__(self):
            self.checks, self.passed_at, self.threshold = [], None, threshold

        @staticmethod
        def due(step: int) -> bool:
            return step >= first_step and (step - first_step) % every == 0

        def on_step_end(self, args, state, control, **kwargs):
            if self.due(state.global_step):
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            step = state.global_step
            if not self.due(step):
                return control
            states = random.getstate(), numpy.random.get_state(), torch.get_rng_state()
            value = score(Path(args.output_dir) / f"checkpoint-{step}", step)
            random.setstate(states[0])
            numpy.random.set_state(states[1])
            torch.set_rng_state(states[2])
            self.checks.append({"step": step, "score": value})
            logger.info("step %d: validation score %.2f (needs %.2f)", step, value, threshold)
            if value >= threshold:
                self.passed_at = step
                control.should_training_stop = True
            return control

    return ValidationGate()
