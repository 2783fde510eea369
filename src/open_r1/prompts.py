"""The one question shown to the model, shared by training and evaluation.

The released TimeZero checkpoints were trained on `QUESTION_TEMPLATE` verbatim: a single user message in which
`[EVENT]` is replaced by the normalised query and the text comes before the video. Changing a character here changes
what the model sees, so both `grpo_video.py` and `evaluation/runner.py` build their messages through `build_conversation`.
"""

from open_r1.data import normalize_query
from open_r1.timestamps import DEFAULT_TIMESTAMPS, TIMESTAMP_SENTENCE, check_timestamps

__all__ = [
    "EVENT_PLACEHOLDER",
    "QUESTION_TEMPLATE",
    "QUESTION_TEMPLATE_NO_THINK",
    "build_answer",
    "build_conversation",
    "build_question",
]

EVENT_PLACEHOLDER = "[EVENT]"

# The paper's prompt (TimeZero, Sec. 3), reasoning in <think> then the span in <answer>.
QUESTION_TEMPLATE = (
    'To accurately pinpoint the event "[EVENT]" in the video, determine the precise time period of the event.\n'
    "\n"
    "Output your thought process within the <think> </think> tags, including analysis with either specific "
    "timestamps (xx.xx) or time ranges (xx.xx to xx.xx) in <timestep> </timestep> tags.\n"
    "\n"
    "Then, provide the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time" within the <answer> </answer> tags. For example: "12.54 to 17.83".'
)

# The "RL w/o CoT" / "Test CoT" ablations (paper Table 3): same task and answer format, no reasoning requested.
QUESTION_TEMPLATE_NO_THINK = (
    'To accurately pinpoint the event "[EVENT]" in the video, determine the precise time period of the event.\n'
    "\n"
    "Provide only the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time" within the <answer> </answer> tags, without any other text. For example: '
    '"12.54 to 17.83".'
)


def build_question(query: str, think: bool = True) -> str:
    """Fill the question template with a query.

    Args:
        query: The event description. It is normalised with `open_r1.data.normalize_query` (strip, lower-case,
            drop one final '.'), as in the paper's training data, so raw and normalised queries give the same text.
        think: Ask for reasoning in `<think>` tags before the answer (the paper's default). `False` selects the
            no-reasoning variant of Table 3.

    Returns:
        The question text.
    """
    template = QUESTION_TEMPLATE if think else QUESTION_TEMPLATE_NO_THINK
    return template.replace(EVENT_PLACEHOLDER, normalize_query(query))


def build_conversation(
    query: str, think: bool = True, video_first: bool = False, timestamps: str = DEFAULT_TIMESTAMPS
) -> list[dict]:
    """The chat messages for one query, ready for `processor.apply_chat_template`.

    The video itself is not embedded: the message holds a `{"type": "video"}` placeholder that the chat template
    renders as `<|vision_start|><|video_pad|><|vision_end|>`, and the frames are passed to the processor separately.

    Args:
        query: The event description (normalised here, see `build_question`).
        think: Request `<think>` reasoning (paper default) or only the answer.
        video_first: Put the video before the text. The paper puts the text first (the default, which the released
            checkpoints expect); the video first is known to help the untrained base model.
        timestamps: "mrope" (the paper's: time only in the rope positions) or "interleaved" (the question starts with
            `open_r1.timestamps.TIMESTAMP_SENTENCE`, and the video item carries `"timestamps": "interleaved"`, which
            `open_r1.modeling.encode_batch` reads to put each temporal patch's time before its tokens).

    Returns:
        `[{"role": "user", "content": [text part, video part]}]`, parts ordered per `video_first`.
    """
    question = build_question(query, think=think)
    video = {"type": "video"}
    if check_timestamps(timestamps) == "interleaved":
        question = f"{TIMESTAMP_SENTENCE} {question}"
        video["timestamps"] = timestamps
    text = {"type": "text", "text": question}
    content = [video, text] if video_first else [text, video]
    return [{"role": "user", "content": content}]


def build_answer(start: float, end: float, think: bool = True, reasoning: str = "", decimals: int = 2) -> str:
    """The assistant text of a supervised warm start, in the answer format the question asks for.

    Args:
        start: Start of the ground-truth window in seconds.
        end: End of the window in seconds.
        think: Include the `<think>` block (the format reward, paper eq. 3, requires it).
        reasoning: Text inside `<think>`; empty by default (annotations carry no reasoning, and RL is what the paper
            relies on to produce it).
        decimals: Digits after the point; 2 by default, as the question asks. 0 writes whole seconds (``5 to 12``),
            which the answer parser and the rewards read the same way; fewer tokens to learn for a tiny model.

    Returns:
        E.g. `"<think></think><answer>5.00 to 11.60</answer>"`.
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    answer = f"<answer>{start:.{decimals}f} to {end:.{decimals}f}</answer>"
    return f"<think>{reasoning}</think>{answer}" if think else answer
