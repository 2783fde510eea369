from pathlib import Path

import pytest

import open_r1
from open_r1.prompts import QUESTION_TEMPLATE, QUESTION_TEMPLATE_NO_THINK, build_conversation, build_question

ASSETS = Path(open_r1.__file__).parent / "assets" / "qwen2_5_vl_7b_instruct"

# The wording the released TimeZero checkpoints were trained on (issue 2), written out here on purpose: a change to
# the template must show up as a failing test, not as silently worse scores.
PAPER_QUESTION = """To accurately pinpoint the event "a person opens the door" in the video, determine the precise time period of the event.

Output your thought process within the <think> </think> tags, including analysis with either specific timestamps (xx.xx) or time ranges (xx.xx to xx.xx) in <timestep> </timestep> tags.

Then, provide the start and end times (in seconds, precise to two decimal places) in the format "start time to end time" within the <answer> </answer> tags. For example: "12.54 to 17.83"."""  # noqa: E501

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.mark.parametrize(
    "query",
    [
        "a person opens the door",  # already normalised
        "A person opens the door.",  # as written in the Charades-STA annotations
        " a person opens the door.",  # leading space (ActivityNet style)
    ],
)
def test_question_is_the_paper_wording(query):
    assert build_question(query) == PAPER_QUESTION


def test_template_placeholder():
    assert QUESTION_TEMPLATE.replace("[EVENT]", "a person opens the door") == PAPER_QUESTION
    assert QUESTION_TEMPLATE.count("[EVENT]") == QUESTION_TEMPLATE_NO_THINK.count("[EVENT]") == 1


def test_no_think_variant_asks_only_for_the_answer():
    question = build_question("A person opens the door.", think=False)
    assert question.startswith('To accurately pinpoint the event "a person opens the door" in the video')
    assert "<think>" not in question and "<timestep>" not in question
    assert "within the <answer> </answer> tags" in question
    assert '"12.54 to 17.83"' in question  # same answer format as the reasoning prompt


@pytest.mark.parametrize(
    "video_first, kinds",
    [
        (False, ["text", "video"]),  # the paper: question, then video
        (True, ["video", "text"]),  # video first
    ],
)
def test_conversation_order(video_first, kinds):
    messages = build_conversation("A person opens the door.", video_first=video_first)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert [part["type"] for part in messages[0]["content"]] == kinds
    text = next(part for part in messages[0]["content"] if part["type"] == "text")
    assert text["text"] == PAPER_QUESTION


def test_conversation_defaults_reproduce_the_paper():
    assert build_conversation("A person opens the door.") == [
        {"role": "user", "content": [{"type": "text", "text": PAPER_QUESTION}, {"type": "video"}]}
    ]


@pytest.fixture(scope="module")
def processor():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoProcessor.from_pretrained(ASSETS)


@pytest.mark.parametrize(
    "video_first, think, user_turn",
    [
        (False, True, PAPER_QUESTION + VIDEO),  # the paper's prompt
        (True, True, VIDEO + PAPER_QUESTION),  # video first
        (False, False, None),  # no-thinking variant, text first
    ],
)
def test_renders_through_the_bundled_chat_template(processor, video_first, think, user_turn):
    messages = build_conversation("A person opens the door.", think=think, video_first=video_first)
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if user_turn is None:
        user_turn = build_question("a person opens the door", think=False) + VIDEO
    assert rendered == f"{SYSTEM}<|im_start|>user\n{user_turn}<|im_end|>\n<|im_start|>assistant\n"
    assert rendered.count(VIDEO) == 1
    assert rendered.count("<|video_pad|>") == 1 and "<|image_pad|>" not in rendered
