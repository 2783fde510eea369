"""Argument dataclasses shared by preprocessing, training and evaluation.

Every value that preprocessing, training and evaluation must agree on (frame rate, pixel budgets) is defined once
here; the three entry points read these defaults instead of repeating them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from open_r1.decoding import check_decode_mode, check_rollout_weights
from open_r1.positions import DEFAULT_POSITION_LAYOUT, POSITION_LAYOUTS
from open_r1.timestamps import check_timestamps

# The paper's video settings (TimeZero section 4.1): 2 fps, at most 3584*28*28 pixels for the whole clip and at least
# 16*28*28 pixels per frame. The frame cap is qwen-vl-utils' FPS_MAX_FRAMES.
DEFAULT_FPS = 2.0
DEFAULT_TOTAL_PIXELS = 3584 * 28 * 28
DEFAULT_MIN_PIXELS = 16 * 28 * 28
DEFAULT_MAX_FRAMES = 768


# Old spellings of the video flags (preprocessing used them), accepted everywhere as aliases.
VIDEO_FLAG_ALIASES = {
    "--fps": "--video_fps",
    "--total_pixels": "--video_total_pixels",
    "--min_pixels": "--video_min_pixels",
    "--max_frames": "--video_max_frames",
}
_PIXEL_FLAGS = ("--video_total_pixels", "--video_min_pixels")


def parse_int_expression(text) -> int:
    """``"3584*28*28"`` -> 2809856. Accepts a product of positive integers (what the paper writes), nothing else."""
    if isinstance(text, int):
        return text
    factors = str(text).replace(" ", "").split("*")
    if not all(factor.isdigit() for factor in factors):
        raise argparse.ArgumentTypeError(f"expected an integer or a product like 3584*28*28, got {text!r}")
    value = 1
    for factor in factors:
        value *= int(factor)
    return value


def normalize_video_flags(argv: list[str]) -> list[str]:
    """One spelling of the video flags for every entry point: old names become the ``--video_*`` names, and pixel
    budgets written as products (``3584*28*28``) become integers."""
    out: list[str] = []
    expect_pixels = False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in VIDEO_FLAG_ALIASES:
            name = VIDEO_FLAG_ALIASES[name]
        if expect_pixels:
            arg, expect_pixels = str(parse_int_expression(arg)), False
        elif eq and name in _PIXEL_FLAGS:
            arg = f"{name}={parse_int_expression(value)}"
        else:
            arg = name + eq + value
            expect_pixels = not eq and name in _PIXEL_FLAGS
        out.append(arg)
    return out


def non_finite_flags(args) -> list[str]:
    """The numeric fields of a dataclass of flags that hold NaN or inf (directly or inside a list), as ``--name value``."""
    bad = []
    for spec in dataclasses.fields(args):
        value = getattr(args, spec.name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            bad.append(f"--{spec.name} {value}")
    return bad


def check_finite(args) -> None:
    """Refuse NaN and inf in any numeric flag, naming it: a NaN compares false with every bound, so it would pass the
    range checks (``--video_fps nan`` failed every video; ``--min_reward_std nan`` kept every query)."""
    bad = non_finite_flags(args)
    if bad:
        raise ValueError(f"{', '.join(bad)}: numeric flags must be finite numbers")


@dataclass(frozen=True)
class VideoSettings:
    """How a raw video becomes model frames: sampling rate, pixel budget and frame cap."""

    fps: float = DEFAULT_FPS
    total_pixels: int = DEFAULT_TOTAL_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES

    def __post_init__(self):
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.min_pixels <= 0 or self.total_pixels < self.min_pixels:
            raise ValueError(f"need 0 < min_pixels <= total_pixels, got {self.min_pixels} and {self.total_pixels}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {self.max_frames}")


@dataclass
class VideoArguments:
    """Command-line form of :class:`VideoSettings` (the same flags in preprocess, train and evaluate)."""

    video_fps: float = field(default=DEFAULT_FPS, metadata={"help": "Frames sampled per second of video."})
    video_total_pixels: int = field(
        default=DEFAULT_TOTAL_PIXELS,
        metadata={"help": "Pixel budget for all frames of one video (paper: 3584*28*28)."},
    )
    video_min_pixels: int = field(
        default=DEFAULT_MIN_PIXELS, metadata={"help": "Minimum pixels per frame (paper: 16*28*28)."}
    )
    video_max_frames: int = field(default=DEFAULT_MAX_FRAMES, metadata={"help": "Upper bound on sampled frames."})

    def to_settings(self) -> VideoSettings:
        return VideoSettings(
            fps=self.video_fps,
            total_pixels=self.video_total_pixels,
            min_pixels=self.video_min_pixels,
            max_frames=self.video_max_frames,
        )


@dataclass
class VideoDataArguments(VideoArguments):
    """Where the queries and their videos come from: shared by training and evaluation."""

    annotation_file: str | None = field(
        default=None,
        metadata={"help": "Custom annotation file (TimeZero json, TALL txt, ActivityNet json) instead of a split."},
    )
    video_dir: str | None = field(default=None, metadata={"help": "Folder of raw videos, decoded on the fly."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Preprocessing cache (python -m open_r1.preprocess); read before --video_dir."}
    )
    position_layout: str = field(
        default=DEFAULT_POSITION_LAYOUT,
        metadata={
            "help": "3-D rope positions: 'reference' (Qwen2.5-VL's own layout: text after a video starts at the "
            "video's largest position + 1) or 'transformers' (the installed library's, for comparison)."
        },
    )
    timestamps: str = field(
        default="mrope",
        metadata={
            "help": "How the prompt tells time: 'mrope' (the paper's: only the 3-D rope positions) or 'interleaved' "
            "(TimeLens: each temporal patch's time as text before its tokens, and a sentence saying so; see "
            "open_r1.timestamps). Recorded in a trained checkpoint."
        },
    )
    allow_format_mismatch: bool = field(
        default=False,
        metadata={"help": "Run a checkpoint with a --timestamps other than the one it was trained with."},
    )

    shared_work: bool = field(
        default=True,
        metadata={
            "help": "Do shared work once: encode each distinct video once (per rollout in training, per run in "
            "evaluation), sample a group's completions from one prompt copy, and score a group's completions in one "
            "packed sequence (sdpa; a flash_attention_2 model sends its packed calls to sdpa). --shared_work false "
            "runs the per-row path (same results, for comparison)."
        },
    )
    decode: str = field(
        default="auto",
        metadata={
            "help": "How rollouts (training) and answers (evaluation) are decoded: auto (a static KV cache and a "
            "compiled decode step on CUDA, eager elsewhere), static (everywhere) or eager (dynamic cache, eager "
            "forward). Same tokens under a seed; see open_r1.decoding."
        },
    )

    def __post_init__(self):
        check_finite(self)
        check_decode_mode(self.decode)
        if self.position_layout not in POSITION_LAYOUTS:
            raise ValueError(
                f"position_layout must be one of {', '.join(POSITION_LAYOUTS)}, got {self.position_layout!r}"
            )
        check_timestamps(self.timestamps)
        if self.timestamps == "interleaved" and self.position_layout != "reference":
            raise ValueError(
                "--timestamps interleaved needs --position_layout reference: the installed transformers' layout "
                "expects one block of video tokens per video"
            )


@dataclass
class EvalArguments(VideoDataArguments):
    """Flags of ``evaluate.py`` / :func:`open_r1.evaluation.run_evaluation` (video flags inherited, same as training)."""

    model_base: str | None = field(
        default=None, metadata={"help": "Checkpoint folder (model + processor saved with save_pretrained) or hub id."}
    )
    dataset: str = field(
        default="charades",
        metadata={
            "help": "Dataset: charades, activitynet, charades_cd, charades_cg (bundled), or TimeLens-Bench's "
            "charades_timelens, activitynet_timelens, qvhighlights_timelens (read from $TIMELENS_BENCH_DIR or "
            "data/TimeLens-Bench). A label only with --annotation_file."
        },
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "Split of --dataset (default: charades test, activitynet val_2, charades_cd test_ood, "
            "charades_cg novel_composition)."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where predictions.jsonl, metrics.json and the plot go (default: "
            "outputs/eval/<model name>/<dataset>_<split>[_no_think])."
        },
    )
    batch_size: int = field(
        default=0,
        metadata={
            "help": "Queries per generate() call on each process. 0 (default): picked for the device: 8 on CPU; on "
            "a GPU as many as half its free memory holds KV caches for (at most 64)."
        },
    )
    max_new_tokens: int = field(default=1024, metadata={"help": "Generation budget per answer (thinking included)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding (the paper: greedy)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (only with --do_sample)."})
    repetition_penalty: float | None = field(
        default=None, metadata={"help": "Override the checkpoint's repetition_penalty (Qwen2.5-VL ships 1.05)."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed (sampling only)."})
    no_think: bool = field(
        default=False, metadata={"help": "Ask for the answer without reasoning (paper Table 3, 'Test CoT' off)."}
    )
    video_first: bool = field(default=False, metadata={"help": "Put the video before the question in the prompt."})
    max_queries: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N queries of the split (smoke tests)."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel (default: flash_attention_2 on GPU when installed, else sdpa)."},
    )
    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Delete earlier predictions in --output_dir instead of resuming."}
    )
    num_plot_queries: int = field(default=12, metadata={"help": "Queries drawn as timelines in the plot."})
    rescore: str | None = field(
        default=None, metadata={"help": "Recompute metrics from this predictions.jsonl alone (no model) and exit."}
    )
    protocol: str = field(
        default="timezero",
        metadata={
            "help": "Whose scoring convention gives the numbers at the top of metrics.json: timezero (this project's), "
            "timezero-original, lmms-eval or timelens. Every protocol is computed and kept under 'protocols'; with "
            "--rescore, re-parses the file's raw answers (docs/evaluation.md, 'Scoring protocols')."
        },
    )
    allow_mixed: bool = field(
        default=False,
        metadata={
            "help": "With --rescore: score a file whose lines come from runs with different settings, or that "
            "scores a query twice differently (first line kept). By default such a file is refused."
        },
    )
    allow_missing_videos: bool = field(
        default=False,
        metadata={
            "help": "Evaluate even when some videos are neither cached nor on disk (they score IoU 0 as "
            "missing_video). By default the run stops before loading the model, with counts and the first ids."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        from open_r1.evaluation.protocols import check_protocol

        check_protocol(self.protocol)
        if self.rescore is None and self.model_base is None:
            raise ValueError("give --model_base (a checkpoint to evaluate) or --rescore predictions.jsonl")
        if self.rescore is None and self.cache_dir is None and self.video_dir is None:
            raise ValueError("give --video_dir (raw videos) and/or --cache_dir (preprocessed videos)")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be at least 1 (or 0: picked for the device), got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be at least 1, got {self.max_queries}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        self.to_settings()  # fails fast on impossible video settings


@dataclass
class GRPOScriptArguments(VideoDataArguments):
    """Data, reward and video flags of the training entry point (``python -m open_r1.grpo_video``).

    Optimisation flags come from ``trl.GRPOConfig`` and model flags from ``trl.ModelConfig``.
    """

    dataset: str = field(
        default="charades",
        metadata={
            "help": "Dataset to train on: charades or activitynet (bundled), or a TimeLens-Bench name with --split "
            "test (ignored with --annotation_file)."
        },
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset to train on."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["iou", "format"],
        metadata={"help": "Reward names from open_r1.rewards.REWARD_FUNCS (paper: iou format)."},
    )
    no_think: bool = field(default=False, metadata={"help": "Train without the <think> reasoning request."})
    video_first: bool = field(default=False, metadata={"help": "Put the video before the question in the prompt."})
    freeze_vision_tower: bool = field(
        default=True,
        metadata={
            "help": "Train only the language model (the paper). --freeze_vision_tower false trains the encoder."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N queries only (smoke tests)."}
    )
    rollout_weights: str = field(
        default="auto",
        metadata={
            "help": "Weights the rollouts decode with on the fp32-master path (no DeepSpeed, --bf16 true): auto/bf16 "
            "(one bf16 copy of the linear layers per rollout, the same tokens as autocast's cast per call) or master "
            "(autocast casts every layer's weights on every token). See open_r1.decoding.RolloutWeights."
        },
    )
    whole_groups: bool = field(
        default=True,
        metadata={
            "help": "Under gradient accumulation, shuffle a rollout's groups rather than its rows before cutting "
            "micro-batches, so each micro-batch holds whole groups (one packed sequence each; same loss and "
            "gradients). --whole_groups false: TRL's row shuffle."
        },
    )
    early_stop_patience: int = field(
        default=0,
        metadata={
            "help": "Stop (and save) when neither the windowed mean IoU reward nor the within-group reward std has "
            "improved for this many logging steps (TimeLens's rule; 0: off, the paper's run). See "
            "open_r1.signals.EarlyStopOnSignal."
        },
    )
    early_stop_window: int = field(
        default=10, metadata={"help": "Logging steps averaged by --early_stop_patience's comparison."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.early_stop_patience < 0 or self.early_stop_window < 1:
            raise ValueError(
                f"early_stop_patience must be >= 0 and early_stop_window >= 1, got {self.early_stop_patience} and "
                f"{self.early_stop_window}"
            )
        if self.cache_dir is None and self.video_dir is None:
            raise ValueError("give --video_dir (raw videos) and/or --cache_dir (preprocessed videos)")
        if not self.reward_funcs:
            raise ValueError("give at least one reward in --reward_funcs")
        check_rollout_weights(self.rollout_weights)
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be at least 1, got {self.max_train_samples}")
        self.to_settings()  # fails fast on impossible video settings
