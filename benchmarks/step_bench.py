"""One GRPO step at the paper's proportions on CPU: the shared path (shared_work) against the per-row path it
replaced, both measured in the same run, phase by phase. Also one evaluation batch.

The paper's step: 1 query x G = 8 completions of ~200 tokens, a prompt of ~3.65k tokens of which 3,584 are video
(64 frames of 224x392 at 2 fps), beta 0.04 (a reference pass), gradient checkpointing, frozen vision tower. Here
the model is the tiny Qwen2.5-VL built from the real config (the real patch/merge/window geometry, so the vision
tower's work per video is the 7B model's in patches and attention calls, at a fraction of the width), and every
completion is forced to ``--completion_tokens`` tokens so both paths do fixed work.

For each phase (vision, generation, old_policy, reference, policy_forward, backward) it prints vision-tower patches,
language-model tokens, FLOPs (torch's FLOP counter) and aten ops from a counting run, and seconds from a separate
run without counters, then the ratios per-row / shared. Seconds on a shared 2-core machine are noisy; the counts
are exact.

    python benchmarks/step_bench.py                        # paper proportions (~2-4 minutes on 2 cores)
    python benchmarks/step_bench.py --frames 16 --completion_tokens 50   # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from phases import PHASES, PhaseMeter  # noqa: E402

METRICS = ("vision_patches", "llm_tokens", "flops", "aten_ops", "seconds")


def clip(frames: int, height: int, width: int, seed: int):
    from open_r1.video import VideoClip

    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (frames, 3, height, width), dtype=torch.uint8, generator=gen)
    return VideoClip(
        frames=data,
        sample_fps=2.0,
        frame_indices=list(range(frames)),
        duration=frames / 2.0,
        source_fps=2.0,
        source_size=(height, width),
        decoder="memory",
    )


def make_trainer(model_dir: Path, out: Path, clips: dict, completion_tokens: int, shared: bool):
    from datasets import Dataset
    from trl import GRPOConfig

    from open_r1.modeling import load_model, load_processor
    from open_r1.prompts import build_conversation
    from open_r1.trainer import VideoGRPOTrainer

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    rows = [{"prompt": build_conversation("the red square appears", think=True), "video_id": "v0"}]
    args = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=completion_tokens,
        generation_kwargs={"min_new_tokens": completion_tokens},
        beta=0.04,
        loss_type="grpo",
        use_bias_correction_kl=False,
        gradient_checkpointing=True,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    trainer = VideoGRPOTrainer(
        load_model(model_dir),
        [length_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_processor(model_dir),
        video_loader=clips.__getitem__,
        shared_work=shared,
    )
    trainer.model.train()
    # What Trainer.train() turns on before the first step.
    trainer.model.activation_checkpointing_enable()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, [dict(rows[0]) for _ in range(8)]


def one_step(trainer, rows, meter: PhaseMeter) -> None:
    """What TRL's training_step does for one rollout: rollout (vision, generation, reference), loss, backward."""
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(rows)
    loss = trainer.compute_loss(trainer.model, out)
    with meter.backward():
        loss.backward()
    trainer.model.zero_grad()


def measure(model_dir, out, clips, completion_tokens, shared) -> dict[str, dict[str, float]]:
    trainer, rows = make_trainer(model_dir, out / f"run_{shared}", clips, completion_tokens, shared)
    result: dict[str, dict[str, float]] = {}
    for count_ops in (True, False):
        meter = PhaseMeter(trainer, count_ops=count_ops)
        one_step(trainer, rows, meter)
        meter.close()
        for phase, values in meter.stats.items():
            for metric, value in values.items():
                if count_ops != (metric == "seconds"):
                    result.setdefault(phase, {})[metric] = value
    return result


def evaluation_batch(model_dir: Path, clips: dict) -> dict[bool, float]:
    """Vision patches for one evaluation batch of 8 queries over 3 videos (Charades-STA test: 2.8 per video)."""
    from open_r1.configs import EvalArguments
    from open_r1.evaluation import BatchGenerator
    from open_r1.positions import inner_vlm

    queries = [{"query": f"event {i}", "video_id": f"v{i % 3}"} for i in range(8)]
    patches = {}
    for shared in (False, True):
        args = EvalArguments(model_base=str(model_dir), cache_dir="unused", max_new_tokens=4, shared_work=shared)
        generator = BatchGenerator(args, torch.device("cpu"))
        seen: list[int] = []
        tower = inner_vlm(generator.model).visual
        hook = tower.blocks[0].register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0].shape[0]))
        generator(queries, [clips[q["video_id"]] for q in queries])
        hook.remove()
        patches[shared] = sum(seen)
    return patches


def fmt(value: float, metric: str) -> str:
    if metric == "seconds":
        return f"{value:.2f}"
    if metric == "flops":
        return f"{value / 1e9:.1f}G"
    return f"{int(value):,}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64, help="Frames per video at 2 fps (paper shape: 64).")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=392)
    parser.add_argument("--completion_tokens", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from open_r1.modeling import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model_dir = build_tiny_model(out / "tiny")
        clips = {f"v{i}": clip(args.frames, args.height, args.width, seed=i) for i in range(3)}
        video_tokens = args.frames // 2 * (args.height // 28) * (args.width // 28)
        print(
            f"one GRPO step: 1 query x 8 completions of {args.completion_tokens} tokens, {video_tokens} video tokens "
            f"({args.frames} frames of {args.height}x{args.width}), tiny Qwen2.5-VL from the real config, CPU",
            flush=True,
        )
        started = time.perf_counter()
        results = {shared: measure(model_dir, out, clips, args.completion_tokens, shared) for shared in (False, True)}
        eval_patches = evaluation_batch(model_dir, clips)
        elapsed = time.perf_counter() - started

    header = f"{'phase':<15}" + "".join(f"{m:>34}" for m in METRICS)
    print("\nper phase: per-row path / shared path (ratio)")
    print(header)
    totals = {shared: {m: 0.0 for m in METRICS} for shared in results}
    for phase in PHASES:
        cells = []
        for metric in METRICS:
            old = results[False].get(phase, {}).get(metric, 0.0)
            new = results[True].get(phase, {}).get(metric, 0.0)
            totals[False][metric] += old
            totals[True][metric] += new
            ratio = f"({old / new:.1f}x)" if new else "(-)"
            cells.append(f"{fmt(old, metric)} / {fmt(new, metric)} {ratio}")
        print(f"{phase:<15}" + "".join(f"{c:>34}" for c in cells))
    cells = []
    for metric in METRICS:
        old, new = totals[False][metric], totals[True][metric]
        cells.append(f"{fmt(old, metric)} / {fmt(new, metric)} ({old / new:.1f}x)")
    print(f"{'whole step':<15}" + "".join(f"{c:>34}" for c in cells))
    logprob_phases = ("old_policy", "reference", "policy_forward")
    old_lp = sum(results[False].get(p, {}).get("llm_tokens", 0) for p in logprob_phases)
    new_lp = sum(results[True].get(p, {}).get("llm_tokens", 0) for p in logprob_phases)
    print(
        f"\nratios per-row / shared: vision patches {totals[False]['vision_patches'] / totals[True]['vision_patches']:.1f}x"
        f", LLM tokens in the log-prob passes {old_lp / new_lp:.1f}x, FLOPs {totals[False]['flops'] / totals[True]['flops']:.2f}x"
        f", aten ops {totals[False]['aten_ops'] / totals[True]['aten_ops']:.1f}x"
        f", wall time {totals[False]['seconds'] / totals[True]['seconds']:.2f}x"
    )
    print(
        f"evaluation batch (8 queries, 3 videos): vision patches {eval_patches[False]:,} per-row / "
        f"{eval_patches[True]:,} shared ({eval_patches[False] / eval_patches[True]:.2f}x)"
    )
    print(f"(benchmark ran {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
