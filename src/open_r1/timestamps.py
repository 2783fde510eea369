"""How the model is told *when* each part of the video happens: ``mrope`` (the paper's) or ``interleaved`` text.

``mrope`` (the default, TimeZero's): the video is one block of ``<|video_pad|>`` tokens and time lives only in the
temporal axis of Qwen2.5-VL's 3-D rope positions (:mod:`open_r1.positions`).

``interleaved`` (TimeLens, arXiv 2512.14698, Sec. 4; Qwen3-VL does the same natively): before the tokens of each
temporal patch (``temporal_patch_size`` = 2 frames) the prompt holds its sampling time as text, and the question
starts with :data:`TIMESTAMP_SENTENCE`. A clip of three patches at 2 fps reads::

    <0.2 seconds><|vision_start|>(patch 0 tokens)<|vision_end|><1.2 seconds><|vision_start|>(patch 1)<|vision_end|>...

- **Times.** A patch's time is the mean of its frames' times in the source (``frame_indices / source_fps``, the
  frames the cache holds; ``index / sample_fps`` for a clip without them), written with one decimal, as Qwen3-VL's
  processor writes ``<t seconds>``. An odd frame count is padded with the last frame (the processor repeats it), so
  the last patch's time is that frame's.
- **One vision pass.** Qwen2.5-VL's vision tower attends only within a temporal patch (full-attention layers
  within one patch's ``h x w`` tokens, window layers within windows of one patch), so the features of the whole
  ``(T, H, W)`` grid, encoded once, are exactly the features of the ``T`` patches; only the placeholder tokens are
  split. The model's ``video_grid_thw`` keeps one ``(T, H, W)`` row per video.
- **Positions.** The reference rule (:func:`open_r1.positions.reference_rope_index`) is applied to the interleaved
  sequence as it stands: each patch is a vision block of its own (grid ``(1, H, W)``: every token at the block's
  start on the time axis, rows and columns on the others) and the text after it starts at the block's largest
  position + 1. The time is in the text, not in the temporal axis (Qwen3-VL's layout).

The choice travels with the prompt: :func:`open_r1.prompts.build_conversation` writes it into the conversation's
video item (``{"type": "video", "timestamps": "interleaved"}``), so every path that encodes a prompt
(:func:`open_r1.modeling.encode_batch`: GRPO, the warm start, data selection, evaluation) lays it out the same way.
Training records it in the checkpoint (:data:`PROMPT_FORMAT_FILE`); evaluation, data selection and training from that
checkpoint refuse a different ``--timestamps`` unless ``--allow_format_mismatch``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

TIMESTAMP_MODES = ("mrope", "interleaved")
DEFAULT_TIMESTAMPS = "mrope"
# The sentence TimeLens adds to the question when the timestamps are interleaved (their prompt, verbatim: it is what
# their model was trained and evaluated with).
TIMESTAMP_SENTENCE = (
    "You are given a video with multiple frames. The numbers before each video frame indicate its sampling "
    "timestamp (in seconds)."
)
# Saved next to a trained model's weights: the prompt settings it was trained with.
PROMPT_FORMAT_FILE = "prompt_format.json"


def check_timestamps(mode: str) -> str:
    if mode not in TIMESTAMP_MODES:
        raise ValueError(f"timestamps must be one of {', '.join(TIMESTAMP_MODES)}, got {mode!r}")
    return mode


def patch_times(clip, temporal_patch_size: int = 2) -> list[float]:
    """Seconds at the centre of each temporal patch of ``clip`` (mean of its frames' source times)."""
    count = clip.num_frames
    indices = list(clip.frame_indices or [])
    if len(indices) == count and clip.source_fps > 0:
        times = [index / clip.source_fps for index in indices]
    else:
        times = [index / clip.sample_fps for index in range(count)]
    if count % temporal_patch_size:
        times += [times[-1]] * (temporal_patch_size - count % temporal_patch_size)
    return [
        sum(times[start : start + temporal_patch_size]) / temporal_patch_size
        for start in range(0, len(times), temporal_patch_size)
    ]


def timestamp_text(seconds: float) -> str:
    """The text before one temporal patch, e.g. ``<12.5 seconds>``."""
    return f"<{seconds:.1f} seconds>"


def interleaved_video_text(times: Sequence[float], tokens_per_patch: int, start: str, pad: str, end: str) -> str:
    """The placeholder text of one video with a timestamp before each temporal patch."""
    block = start + pad * tokens_per_patch + end
    return "".join(timestamp_text(seconds) + block for seconds in times)


def write_prompt_format(folder: str | Path, timestamps: str, no_think: bool, video_first: bool) -> Path:
    """Record the prompt settings a model is trained with in ``folder`` (a checkpoint or the output folder)."""
    path = Path(folder) / PROMPT_FORMAT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"timestamps": timestamps, "no_think": bool(no_think), "video_first": bool(video_first)}
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def prompt_format_callback(timestamps: str, no_think: bool, video_first: bool):
    """A ``TrainerCallback`` that writes the prompt settings into every checkpoint the Trainer saves (main process),
    so that a checkpoint evaluated or trained on is checked like the final folder."""
    from transformers import TrainerCallback

    class PromptFormatCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_prompt_format(folder, timestamps, no_think, video_first)
            return control

    return PromptFormatCallback()


def read_prompt_format(model_path: str | Path) -> dict | None:
    """The prompt settings recorded in a checkpoint, or None (a base model, or one trained before they were kept)."""
    path = Path(model_path) / PROMPT_FORMAT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); delete it or restore it") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    return record


def check_prompt_format(model_path: str | Path | None, timestamps: str, allow: bool = False) -> None:
    """Raise when ``--timestamps`` does not fit the checkpoint's recorded format (nothing known: no check)."""
    if model_path is None or allow or not Path(model_path).is_dir():
        return
    record = read_prompt_format(model_path)
    if record is None or record.get("timestamps", DEFAULT_TIMESTAMPS) == timestamps:
        return
    raise ValueError(
        f"{model_path} was trained with --timestamps {record.get('timestamps')} (its {PROMPT_FORMAT_FILE}), but this "
        f"run asks for --timestamps {timestamps}: the model would see a prompt layout it was not trained on. Pass "
        f"--timestamps {record.get('timestamps')}, or --allow_format_mismatch true to run it anyway"
    )
