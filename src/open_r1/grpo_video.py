"""Training entry point: recipe -> checks -> data -> model -> rewards -> VideoGRPOTrainer -> checkpoint.

    python -m open_r1.grpo_video --config recipes/charades/grpo_qwen2_5_vl_7b.yaml --cache_dir cache/charades
    torchrun --nproc_per_node 4 -m open_r1.grpo_video --config ... --per_device_train_batch_size 8  # CLI overrides

Everything that can be checked without the model (annotation files, a cached or raw video for every row, reward
names, batch-size arithmetic) is checked first, so a typo fails in seconds instead of after loading 7B weights.
The output folder (and every checkpoint-N) holds the model and the processor: ``evaluate.py --model_base`` takes it.
With ``--use_peft`` it holds a LoRA adapter instead (the paper trains the full LLM); merge it before evaluating.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, ModelConfig, TrlParser, get_peft_config

from open_r1.configs import GRPOScriptArguments

logger = logging.getLogger(__name__)

NUM_MISSING_SHOWN = 5


def load_rows(script_args: GRPOScriptArguments) -> list[dict]:
    """The training queries: a bundled split by name, or a custom annotation file."""
    from open_r1.data import load_annotations, load_split

    if script_args.annotation_file is not None:
        if not Path(script_args.annotation_file).is_file():
            raise FileNotFoundError(f"annotation file not found: {Path(script_args.annotation_file).resolve()}")
        rows = load_annotations(script_args.annotation_file)
    else:
        rows = load_split(script_args.dataset, script_args.split)
    if script_args.max_train_samples is not None:
        rows = rows[: script_args.max_train_samples]
    if not rows:
        raise ValueError("no training queries")
    return rows


def video_source(script_args: GRPOScriptArguments):
    from open_r1.video import VideoSource

    return VideoSource(script_args.to_settings(), cache_dir=script_args.cache_dir, video_dir=script_args.video_dir)


def check_videos(rows: list[dict], source) -> list[dict]:
    """The rows to train on, after checks that need no model.

    Fails with a count and the first few ids when any row's video is neither cached nor on disk, or (raw files only:
    a cheap probe that decodes one frame) cannot be decoded. Drops, with a count, the rows whose video's frames end
    before their ground truth starts (a truncated file cached with ``--accept_short_videos``): a reward against a
    window the model cannot see teaches nothing.
    """
    from open_r1.video import VideoDecodeError, describe_missing

    message = describe_missing(source, [row["video_id"] for row in rows], shown=NUM_MISSING_SHOWN)
    if message:
        raise FileNotFoundError(
            f"{message} Run `python -m open_r1.preprocess` (or fix --video_dir / --cache_dir / the video settings)."
        )
    durations, broken = {}, {}
    for video_id in dict.fromkeys(row["video_id"] for row in rows):
        try:
            durations[video_id] = source.known_duration(video_id)
        except VideoDecodeError as error:
            broken[video_id] = str(error)
    if broken:
        first = "; ".join(f"{video_id}: {reason}" for video_id, reason in list(broken.items())[:NUM_MISSING_SHOWN])
        raise ValueError(f"{len(broken)} videos cannot be decoded ({first}); preprocess them to see every failure")
    kept, dropped = [], []
    for row in rows:
        end = durations.get(row["video_id"])
        start = min(float(window[0]) for window in row["windows"])
        (dropped if end is not None and start >= end else kept).append(row)
    if dropped:
        row = dropped[0]
        logger.warning(
            "%d of %d queries dropped: their video ends before the ground truth starts (e.g. %s: frames end at "
            "%.2f s, window %s); truncated files cached with --accept_short_videos?",
            len(dropped), len(rows), row["video_id"], durations[row["video_id"]], row["windows"][0],
        )  # fmt: skip
    if not kept:
        raise ValueError("no query is left to train on: every video ends before its ground truth starts")
    return kept


def check_batch_sizes(training_args: GRPOConfig, num_rows: int, world: int | None = None) -> None:
    """Explain the completion/prompt arithmetic that TRL enforces, in the terms of this task (``world``: processes in
    all, default WORLD_SIZE)."""
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    per_step = training_args.per_device_train_batch_size * world
    generation_batch = training_args.generation_batch_size or per_step * training_args.steps_per_generation
    if generation_batch % training_args.num_generations:
        raise ValueError(
            f"each generation samples {generation_batch} completions (per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size} x {world} processes x steps_per_generation "
            f"{training_args.steps_per_generation}); that must be a multiple of num_generations "
            f"({training_args.num_generations}): batch sizes count completions, not prompts"
        )
    prompts = generation_batch // training_args.num_generations
    if prompts > num_rows:
        raise ValueError(f"one generation needs {prompts} distinct queries but the dataset has {num_rows}")
    logger.info(
        "%d queries per generation x %d completions; %d processes", prompts, training_args.num_generations, world
    )


def build_dataset(rows: list[dict], script_args: GRPOScriptArguments):
    """Rows -> a ``datasets.Dataset`` with the columns the trainer and the rewards read."""
    from datasets import Dataset

    from open_r1.prompts import build_conversation

    think = not script_args.no_think
    return Dataset.from_list(
        [
            {
                "prompt": build_conversation(
                    row["query"], think=think, video_first=script_args.video_first, timestamps=script_args.timestamps
                ),
                "video_id": row["video_id"],
                "query_id": row["query_id"],
                # Reward contract: every ground-truth window (the best-matching one counts).
                "solution": [list(map(float, window)) for window in row["windows"]],
                "duration": float(row["duration"]),
            }
            for row in rows
        ]
    )


def policy_dtypes(model_args: ModelConfig, training_args: GRPOConfig) -> tuple[str | None, str | None]:
    """The dtype to load the trained weights in, and the one for the frozen reference model.

    DeepSpeed keeps fp32 master weights of a bf16 model itself. Without it, AdamW would step the bf16 tensors
    directly, where an update of lr 1e-6 rounds away for most weights (bf16 resolves about 1 part in 256). So the plain
    path loads the trained weights in fp32 and computes in bf16 under autocast (``--bf16 true``), as PyTorch's mixed
    precision does; the reference model, never updated, stays in the requested dtype.
    """
    requested = model_args.dtype
    if training_args.deepspeed or requested not in ("bfloat16", "float16"):
        return requested, None
    logger.info(
        "no DeepSpeed: fp32 master weights (the model is loaded in float32 instead of %s)%s%s",
        requested,
        " with bf16 autocast" if training_args.bf16 else (" with fp16 autocast" if training_args.fp16 else ""),
        # The warm start (SFTConfig) and GRPO with beta 0 have no reference model.
        f"; the reference model stays in {requested}" if getattr(training_args, "beta", 0.0) else "",
    )
    return "float32", requested


def resolve_checkpoint(training_args: GRPOConfig) -> str | None:
    """``--resume_from_checkpoint`` accepts a folder, or ``latest``/``true`` for the newest one in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() in ("latest", "true"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise FileNotFoundError(
                f"no checkpoint-* folder in {Path(training_args.output_dir).resolve()} to resume from"
            )
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"checkpoint folder not found: {Path(value).resolve()}")
    return value


def preflight(script_args, training_args, model_args, world: int | None = None, job: str = "training"):
    """Every check that needs no model, all problems reported together (:mod:`open_r1.preflight`); returns the reward
    functions (training only), the rows, the video source and the checkpoint to resume."""
    from open_r1.preflight import Preflight, model_problem, output_problem
    from open_r1.rewards import get_reward_funcs
    from open_r1.timestamps import check_prompt_format

    checks = Preflight(job)
    checks.add(model_problem(model_args.model_name_or_path))
    checks.run(check_prompt_format, model_args.model_name_or_path, script_args.timestamps,
               script_args.allow_format_mismatch)  # fmt: skip
    checks.add(output_problem(training_args.output_dir))
    checks.run(check_reporting, training_args)
    grpo = hasattr(script_args, "reward_funcs")
    reward_funcs = checks.run(get_reward_funcs, script_args.reward_funcs) if grpo else None
    rows = checks.run(load_rows, script_args)
    source = checks.run(video_source, script_args)
    if rows is not None and source is not None:
        rows = checks.run(check_videos, rows, source)
    if rows is not None and grpo:
        checks.run(check_batch_sizes, training_args, len(rows), world)
    checkpoint = checks.run(resolve_checkpoint, training_args)
    checks.finish()
    return reward_funcs, rows, source, checkpoint


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig, callbacks=None):
    """Train and save; returns the trainer (its ``state.log_history`` holds every logged reward)."""
    from open_r1.trainer import VideoGRPOTrainer

    reward_funcs, rows, source, checkpoint = preflight(script_args, training_args, model_args)
    if training_args.remove_unused_columns:
        logger.info("remove_unused_columns forced to False: the rewards read the solution and duration columns")
        training_args.remove_unused_columns = False
    dataset = build_dataset(rows, script_args)
    logger.info("%d training queries over %d videos", len(rows), len({r["video_id"] for r in rows}))

    model, processor, reference_dtype = load_for_training(script_args, training_args, model_args)
    if script_args.early_stop_patience:
        from open_r1.signals import early_stop_callback

        callbacks = [*(callbacks or []), early_stop_callback(script_args.early_stop_patience,
                                                             script_args.early_stop_window)]  # fmt: skip
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        video_loader=source.get,
        freeze_vision_tower=script_args.freeze_vision_tower,
        position_layout=script_args.position_layout,
        reference_dtype=reference_dtype,
        shared_work=script_args.shared_work,
        whole_groups=script_args.whole_groups,
        decode=script_args.decode,
        rollout_weights=script_args.rollout_weights,
        callbacks=callbacks,
        peft_config=get_peft_config(model_args),  # None unless --use_peft
    )
    return train_and_save(trainer, processor, checkpoint, script_args)


def load_for_training(script_args, training_args, model_args):
    """The model to train (fp32 master weights without DeepSpeed, the chosen position layout), its processor, and the
    dtype of a frozen reference model."""
    from open_r1.modeling import load_model, load_processor

    dtype, reference_dtype = policy_dtypes(model_args, training_args)
    model = load_model(
        model_args.model_name_or_path,
        attn_implementation=model_args.attn_implementation,
        dtype=dtype,
        position_layout=script_args.position_layout,
    )
    return model, load_processor(model_args.model_name_or_path), reference_dtype


def train_and_save(trainer, processor, checkpoint: str | None, script_args=None):
    """Train (resuming from ``checkpoint``), then save model and processor together, so `evaluate.py --model_base
    OUTPUT_DIR` (and GRPO after a warm start) can load the folder. The prompt settings of ``script_args``
    (``--timestamps``, ``--no_think``, ``--video_first``) go into the folder and every checkpoint
    (:data:`open_r1.timestamps.PROMPT_FORMAT_FILE`)."""
    from open_r1.timestamps import prompt_format_callback, write_prompt_format

    prompt_format = None
    if script_args is not None:
        prompt_format = (script_args.timestamps, script_args.no_think, script_args.video_first)
        trainer.add_callback(prompt_format_callback(*prompt_format))
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(trainer.args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(trainer.args.output_dir)
        if prompt_format is not None:
            write_prompt_format(trainer.args.output_dir, *prompt_format)
        readable_by_others(trainer.args.output_dir)
    return trainer


def readable_by_others(folder) -> None:
    """Give the saved files the permissions the umask allows (safetensors writes owner-only files, 0600), so that a
    checkpoint on a shared disk can be evaluated by the group's other users."""
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o777
            wanted = mode | (0o644 & ~mask)
            if wanted != mode:
                path.chmod(wanted)


class _QuietAccumulationMismatch(logging.Filter):
    """accelerate warns "Gradient accumulation steps mismatch" on every DeepSpeed run: the Trainer counts
    accumulation itself and fills DeepSpeed's "auto" with the same --gradient_accumulation_steps, so the two agree in
    effect, and the line only alarms."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Gradient accumulation steps mismatch" not in record.getMessage()


def check_reporting(training_args) -> None:
    """Fail before the model loads when a requested logger cannot start (wandb without a key or the package), with the
    fix in the message; otherwise it would fail, or prompt for a key, after minutes of loading."""
    report_to = training_args.report_to or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if "wandb" not in report_to and "all" not in report_to:
        return
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        raise ValueError(
            "--report_to wandb needs the wandb package: pip install wandb (or --report_to none)"
        ) from error
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    if os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace"):
        return
    raise ValueError(
        "--report_to wandb but no wandb API key is configured (no WANDB_API_KEY, no api.wandb.ai entry in "
        f"{netrc}): run `wandb login`, set WANDB_API_KEY, set WANDB_MODE=offline (logs kept locally, "
        "`wandb sync` later), or pass --report_to none"
    )


def use_gloo_for_cpu_deepspeed(argv: list[str]) -> list[str]:
    """DeepSpeed on CPU processes (tests, debugging without GPUs) needs a gloo process group set up before parsing.

    TrainingArguments leaves DeepSpeed's backend to its CPU accelerator, which is not gloo, and ``--use_cpu`` would
    drop DeepSpeed altogether; configuring accelerate's state first and telling the trainer to reuse it works.
    """
    import torch

    wants_deepspeed = any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
    if not wants_deepspeed or torch.cuda.is_available() or "WORLD_SIZE" not in os.environ:
        return argv
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return [*argv, "--accelerator_config", json.dumps({"use_configured_state": True})]


def parse_cli(dataclass_types: tuple, argv: list[str] | None) -> tuple:
    """Logging, gloo for DeepSpeed on CPU processes, then the (script, training, model) arguments of an entry point
    from ``--config recipe.yaml`` and flags."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from open_r1.configs import normalize_video_flags

    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietAccumulationMismatch())
    argv = use_gloo_for_cpu_deepspeed(normalize_video_flags(list(sys.argv[1:] if argv is None else argv)))
    try:
        # allow_abbrev=False: `--model_name_or_pat` must fail as an unknown flag, not train with --model_name_or_path.
        parsed = TrlParser(dataclass_types, allow_abbrev=False).parse_args_and_config(args=argv)
    except ValueError as error:
        import torch

        if "bf16" in str(error) and not torch.cuda.is_available():
            raise ValueError(
                "--bf16 true (the GPU recipes' setting) needs a GPU, and this machine has none: on a CPU use "
                "RECIPE=recipes/demo/grpo_tiny.yaml (after `python -m open_r1.demo`), or add --bf16 false"
            ) from error
        raise
    from open_r1.configs import check_finite

    for args in parsed:  # TRL's and transformers' flags too (--temperature nan, --learning_rate inf, --beta nan)
        check_finite(args)
    return parsed


def run_entry_point(dataclass_types: tuple, train, job: str, argv: list[str] | None):
    """Parse and train; with ``--preflight N`` (N processes in all; what the launcher runs before torchrun starts
    any worker) only run the checks and print every problem in one short message, exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--preflight" not in argv:
        return train(*parse_cli(dataclass_types, argv))
    at = argv.index("--preflight")
    world = int(argv[at + 1])
    argv = argv[:at] + argv[at + 2 :]
    try:
        preflight(*parse_cli(dataclass_types, argv)[:3], world=world, job=job)  # script, training, model
    except (OSError, ValueError) as error:
        print(f"pre-flight ({job}): {error}", file=sys.stderr)  # noqa: T201 - the launcher's one message
        raise SystemExit(2) from None
    logger.info("%s pre-flight: no problem found (%d processes)", job, world)
    return None


def cli(argv: list[str] | None = None):
    return run_entry_point((GRPOScriptArguments, GRPOConfig, ModelConfig), main, "training", argv)


if __name__ == "__main__":
    cli()
