"""Where a rollout's learning signal is (open_r1.signals), checked against formulas written here."""

import json
import math
from statistics import mean, stdev

import pytest
import torch

from open_r1.signals import group_reward_stats, is_zero_std, rollout_signals, span_spread


def test_group_std_is_the_within_group_sample_std_not_the_batch_std():
    # Two groups of 4: the first constant, the second varied; the groups differ from each other.
    rewards = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 1.0]
    means, stds = group_reward_stats(torch.tensor(rewards), 4)
    assert means.tolist() == [1.0, 1.0]
    assert stds.tolist() == pytest.approx([0.0, stdev(rewards[4:])], abs=1e-12)
    signals = rollout_signals(torch.tensor(rewards), [None] * 8, 4)
    assert signals["zero_std_share"] == 0.5
    assert signals["group_reward_std"] == pytest.approx(mean([0.0, stdev(rewards[4:])]))
    # The batch std (TRL's reward_std) would be positive even if both groups were constant at different levels.
    constant_groups = torch.tensor([0.0] * 4 + [2.0] * 4)
    assert rollout_signals(constant_groups, [None] * 8, 4)["group_reward_std"] == 0.0
    assert rollout_signals(constant_groups, [None] * 8, 4)["zero_std_share"] == 1.0
    assert constant_groups.std().item() > 1


def test_unscorable_completions_are_left_out_of_their_group():
    means, stds = group_reward_stats(torch.tensor([1.0, math.nan, 3.0, 5.0]), 4)
    assert means.item() == pytest.approx(3.0)
    assert stds.item() == pytest.approx(stdev([1.0, 3.0, 5.0]))
    with pytest.raises(ValueError, match="groups of 3"):
        group_reward_stats(torch.zeros(8), 3)


def test_span_spread_is_one_minus_the_mean_pairwise_iou():
    assert span_spread([(1.0, 3.0)] * 4) == 0.0
    # IoUs: (0,2)-(1,3) = 1/3, (0,2)-(0,2) = 1, (1,3)-(0,2) = 1/3.
    assert span_spread([(0.0, 2.0), (1.0, 3.0), (0.0, 2.0), None]) == pytest.approx(1 - (1 / 3 + 1 + 1 / 3) / 3)
    assert span_spread([(0.0, 2.0), (5.0, 6.0)]) == 1.0
    assert span_spread([(0.0, 2.0), None]) is None
    # A reversed span overlaps nothing but itself.
    assert span_spread([(3.0, 1.0), (3.0, 1.0), (1.0, 3.0)]) == pytest.approx(1 - 1 / 3)


def test_span_signals_average_over_groups_with_two_parsed_answers():
    spans = [(0.0, 2.0), (0.0, 2.0), None, None] + [(0.0, 1.0), (1.0, 2.0), None, None] + [None] * 4
    signals = rollout_signals(torch.zeros(12), spans, 4)
    assert signals["span_spread"] == pytest.approx((0.0 + 1.0) / 2)
    assert signals["span_parsed"] == pytest.approx(4 / 12)
    assert math.isnan(rollout_signals(torch.zeros(4), [None] * 4, 4)["span_spread"])


@pytest.mark.parametrize("spread", [0.0, 5e-9, 1e-8, 2e-8, 1e-6, 1e-4])
def test_zero_spread_is_trls_isclose(spread):
    """A group's rewards spread by ``spread``: counted as zero-spread exactly when TRL's ``torch.isclose(std, 0)`` says
    so (absolute tolerance 1e-8), the boundary between 1e-8 and 1e-4 included."""
    rewards = torch.tensor([0.5, 0.5 + spread, 0.5, 0.5 + spread], dtype=torch.float64)
    std = rewards.std()
    expected = bool(torch.isclose(std, torch.zeros_like(std)))
    assert bool(is_zero_std(std)) == expected
    assert rollout_signals(rewards, [None] * 4, 4)["zero_std_share"] == float(expected)


def test_a_group_no_reward_scored_is_left_out_not_counted_as_equal():
    """A group whose every completion has no reward (NaN total): NaN statistics, left out of the rollout's numbers,
    rather than a spread of 0 that would count it as a group of equal rewards."""
    rewards = torch.tensor([math.nan] * 4 + [0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    mean, std = group_reward_stats(rewards, 4)
    assert math.isnan(mean[0]) and math.isnan(std[0]) and not math.isnan(std[1])
    signals = rollout_signals(rewards, [None] * 8, 4)
    assert signals["zero_std_share"] == 0.0
    assert signals["group_reward_std"] == pytest.approx(stdev([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(rollout_signals(rewards[:4], [None] * 4, 4)["zero_std_share"])


def test_a_run_without_signal_is_named_once_with_its_cause(caplog):
    """Every group of 3 rollouts in a row with equal rewards: one warning, naming the cause (no parsable answer, with
    an example of what the model writes); a rollout with signal starts the count again."""
    import logging

    from open_r1.signals import SignalWatch

    flat = {"zero_std_share": 1.0, "span_parsed": 0.0}
    watch = SignalWatch(rollouts=3)
    with caplog.at_level(logging.WARNING):
        for signals in (flat, flat, {"zero_std_share": 0.5, "span_parsed": 0.0}, flat, flat):
            watch.update(signals, lambda: "<think>hmm")
        assert "no group whose rewards differ" not in caplog.text  # never 3 in a row
        for _ in range(5):
            watch.update(flat, lambda: "<think>hmm")
    assert caplog.text.count("the last 3 rollouts had no group whose rewards differ") == 1
    assert "no sampled answer parses" in caplog.text and "'<think>hmm'" in caplog.text
    caplog.clear()
    solved = SignalWatch(rollouts=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            solved.update({"zero_std_share": 1.0, "span_parsed": 1.0}, lambda: "")
    assert "all solved or all missed" in caplog.text


def test_early_stop_rule_on_a_known_curve():
    """Windowed means (window 2) of the IoU reward and the within-group std; patience 2: it stops at the second logging
    step in a row where neither mean beat its best."""
    from open_r1.signals import EarlyStopOnSignal

    rule = EarlyStopOnSignal(patience=2, window=2)
    iou = [0.1, 0.3, 0.5, 0.4, 0.4, 0.45, 0.2]
    std = [0.3, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2]
    reasons = [rule.observe({"rewards/iou_reward/mean": a, "signal/group_reward_std": b}) for a, b in zip(iou, std)]
    # IoU means: 0.1, 0.2, 0.4, 0.45, 0.4, 0.425, 0.325 -> best rises until step 4, then not: stale at 5 and 6.
    assert reasons[:5] == [None] * 5 and reasons[5] is not None and reasons[6] is None  # said once
    assert "has improved for 2 logging steps" in reasons[5] and rule.best["rewards/iou_reward/mean"] == pytest.approx(
        0.45
    )
    # The std alone rising keeps the run going.
    rule = EarlyStopOnSignal(patience=1, window=1)
    logs = [{"rewards/iou_reward/mean": 0.5, "signal/group_reward_std": s} for s in (0.1, 0.2, 0.3, 0.3)]
    assert [rule.observe(entry) for entry in logs][:3] == [None] * 3 and rule.observe(logs[3] | {}) is None
    assert rule.reason is not None
    # Logs without the two values (an evaluation log, another reward) are ignored.
    assert EarlyStopOnSignal(1).observe({"loss": 0.3}) is None
    with pytest.raises(ValueError, match="patience and window >= 1"):
        EarlyStopOnSignal(0)


@pytest.mark.slow
def test_early_stop_ends_a_real_run_saves_and_says_why(tmp_path_factory, tmp_path):
    """Through the entry point and TRL's trainer: a learning rate of 0 learns nothing, so with patience 1 and window 1
    the run stops after the first logging step whose values did not improve, well before --max_steps, and saves."""
    from _entry_points import common_args, tiny_setup

    from open_r1.grpo_video import cli

    setup = tiny_setup(tmp_path_factory, "early_stop")
    out = tmp_path / "run"
    flags = ["--num_generations", "4", "--max_completion_length", "8", "--max_steps", "12", "--learning_rate", "0.0",
             "--early_stop_patience", "1", "--early_stop_window", "1", "--seed", "0"]  # fmt: skip
    trainer = cli(common_args(setup, out, *flags))
    logged = [e for e in trainer.state.log_history if "rewards/iou_reward/mean" in e]
    stop = [e for e in trainer.state.log_history if "early_stop" in e]
    assert len(stop) == 1 and trainer.state.global_step < 12 and len(logged) == trainer.state.global_step
    saved = json.loads((out / "early_stop.json").read_text())
    assert saved["step"] == trainer.state.global_step and "has improved for 1 logging steps" in saved["reason"]
    assert (out / "model.safetensors").is_file()
    # The rule's decision, replayed on the logged values.
    from open_r1.signals import EarlyStopOnSignal

    rule = EarlyStopOnSignal(1, 1)
    assert [rule.observe(e) is not None for e in logged].index(True) == len(logged) - 1
