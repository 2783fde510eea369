"""Two CPU processes train with the real entry point, under torchrun (DDP over gloo) and under DeepSpeed ZeRO-3 with
CPU offload, and the two backends agree step for step.

Why the runs are comparable: both start from the same saved tiny model, see the same prompts (TRL's sampler is
seeded), and sample with the same per-rank seed (``set_seed(seed, device_specific=True)``). ZeRO-3 gathers the full
weights for generation, so the logits match to float rounding and the sampled completions are identical. The test
checks that before it compares gradients: the grad norm of each step, the loss, the KL and the trained weights.

The second step has a measurable KL (``learning_rate`` 1e-4 here instead of the paper's 1e-6), so step 2 also checks
that both backends applied the same update in step 1.

Cost on 2 CPU cores: ~40 s for the file (~13 s torchrun, ~20 s DeepSpeed). A fresh machine first compiles
DeepSpeed's CPU ops (``shm_comm`` and ``cpu_adam``, cached in ~/.cache/torch_extensions): 195 s measured that way on
2 busy shared cores.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from open_r1.modeling import build_tiny_model, load_model
from open_r1.synthetic import make_grounding_dataset

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "_dist_train.py"
NUM_STEPS = 2
# Relative tolerance on the grad norm. DDP all-reduces full gradients; ZeRO-3 reduce-scatters them and computes the
# norm from the fp32 shards on each rank, so the sum runs in a different order: observed 1.1e-5 and 1.0e-5.
GRAD_NORM_RTOL = 1e-4
# The weight change after two steps, DDP vs ZeRO-3 (torch AdamW vs DeepSpeedCPUAdam on offloaded shards):
# observed 9e-6 relative to the size of the change.
UPDATE_RTOL = 1e-3

TRAIN_FLAGS = [
    "--bf16", "false",
    "--per_device_train_batch_size", "4",
    "--num_generations", "4",  # 2 processes x 4 completions = 2 prompts per step, one per rank
    "--max_completion_length", "8",
    "--beta", "0.04",
    "--loss_type", "grpo",
    "--learning_rate", "1e-4",
    "--max_steps", str(NUM_STEPS),
    "--seed", "0",
    # `low_token` is the driver's dense reward; a random model never earns `format`, which stays at 0.
    "--reward_funcs", "low_token", "format",
    "--report_to", "none",
    "--logging_steps", "1",
    "--save_strategy", "no",
    # 56x56 frames at 2 fps: 32 video tokens per query.
    "--video_min_pixels", "3136",
    "--video_total_pixels", str(3136 * 16),
]  # fmt: skip


def zero3_cpu_config(path: Path) -> Path:
    """The project's scripts/zero3_offload.json, made to partition a tiny model.

    ZeRO-3 keeps every parameter below ``stage3_param_persistence_threshold`` elements whole on each rank. "auto"
    resolves to 10 x hidden_size (640 for the tiny model), which leaves its biases and norms (1,504 elements) whole
    on both ranks; at 0 every tensor is split across the two ranks. Everything else is the shipped file, including
    ``pin_memory`` (a no-op without an accelerator).
    """
    config = json.loads((REPO / "scripts" / "zero3_offload.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path.write_text(json.dumps(config, indent=2))
    return path


def torchrun(record_dir: Path, output_dir: Path, common: list[str], *extra: str) -> list[dict]:
    """Train on 2 CPU processes through the driver; returns each rank's record. Fails with the run's output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(DRIVER), "--record", str(record_dir),
        *common, "--output_dir", str(output_dir), *TRAIN_FLAGS, *extra,
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / "output.txt").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}\nexit {result.returncode}\n{result.stdout[-5000:]}\n{result.stderr[-15000:]}")
    return [json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    annotations, video_dir = make_grounding_dataset(root / "data", num_videos=4, duration=4.0, fps=4.0)
    model = build_tiny_model(root / "tiny")
    common = [
        "--model_name_or_path", str(model),
        "--annotation_file", str(annotations),
        "--video_dir", str(video_dir),
    ]  # fmt: skip
    ddp = torchrun(root / "ddp", root / "out_ddp", common, "--use_cpu", "true")
    ds_config = zero3_cpu_config(root / "zero3_offload_cpu.json")
    zero3 = torchrun(root / "zero3", root / "out_zero3", common, "--deepspeed", str(ds_config))
    # The per-row path (vision tower over every row, one prompt copy per completion) under the same ZeRO-3 run.
    per_row = torchrun(
        root / "zero3_per_row",
        root / "out_zero3_per_row",
        common,
        "--deepspeed",
        str(ds_config),
        "--shared_work",
        "false",
    )
    return {
        "model": model,
        "ddp": ddp,
        "zero3": zero3,
        "zero3_per_row": per_row,
        "out_ddp": root / "out_ddp",
        "out_zero3": root / "out_zero3",
        "out_zero3_per_row": root / "out_zero3_per_row",
        "zero3_output": (root / "zero3" / "output.txt").read_text(),
    }


def step_logs(record: dict) -> list[dict]:
    return [entry for entry in record["log_history"] if "grad_norm" in entry]


def weight_change(trained: Path, initial: Path) -> dict[str, torch.Tensor]:
    """Trained minus initial weights, loaded through the same loader evaluation uses."""
    after, before = load_model(trained).state_dict(), load_model(initial).state_dict()
    return {name: after[name] - before[name] for name in before}


@pytest.mark.slow
def test_torchrun_gloo_trains_on_two_processes(runs):
    ranks = runs["ddp"]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    # Each rank rolled out its own group: 4 completions of 8 tokens, not a copy of the other rank's.
    assert ranks[0]["rollouts"][0] != ranks[1]["rollouts"][0]
    assert [len(ids) for ids in ranks[0]["rollouts"][0]] == [8] * 4
    logs = step_logs(ranks[0])
    assert len(logs) == NUM_STEPS
    for entry in logs:
        # Both ranks' rewards differ within groups, so the policy gradient is not zero.
        assert entry["reward_std"] > 0.05
        assert entry["grad_norm"] > 0.1
        assert "rewards/low_token_reward/mean" in entry and "rewards/format_reward/mean" in entry
    change = weight_change(runs["out_ddp"], runs["model"])
    assert all(change[n].abs().max() > 0 for n in change if "visual" not in n)
    assert all(change[n].abs().max() == 0 for n in change if "visual" in n)  # vision tower frozen


@pytest.mark.slow
def test_deepspeed_zero3_offload_partitions_and_trains(runs):
    ranks = runs["zero3"]
    for record in ranks:
        assert record["world_size"] == 2
        assert record["distributed_type"] == "DistributedType.DEEPSPEED"
        assert record["zero_stage"] == 3
        assert record["offload_param"] == "cpu" and record["offload_optimizer"]
        assert record["optimizer"] == "DeepSpeedCPUAdam"
        # Every parameter is partitioned: no rank holds a full tensor, each holds about half of the elements.
        assert record["local_numel"] == 0
        assert record["full_numel"] / 2 <= record["local_shard_numel"] < 0.51 * record["full_numel"]
    logs = step_logs(ranks[0])
    assert len(logs) == NUM_STEPS and all(entry["grad_norm"] > 0.1 for entry in logs)
    # No "Gradient accumulation steps mismatch" alarm: the Trainer and DeepSpeed agree.
    assert "accumulation steps mismatch" not in runs["zero3_output"]
    # The checkpoint gathers the shards into full weights that the evaluation loader reads.
    change = weight_change(runs["out_zero3"], runs["model"])
    assert all(change[n].abs().max() > 0 for n in change if "visual" not in n)


@pytest.mark.slow
def test_ddp_and_zero3_agree_on_the_same_rollouts(runs):
    ddp, zero3 = runs["ddp"], runs["zero3"]
    # Same completions on every rank and step: the comparison below is on identical data.
    for rank in range(2):
        assert ddp[rank]["rollouts"] == zero3[rank]["rollouts"]
    ddp_logs, zero3_logs = step_logs(ddp[0]), step_logs(zero3[0])
    for step, (a, b) in enumerate(zip(ddp_logs, zero3_logs, strict=True), start=1):
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=GRAD_NORM_RTOL), (step, a, b)
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3, abs_tol=1e-7), (step, a, b)
        assert math.isclose(a["kl"], b["kl"], rel_tol=1e-3, abs_tol=1e-9), (step, a, b)
        assert a["reward"] == b["reward"]
    # Step 2 runs on the weights updated by step 1: a nonzero KL shows the update was applied in both.
    assert ddp_logs[1]["kl"] > 1e-7
    ddp_change = weight_change(runs["out_ddp"], runs["model"])
    zero3_change = weight_change(runs["out_zero3"], runs["model"])
    diff = math.sqrt(sum((ddp_change[n] - zero3_change[n]).pow(2).sum().item() for n in ddp_change))
    size = math.sqrt(sum(change.pow(2).sum().item() for change in ddp_change.values()))
    assert size > 0 and diff / size < UPDATE_RTOL, (diff, size)


@pytest.mark.slow
def test_zero3_shared_work_equals_the_per_row_path(runs):
    """One vision pass per video and packed groups under ZeRO-3 (2 processes, CPU offload) train exactly like the
    per-row path: the same rollouts, grad norms, losses, KL and weight updates."""
    shared, per_row = runs["zero3"], runs["zero3_per_row"]
    for rank in range(2):
        assert shared[rank]["rollouts"] == per_row[rank]["rollouts"]
    for step, (a, b) in enumerate(zip(step_logs(shared[0]), step_logs(per_row[0]), strict=True), start=1):
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=GRAD_NORM_RTOL), (step, a, b)
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3, abs_tol=1e-7), (step, a, b)
        assert math.isclose(a["kl"], b["kl"], rel_tol=1e-3, abs_tol=1e-9), (step, a, b)
    shared_change = weight_change(runs["out_zero3"], runs["model"])
    per_row_change = weight_change(runs["out_zero3_per_row"], runs["model"])
    diff = math.sqrt(sum((shared_change[n] - per_row_change[n]).pow(2).sum().item() for n in shared_change))
    size = math.sqrt(sum(change.pow(2).sum().item() for change in per_row_change.values()))
    assert size > 0 and diff / size < UPDATE_RTOL, (diff, size)
