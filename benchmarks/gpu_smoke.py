"""GPU smoke test and step benchmark (run through benchmarks/gpu_smoke.sh).

Stage ``tiny``: the pipeline on CUDA in bf16 with sdpa: synthetic clips written to a video cache, a tiny random
Qwen2.5-VL, GRPO steps through ``open_r1.grpo_video.main``, then ``open_r1.evaluation.run_evaluation`` on the checkpoint.
The clips are drawn in memory and cached directly, so no video codec wheel is needed on the GPU machine.

Stage ``recipe``: the shipped Charades recipe as written (``recipes/charades/grpo_qwen2_5_vl_7b.yaml`` through the
training entry point's command line: flash_attention_2, bf16, gradient checkpointing, accumulation 2, whole groups,
shared work, 8 completions, ``scripts/zero3_offload.json``), plus ``--decode static``, on random 7B weights and clips at
the paper's shapes (only the model path, the data, the step count and a fixed completion length are overridden), then
``open_r1.evaluation.run_evaluation --decode static`` on the saved checkpoint. Prints per-phase seconds of the last
step against ``bound.py``'s bound, the attention kernel that ran, dynamo's compiled graphs (its own counter) and the
decode shapes, and peak GPU memory. Run it under torchrun (DeepSpeed wants a process group).

Stage ``7b``: GRPO steps of the real Qwen2.5-VL-7B architecture (random weights from the bundled config) at the
paper's shapes: one query with ~3.6k video tokens (64 frames of 224x392 at 2 fps), 8 completions of exactly
``--completion_tokens`` tokens, beta 0.04 (reference forward included), gradient checkpointing, bf16. Prints seconds
per step, tokens per second and peak GPU memory, and writes them as JSON.

    python benchmarks/gpu_smoke.py --stage tiny --out /tmp/smoke
    python benchmarks/gpu_smoke.py --stage 7b --out /tmp/smoke
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_smoke.py --stage 7b --out /tmp/smoke \
        --deepspeed scripts/zero3.json --optim adafactor                      # one ZeRO-3 GPU
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_smoke.py --stage recipe --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from open_r1.configs import GRPOScriptArguments, VideoSettings  # noqa: E402
from open_r1.video import VideoCache, VideoClip  # noqa: E402


def square_clip(num_frames: int, height: int, width: int, start: int, end: int, fps: float = 2.0) -> VideoClip:
    """A dark clip with a red square on frames [start, end): what the synthetic mp4s show, drawn in memory."""
    frames = torch.full((num_frames, 3, height, width), 30, dtype=torch.uint8)
    side = min(height, width) // 3
    frames[start:end, 0, :side, :side] = 220
    return VideoClip(
        frames=frames,
        sample_fps=fps,
        frame_indices=list(range(num_frames)),
        duration=num_frames / fps,
        source_fps=fps,
        source_size=(height, width),
        decoder="memory",
        source_num_frames=num_frames,
    )


def write_dataset(out: Path, settings: VideoSettings, num_videos: int, num_frames: int, height: int, width: int):
    """Cache ``num_videos`` clips and write a TimeZero-format annotation file for them."""
    cache = VideoCache(out / "cache")
    annotations = {}
    for index in range(num_videos):
        start = 2 + index % 4
        end = min(num_frames, start + 4 + index % 3)
        video_id = f"smoke_{index:03d}"
        cache.save(video_id, square_clip(num_frames, height, width, start, end, settings.fps), settings)
        annotations[video_id] = {
            "duration": num_frames / settings.fps,
            "timestamps": [[start / settings.fps, end / settings.fps]],
            "sentences": ["the red square appears."],
        }
    path = out / "annotations.json"
    path.write_text(json.dumps(annotations))
    return path


class StepTimer:
    """Trainer callback: wall time of every optimizer step (CUDA synchronised)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                timer.seconds.append(time.perf_counter() - timer.started)

        self.seconds: list[float] = []
        self.started = 0.0
        self.callback = _Callback()


class PhaseTimes:
    """Per-phase seconds of each step (vision, generation, reference, policy forward, backward, optimizer)."""

    def __init__(self):
        sys.path.insert(0, str(REPO / "benchmarks"))
        from open_r1.trainer import VideoGRPOTrainer

        self.meter = None
        self.last: dict = {}
        times = self
        original_train = VideoGRPOTrainer.train

        def train(trainer, *args, **kwargs):
            from phases import PhaseMeter

            times.meter = PhaseMeter(trainer)
            times.meter.wrap_backward()
            return original_train(trainer, *args, **kwargs)

        VideoGRPOTrainer.train = train

    def callback(self):
        from transformers import TrainerCallback

        times = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                times.meter.stats.clear()

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                times.optimizer_started = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                times.meter.stats["optimizer"]["seconds"] += time.perf_counter() - times.optimizer_started

            def on_step_end(self, args, state, control, **kwargs):
                times.last = {
                    phase: {k: round(v, 2) if k == "seconds" else int(v) for k, v in values.items()}
                    for phase, values in times.meter.stats.items()
                }

        return _Callback()


def stage_tiny(out: Path) -> dict:
    from trl import GRPOConfig, ModelConfig

    from open_r1.configs import EvalArguments
    from open_r1.evaluation import run_evaluation
    from open_r1.grpo_video import main as train
    from open_r1.modeling import build_tiny_model

    video = {"video_fps": 2.0, "video_min_pixels": 56 * 56, "video_total_pixels": 56 * 56 * 16}
    settings = VideoSettings(fps=2.0, min_pixels=56 * 56, total_pixels=56 * 56 * 16)
    annotations = write_dataset(out, settings, num_videos=8, num_frames=16, height=56, width=56)
    model_dir = build_tiny_model(out / "tiny_model")
    script_args = GRPOScriptArguments(annotation_file=str(annotations), cache_dir=str(out / "cache"), **video)
    training_args = GRPOConfig(
        output_dir=str(out / "tiny_checkpoint"),
        bf16=True,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=32,
        max_steps=4,
        beta=0.04,
        loss_type="grpo",
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="bfloat16", attn_implementation="sdpa")
    trainer = train(script_args, training_args, model_args)
    device = str(next(trainer.model.parameters()).device)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    metrics = run_evaluation(
        EvalArguments(
            model_base=str(out / "tiny_checkpoint"),
            annotation_file=str(annotations),
            cache_dir=str(out / "cache"),
            output_dir=str(out / "tiny_eval"),
            max_new_tokens=32,
            dtype="bfloat16",
            attn_implementation="sdpa",
            overwrite=True,
            **video,
        )
    )
    return {
        "trained_on": device,
        "steps": len(logs),
        "kl_last": logs[-1]["kl"],
        "rewards_logged": sorted(k for k in logs[-1] if k.startswith("rewards/")),
        "eval_num_queries": metrics["num_queries"],
        "eval_mIoU": metrics["mIoU"],
    }


def build_random_7b(path: Path) -> Path:
    """Save random weights for the real 7B config (initialised on the GPU, where it takes seconds)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from open_r1.modeling import ASSETS_DIR, load_processor

    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path  # built by an earlier run in the same folder
    config = AutoConfig.from_pretrained(str(ASSETS_DIR))
    started = time.perf_counter()
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(path))
    load_processor(ASSETS_DIR).save_pretrained(str(path))
    num_params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    print(
        f"random 7B ({num_params / 1e9:.2f} B parameters) saved in {time.perf_counter() - started:.0f} s", flush=True
    )
    return path


def stage_7b(
    out: Path, completion_tokens: int, steps: int, deepspeed: str | None, optim: str, shared_work: bool = True
) -> dict:
    from trl import GRPOConfig, ModelConfig

    from open_r1.grpo_video import main as train

    # 64 frames of 224x392 at 2 fps: 32 temporal steps x (8 x 14) merged patches = 3,584 video tokens, the paper's
    # budget of 3584 * 28 * 28 pixels.
    settings = VideoSettings(fps=2.0)
    annotations = write_dataset(out, settings, num_videos=4, num_frames=64, height=224, width=392)
    model_dir = build_random_7b(out / "random_7b")
    script_args = GRPOScriptArguments(
        annotation_file=str(annotations), cache_dir=str(out / "cache"), shared_work=shared_work
    )
    timer = StepTimer()
    training_args = GRPOConfig(
        output_dir=str(out / "7b_run"),
        bf16=True,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=completion_tokens,
        # Every completion is exactly `completion_tokens` long: fixed work per step.
        generation_kwargs={"min_new_tokens": completion_tokens},
        max_steps=steps,
        beta=0.04,
        loss_type="grpo",
        learning_rate=1e-6,
        gradient_checkpointing=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        deepspeed=deepspeed,
        optim=optim,
    )
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="bfloat16", attn_implementation="sdpa")
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    phases = PhaseTimes()
    trainer = train(script_args, training_args, model_args, callbacks=[timer.callback, phases.callback()])
    total = time.perf_counter() - started
    shutil.rmtree(training_args.output_dir, ignore_errors=True)  # ~33 GB of fp32 weights; the disk holds two runs
    logs = [e for e in trainer.state.log_history if "loss" in e]
    prompt_tokens = int(logs[-1]["num_tokens"] - (logs[-2]["num_tokens"] if len(logs) > 1 else 0))
    seconds = timer.seconds[-1]
    return {
        "device": torch.cuda.get_device_name(),
        "deepspeed": deepspeed,
        "optim": optim,
        "shared_work": shared_work,
        # fp32 when the entry point keeps master weights itself (no DeepSpeed), else what DeepSpeed holds
        "trained_weights_dtype": str(next(p for p in trainer.model.parameters() if p.requires_grad).dtype),
        "video_tokens_per_query": 32 * 8 * 14,
        "completions_per_step": 8,
        "completion_tokens": completion_tokens,
        "tokens_per_step": prompt_tokens,
        "step_seconds": [round(s, 2) for s in timer.seconds],
        "seconds_per_step": round(seconds, 2),
        "tokens_per_second": round(prompt_tokens / seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "total_seconds_with_loading": round(total, 1),
        "kl_last": logs[-1].get("kl"),
        # Seconds of the last step by phase (CUDA synchronised), and the tokens the language model processed.
        "last_step_phases": phases.last,
        "mean_completion_length": logs[-1]["completions/mean_length"],
    }


def stage_recipe(out: Path, completion_tokens: int, steps: int, eval_tokens: int) -> dict:
    """The Charades recipe as written (see the module docstring), then a static-decode evaluation of its checkpoint."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from transformers import AutoConfig

    from open_r1.configs import EvalArguments
    from open_r1.evaluation import run_evaluation
    from open_r1.grpo_video import cli
    from open_r1.modeling import ASSETS_DIR

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bound import step_phases

    settings = VideoSettings(fps=2.0)
    annotations = write_dataset(out, settings, num_videos=4, num_frames=64, height=224, width=392)
    model_dir = build_random_7b(out / "random_7b")
    checkpoint = out / "recipe_run"
    timer, phases = StepTimer(), PhaseTimes()
    torch._dynamo.reset()
    counters.clear()
    torch.cuda.reset_peak_memory_stats()
    argv = [
        "--config", str(REPO / "recipes" / "charades" / "grpo_qwen2_5_vl_7b.yaml"),
        "--deepspeed", str(REPO / "scripts" / "zero3_offload.json"),
        "--model_name_or_path", str(model_dir),
        "--annotation_file", str(annotations),
        "--cache_dir", str(out / "cache"),
        "--output_dir", str(checkpoint),
        "--max_steps", str(steps),
        "--max_completion_length", str(completion_tokens),
        "--decode", "static",
        "--save_strategy", "no",
        "--report_to", "none",
        "--log_completions", "false",
    ]  # fmt: skip
    started = time.perf_counter()
    import open_r1.grpo_video as entry

    real_main = entry.main

    def main_with_callbacks(script_args, training_args, model_args, callbacks=None):
        # Every completion exactly `completion_tokens` long: fixed work per step.
        training_args.generation_kwargs = {
            **(training_args.generation_kwargs or {}),
            "min_new_tokens": completion_tokens,
        }
        return real_main(script_args, training_args, model_args, callbacks=[timer.callback, phases.callback()])

    entry.main = main_with_callbacks
    try:
        trainer = cli(argv)
    finally:
        entry.main = real_main
    train_seconds = time.perf_counter() - started
    train_graphs = counters["stats"]["unique_graphs"]
    train_peak = torch.cuda.max_memory_allocated() / 2**30
    model = trainer.accelerator.unwrap_model(trainer.model)
    kernel = model.model.language_model.config._attn_implementation
    decoder = trainer._static_decoder
    result = {
        "device": torch.cuda.get_device_name(),
        "attn_implementation": kernel,
        "bf16": trainer.args.bf16,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "deepspeed_zero_stage": trainer.model_wrapped.zero_optimization_stage()
        if trainer.is_deepspeed_enabled
        else None,
        "step_seconds": [round(s, 2) for s in timer.seconds],
        "last_step_phases": phases.last,
        "train_compiled_graphs": train_graphs,
        "train_decode_shapes": decoder.shapes if decoder else None,
        "train_decode_compiled": bool(decoder and decoder.compile),
        "train_peak_gpu_memory_gib": round(train_peak, 1),
        "train_seconds_with_loading": round(train_seconds, 1),
    }
    config = AutoConfig.from_pretrained(ASSETS_DIR)
    bound = step_phases(config, completions=8, completion_tokens=completion_tokens)
    bound.pop("packed_dense_over_useful_scores")
    result["bound_seconds"] = {name: round(values["bound_s"], 4) for name, values in bound.items()}
    del trainer, model
    torch.cuda.empty_cache()

    # Evaluation of the saved checkpoint (the training entry point saves at the end), static decode.
    torch._dynamo.reset()
    counters.clear()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    metrics = run_evaluation(EvalArguments(
        model_base=str(checkpoint), annotation_file=str(annotations), cache_dir=str(out / "cache"),
        output_dir=str(out / "recipe_eval"), max_new_tokens=eval_tokens, decode="static", overwrite=True,
    ))  # fmt: skip
    result.update(
        eval_seconds=round(time.perf_counter() - started, 1),
        eval_num_queries=metrics["num_queries"],
        eval_generation_errors=metrics["failures"].get("generation_error", 0),
        eval_compiled_graphs=counters["stats"]["unique_graphs"],
        eval_peak_gpu_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
    )
    shutil.rmtree(checkpoint, ignore_errors=True)
    print(f"{'phase':<16}{'seconds':>10}{'bound s':>10}{'ratio':>8}")
    for name, bound_s in result["bound_seconds"].items():
        seen = (phases.last.get(name) or {}).get("seconds")
        ratio = f"{seen / bound_s:.1f}x" if seen and bound_s else ""
        print(f"{name:<16}{seen if seen is not None else '':>10}{bound_s:>10.3f}{ratio:>8}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["tiny", "7b", "recipe"], required=True)
    parser.add_argument("--out", required=True, help="Scratch folder (the 7b stage writes ~17 GB of weights).")
    parser.add_argument("--completion_tokens", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2, help="7b: GRPO steps; the last one is reported.")
    parser.add_argument("--deepspeed", default=None, help="7b: DeepSpeed config (e.g. scripts/zero3.json).")
    parser.add_argument(
        "--optim",
        default="adamw_torch",
        help="7b: optimizer. On ONE GPU, ZeRO-3 keeps fp32 master weights and gradients (~60 GB for 7.6B trainable "
        "parameters) on the card, and AdamW's fp32 moments (another ~60 GB) no longer fit next to them and the "
        "reference model; use adafactor there. On the paper's 4 GPUs all of it is split 4 ways and offloaded to CPU.",
    )
    parser.add_argument(
        "--shared_work", default="true", choices=["true", "false"], help="7b: one vision pass per distinct video."
    )
    parser.add_argument("--eval_tokens", type=int, default=64, help="recipe: max_new_tokens of the evaluation.")
    parser.add_argument("--json", default=None, help="Append the result as one JSON line to this file.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage == "tiny":
        result = {"stage": "tiny", **stage_tiny(out / "tiny")}
    elif args.stage == "recipe":
        result = {"stage": "recipe", **stage_recipe(out / "7b", args.completion_tokens, args.steps, args.eval_tokens)}
    else:
        result = {
            "stage": "7b",
            **stage_7b(
                out / "7b", args.completion_tokens, args.steps, args.deepspeed, args.optim, args.shared_work == "true"
            ),
        }
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
