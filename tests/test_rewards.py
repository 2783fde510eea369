import doctest
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import open_r1.rewards
from open_r1.rewards import (
    REWARD_FUNCS,
    completion_text,
    format_reward,
    get_reward_funcs,
    iou_reward,
    solution_windows,
    tiou_reward,
)

PAPER_ANSWER = "<think>...</think><answer>5.0s to 11.6s</answer>"  # the paper's Figure 1 output


def assistant(content):
    return [{"role": "assistant", "content": content}]


@pytest.mark.parametrize(
    "completion, solution, reward",
    [
        (PAPER_ANSWER, [5.0, 11.6], 1.0),  # the paper's answer, exact
        (PAPER_ANSWER, [4.0, 11.6], 6.6 / 7.6),  # the paper's answer, 1 s late start
        ("<think>x</think><answer>12.54 to 17.83</answer>", [12.5, 17.8], 5.26 / 5.33),  # the prompt's example
        ("<think>x</think><answer>2 to 6</answer>", [4.0, 8.0], 2 / 6),  # partial overlap
        ("<think>x</think><answer>0 to 1</answer>", [4.0, 8.0], 0.0),  # disjoint
        ("<answer>0 to 1</answer><answer>5 to 11.6</answer>", [5.0, 11.6], 1.0),  # several blocks: the last counts
        ("<answer>5 to 11.6</answer><answer>0 to 1</answer>", [5.0, 11.6], 0.0),  # ... also when it is worse
        ("<answer>11.6 to 5.0</answer>", [5.0, 11.6], 0.0),  # reversed span scores 0
        ("<answer>5 to 5</answer>", [4.0, 6.0], 0.0),  # zero-length span scores 0
        ("5.0 to 11.6", [5.0, 11.6], 0.0),  # no answer block: the reward is strict
        ("<think>5.0 to 11.6</think><answer>not sure</answer>", [5.0, 11.6], 0.0),  # unparsable answer
        ("", [5.0, 11.6], 0.0),  # empty text
        (assistant(PAPER_ANSWER), [5.0, 11.6], 1.0),  # conversational completion
        (assistant([{"type": "text", "text": PAPER_ANSWER}]), [5.0, 11.6], 1.0),  # content as a list of parts
        (PAPER_ANSWER, [[0.0, 2.0], [5.0, 11.6]], 1.0),  # several ground-truth windows: the best
        (PAPER_ANSWER, (5.0, 11.6), 1.0),  # tuple solution
        (PAPER_ANSWER, np.array([5.0, 11.6]), 1.0),  # numpy solution
        (PAPER_ANSWER, "[5.0, 11.6]", 1.0),  # JSON text solution
        (PAPER_ANSWER, "<answer>5.0 to 11.6</answer>", 1.0),  # the original dataset's answer-string solution
        (PAPER_ANSWER, None, 0.0),  # missing solution
        (PAPER_ANSWER, "garbage", 0.0),  # unusable solution
        (None, [5.0, 11.6], 0.0),  # not a completion at all
    ],
)
def test_iou_reward(completion, solution, reward):
    assert iou_reward([completion], solution=[solution]) == [pytest.approx(reward, abs=1e-12)]


@pytest.mark.parametrize(
    "completion, reward",
    [
        (PAPER_ANSWER, 1.0),  # the paper's answer
        ("<think>a</think><answer>1 to 2</answer>", 1.0),  # minimal
        ("<think>a</think>\n\n<answer>1 to 2</answer>", 1.0),  # whitespace between the blocks
        ("  \n<think>a</think><answer>1 to 2</answer>\n ", 1.0),  # surrounding whitespace is stripped
        ("<think>line 1\nline 2</think><answer>\n1 to 2\n</answer>", 1.0),  # multi-line blocks
        ("<think><timestep>1.00 to 2.00</timestep></think><answer>1 to 2</answer>", 1.0),  # timestep tags inside
        ("<think></think><answer></answer>", 1.0),  # empty blocks still follow the format
        (assistant("<think>a</think><answer>1 to 2</answer>"), 1.0),  # conversational
        ("<answer>1 to 2</answer>", 0.0),  # no reasoning
        ("<think>a</think>", 0.0),  # no answer
        ("<answer>1 to 2</answer><think>a</think>", 0.0),  # wrong order
        ("<think>a</think> so <answer>1 to 2</answer>", 0.0),  # text between the blocks
        ("Sure! <think>a</think><answer>1 to 2</answer>", 0.0),  # text before
        ("<think>a</think><answer>1 to 2</answer> done", 0.0),  # text after
        ("<think>a</think><answer>1 to 2</answer><answer>3 to 4</answer>", 0.0),  # two answer blocks
        ("<think>a</think><think>b</think><answer>1 to 2</answer>", 0.0),  # two think blocks
        ("<think>a <answer>0 to 1</answer></think><answer>1 to 2</answer>", 0.0),  # answer tag inside think
        ("<think>a <answer>1 to 2</think></answer>", 0.0),  # answer opened inside the think block (one tag each)
        ("<think><answer></think>1 to 2</answer>", 0.0),  # the answer starts before the reasoning ends
        ("<think>a</think><answer>1 to 2", 0.0),  # truncated generation
        ("<THINK>a</THINK><ANSWER>1 to 2</ANSWER>", 0.0),  # tags are exact
        ("", 0.0),  # empty text
        (None, 0.0),  # not a completion
    ],
)
def test_format_reward(completion, reward):
    assert format_reward([completion]) == [reward]


@pytest.mark.parametrize(
    "completion, solution, duration, reward",
    [
        ("<answer>4 to 8</answer>", [4.0, 8.0], 20.0, 1.0),  # exact
        ("<answer>2 to 6</answer>", [4.0, 8.0], 20.0, (2 / 6) * 0.9 * 0.9),  # IoU 1/3, both ends 2 s off of 20 s
        ("<answer>0 to 10</answer>", [5.0, 15.0], 10.0, (5 / 15) * 0.5 * 0.5),  # ends half a video off
        ("<answer>0 to 30</answer>", [0.0, 10.0], 10.0, 0.0),  # end off by twice the duration: clamped to 0
        ("<answer>2 to 6</answer>", [[4.0, 8.0], [2.0, 5.0]], 20.0, 0.75 * 1.0 * 0.95),  # best window
        ("<answer>6 to 2</answer>", [2.0, 6.0], 20.0, 0.0),  # reversed
        ("2 to 6", [4.0, 8.0], 20.0, 0.0),  # no answer block
        ("<answer>2 to 6</answer>", [4.0, 8.0], None, 2 / 6),  # no duration: plain IoU
        ("<answer>2 to 6</answer>", [4.0, 8.0], 0.0, 2 / 6),  # zero duration: plain IoU, no division
        ("<answer>2 to 6</answer>", [4.0, 8.0], math.nan, 2 / 6),  # NaN duration: plain IoU
        ("<answer>2 to 6</answer>", [4.0, 8.0], np.float32(20.0), (2 / 6) * 0.9 * 0.9),  # numpy duration
    ],
)
def test_tiou_reward(completion, solution, duration, reward):
    assert tiou_reward([completion], solution=[solution], duration=[duration]) == [pytest.approx(reward, abs=1e-6)]


def test_tiou_orders_equal_iou_predictions_by_boundary_error():
    # Both predictions have IoU 0.5 with [10, 20]; the one whose boundary errors are smaller scores higher.
    gt, duration = [10.0, 20.0], 100.0
    near, far = "<answer>10 to 15</answer>", "<answer>5 to 20</answer>"
    assert iou_reward([near, far], solution=[gt, gt]) == [0.5, pytest.approx(10 / 15)]
    tiou = tiou_reward([near, far], solution=[gt, gt], duration=[duration, duration])
    assert tiou == [pytest.approx(0.5 * 1.0 * 0.95), pytest.approx((10 / 15) * 0.95 * 1.0)]


def test_batch_shape_and_trl_call():
    # TRL passes every column (one value per completion) and extras such as prompts and trainer_state.
    completions = [assistant(PAPER_ANSWER), assistant("no idea"), assistant("<think>a</think><answer>0 to 5</answer>")]
    columns = {
        "prompts": [[{"role": "user", "content": "q"}]] * 3,
        "completion_ids": [[1, 2]] * 3,
        "solution": [[5.0, 11.6], [5.0, 11.6], [0.0, 10.0]],
        "duration": [30.0, 30.0, 30.0],
        "query": ["a", "b", "c"],
        "trainer_state": None,
    }
    assert iou_reward(completions, **columns) == [1.0, 0.0, 0.5]
    assert format_reward(completions, **columns) == [1.0, 0.0, 1.0]
    assert tiou_reward(completions, **columns) == [1.0, 0.0, pytest.approx(0.5 * 1.0 * (1 - 5 / 30))]


def test_short_solution_column_scores_zero_instead_of_raising():
    assert iou_reward([PAPER_ANSWER, PAPER_ANSWER], solution=[[5.0, 11.6]]) == [1.0, 0.0]
    assert iou_reward([PAPER_ANSWER]) == [0.0]


@pytest.mark.parametrize(
    "completion, text",
    [
        ("plain", "plain"),  # a string
        ([{"role": "assistant", "content": "a"}], "a"),  # TRL conversational
        ([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "ab"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "a"),  # only the assistant
        ({"role": "assistant", "content": "a"}, "a"),  # a lone message
        ([{"content": "a"}], "a"),  # unlabelled message
        ([{"role": "assistant", "content": None}], ""),  # empty content
        (42, ""),  # not a completion
    ],
)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


@pytest.mark.parametrize(
    "solution, windows",
    [
        ([3.1, 7.9], [(3.1, 7.9)]),  # one window
        ([[0, 1], [3.1, 7.9]], [(0.0, 1.0), (3.1, 7.9)]),  # several windows
        ("[3.1, 7.9]", [(3.1, 7.9)]),  # JSON text
        ("[[0, 1], [3.1, 7.9]]", [(0.0, 1.0), (3.1, 7.9)]),  # JSON windows
        ("<answer>3.1 to 7.9</answer>", [(3.1, 7.9)]),  # answer string
        ([True, False], []),  # booleans are not times
        ([3.1, math.inf], []),  # non-finite
        ("[" * 100_000, []),  # malformed deep JSON
        (None, []),  # missing
    ],
)
def test_solution_windows(solution, windows):
    assert solution_windows(solution) == windows


def test_registry():
    # The paper's rewards are there under their names; a researcher's own rewards may be added beside them (the
    # README's recipe), so the test checks these, not the whole list.
    assert {"iou", "format", "tiou"} <= set(REWARD_FUNCS)
    assert get_reward_funcs(["iou", "format"]) == [iou_reward, format_reward]
    assert get_reward_funcs("tiou") == [tiou_reward]


@pytest.mark.parametrize("names", [["iou", "accuracy"], [], None])
def test_unknown_reward_lists_known_names(names):
    with pytest.raises(ValueError, match=re.escape(", ".join(sorted(REWARD_FUNCS)))):
        get_reward_funcs(names)


def test_module_docstring_example_runs():
    # The "how to add a reward" example in the module docstring is a doctest; it leaves the registry as it found it.
    before = dict(REWARD_FUNCS)
    assert doctest.testmod(open_r1.rewards).failed == 0
    assert REWARD_FUNCS == before


def readme_reward():
    """The reward of the README's "How to add a reward" section, defined from the README's own code block."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## How to add a reward", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    definition = block.split("\n\n\nREWARD_FUNCS", 1)[0]
    namespace = dict(vars(open_r1.rewards))
    exec(definition, namespace)  # noqa: S102 - the project's own README
    (name,) = [n for n in namespace if n.endswith("_reward") and n not in vars(open_r1.rewards)]
    return name.removesuffix("_reward"), namespace[name]


def test_following_the_readme_recipe_keeps_the_suite_green(monkeypatch):
    """The README's example reward registered under the README's name (what a researcher does in rewards.py): the
    registry, the unknown-name message, the doctest and the reward contract below all still hold."""
    name, func = readme_reward()
    assert name == "short_answer"
    monkeypatch.setitem(REWARD_FUNCS, name, func)
    test_registry()
    test_unknown_reward_lists_known_names(["accuracy"])
    test_module_docstring_example_runs()
    assert REWARD_FUNCS[name] is func  # the doctest did not remove the researcher's reward
    test_no_input_makes_a_reward_raise_or_leave_unit_interval()
    test_odd_batch_objects_never_raise()


def test_rewards_fast_on_huge_garbage():
    rng = random.Random(0)
    garbage = "".join(rng.choice("0123456789 .-to<>/answerthink\n") for _ in range(1_000_000))
    completions = [garbage, "<think>" + garbage + "</think><answer>" + garbage + "</answer>", "<answer>" * 100_000]
    t0 = time.perf_counter()
    for func in REWARD_FUNCS.values():
        rewards = func(completions, solution=[[1.0, 2.0]] * 3, duration=[10.0] * 3)
        assert len(rewards) == 3 and all(0.0 <= r <= 1.0 for r in rewards)
    assert time.perf_counter() - t0 < 5.0


# Text built from the pieces rewards look for, so that examples reach the parsing paths, not only random noise.
_pieces = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", " to ", " and ", "-", "–", "s", " seconds", ".", ":"]
)
_numbers = st.one_of(st.integers(-5, 10**30), st.floats(allow_nan=True, allow_infinity=True)).map(str)
TEXT = st.one_of(st.text(), st.lists(st.one_of(_pieces, _numbers, st.text(max_size=5)), max_size=20).map("".join))
ODD = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT, st.binary(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.sampled_from(["role", "content", "type", "text", "assistant"]), children, max_size=3),
    ),
    max_leaves=10,
)
COMPLETION = st.one_of(TEXT, TEXT.map(assistant), ODD.map(assistant), ODD)
SOLUTION = st.one_of(
    st.tuples(st.floats(), st.floats()).map(list),
    st.lists(st.tuples(st.floats(), st.floats()).map(list), max_size=3),
    TEXT,
    ODD,
)
DURATION = st.one_of(st.floats(), st.integers(), st.none(), TEXT, ODD)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.tuples(COMPLETION, SOLUTION, DURATION), min_size=1, max_size=4))
def test_no_input_makes_a_reward_raise_or_leave_unit_interval(data):
    completions = [c for c, _, _ in data]
    solution = [s for _, s, _ in data]
    duration = [d for _, _, d in data]
    for name, func in REWARD_FUNCS.items():
        rewards = func(completions, solution=solution, duration=duration)
        assert len(rewards) == len(completions), name
        assert all(type(r) is float and 0.0 <= r <= 1.0 for r in rewards), (name, rewards)


@settings(max_examples=100, deadline=None)
@given(completions=ODD, solution=ODD, duration=ODD)
def test_odd_batch_objects_never_raise(completions, solution, duration):
    # Not even the batch containers are trusted: a reward returns a list of floats in [0, 1] whatever it gets.
    for func in REWARD_FUNCS.values():
        rewards = func(completions, solution=solution, duration=duration)
        assert isinstance(rewards, list)
        assert all(type(r) is float and 0.0 <= r <= 1.0 for r in rewards)
