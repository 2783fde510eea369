"""Two CPU processes train with the real entry point, under torchrun (DDP over gloo) and under DeepSpeed ZeRO-3 with
CPU offload, and the two backends agree step for step.

Why the runs are comparable: both start from the same saved tiny model, see the same prompts (TRL's sampler is
seeded), and sample with the same per-rank seed (``set_seed(seed, device_specific=True)``). ZeRO-3 gathers the full
weights for generation, so the logits match to float rounding and the sampled completions are identical. The test
checks that before it compares gradients: the grad norm of each step, the loss, the KL and the trained weights.

The second step has a measurable KL (``learning_rate`` 1e-4 here instead of the paper's 1e-6), so step 2 also checks
that both backends applied the same update in step 1.

Cost on 2 CPU cores: ~40 s for the file (~13 s torchrun, ~20 s DeepSpeed). A machine without
~/.cache/torch_extensions first compiles DeepSpeed's CPU ops (``shm_comm`` and ``cpu_adam``): the fixture does that
in a step of its own, before the timed runs, with a limit that covers a compile on cores shared with other jobs
(98 s measured cold on 2 idle cores; see OP_BUILD_TIMEOUT_S). Every subprocess runs in its own process group, killed whole on a time-out, so no
worker is left compiling or training after a failure.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
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
# Compiling DeepSpeed's two CPU ops from nothing: 98 s on this project's 2 idle cores (build_deepspeed_cpu_ops's code
# timed with TORCH_EXTENSIONS_DIR pointing to an empty folder);
# 38 min was seen on 2 cores shared with other jobs (load 9-22), so the limit leaves room for that. Training itself gets TRAIN_TIMEOUT_S per run.
OP_BUILD_TIMEOUT_S = 3600
TRAIN_TIMEOUT_S = 900
DEEPSPEED_CPU_OPS = ("CPUAdamBuilder", "ShareMemCommBuilder")

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


def run_in_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``cmd`` in a process group of its own; on a time-out the whole group (torchrun and its workers, a compiler and
    its children) is killed and the test fails with the output so far."""
    process = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(
            f"{' '.join(cmd)} timed out after {timeout} s; its process group was killed\n{out[-3000:]}\n{err[-5000:]}"
        )
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def build_deepspeed_cpu_ops() -> float:
    """Compile DeepSpeed's CPU ops (or load them from ~/.cache/torch_extensions) before any timed run; seconds taken."""
    started = time.perf_counter()
    code = (
        "from deepspeed.accelerator import get_accelerator\n"
        f"for name in {DEEPSPEED_CPU_OPS!r}:\n"
        "    get_accelerator().create_op_builder(name).load()\n"
    )
    result = run_in_group([sys.executable, "-c", code], OP_BUILD_TIMEOUT_S, cwd=REPO)
    if result.returncode != 0:
        pytest.fail(f"building DeepSpeed's CPU ops failed\n{result.stderr[-10000:]}")
    return time.perf_counter() - started


def torchrun(record_dir: Path, output_dir: Path, common: list[str], *extra: str) -> list[dict]:
    """Train on 2 CPU processes through the driver; returns each rank's record. Fails with the run's output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(DRIVER), "--record", str(record_dir),
        *common, "--output_dir", str(output_dir), *TRAIN_FLAGS, *extra,
    ]  # fmt: skip
    result = run_in_group(cmd, TRAIN_TIMEOUT_S, cwd=REPO, env=env)
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
    build_deepspeed_cpu_ops()
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


# The shipped recipes' kernel through transformers' flash-attention code on the flash-attn stand-in. bf16 stays off:
# transformers refuses --bf16 without a GPU unless --use_cpu, which takes DeepSpeed out; so the stand-in accepts the
# fp32 inputs too (the bf16 contract is checked in the single-process flash tests).
FLASH_FLAGS = ["--flash_attn_stand_in", "fp32", "--attn_implementation", "flash_attention_2"]


@pytest.fixture(scope="module")
def flash_zero3(tmp_path_factory):
    """ZeRO-3 on 2 CPU processes with flash_attention_2: the recipe's layout (whole groups, accumulation 2), and
    groups cut across ranks with TRL's row shuffle, whose micro-batches hold different numbers of groups on the two
    ranks."""
    root = tmp_path_factory.mktemp("flash_zero3")
    annotations, video_dir = make_grounding_dataset(root / "data", num_videos=4, duration=4.0, fps=4.0)
    model = build_tiny_model(root / "tiny")
    common = ["--model_name_or_path", str(model), "--annotation_file", str(annotations), "--video_dir", str(video_dir)]
    build_deepspeed_cpu_ops()
    ds_config = zero3_cpu_config(root / "zero3_offload_cpu.json")
    zero3 = ["--deepspeed", str(ds_config), *FLASH_FLAGS, "--gradient_accumulation_steps", "2"]
    recipe = torchrun(root / "recipe", root / "out_recipe", common, *zero3)
    # 6 rows per rank, groups of 4: rank 0 holds a group and half of the next, rank 1 the other half and a group;
    # micro-batches of 3 rows then hold 1 or 2 groups, not the same on both ranks.
    mixed = torchrun(
        root / "mixed", root / "out_mixed", common, *zero3, "--whole_groups", "false",
        "--per_device_train_batch_size", "3",
    )  # fmt: skip
    return {"recipe": recipe, "mixed": mixed}


@pytest.mark.slow
def test_zero3_trains_the_flash_attention_recipe(flash_zero3):
    """Both ranks ran the flash kernels (tower windows, the shared prefill, decode steps), packed each whole group
    into the log-prob passes, and took finite steps."""
    for record in flash_zero3["recipe"]:
        assert record["zero_stage"] == 3 and record["attn_implementation"] == "flash_attention_2"
        calls = record["flash_kernel_calls"]
        assert calls.get("flash_attn_varlen_func", 0) + calls.get("flash_attn_func", 0) > 0, calls
        assert set(record["groups_per_call"]) == {1}  # whole groups: one group per micro-batch
        logs = step_logs(record)
        assert len(logs) == NUM_STEPS and all(math.isfinite(log["loss"]) and log["grad_norm"] > 0 for log in logs)
    assert flash_zero3["recipe"][0]["lm_calls"] == flash_zero3["recipe"][1]["lm_calls"]


@pytest.mark.slow
def test_zero3_ranks_with_different_groups_make_the_same_calls(flash_zero3):
    """TRL's row shuffle leaves the two ranks' micro-batches with different numbers of groups; each log-prob pass is
    still one model call per micro-batch on every rank, so ZeRO-3's gathers pair up and the run ends (it hung when
    each group was a call of its own; torchrun's time-out would fail the test)."""
    first, second = flash_zero3["mixed"]
    assert first["groups_per_call"] != second["groups_per_call"]  # the layout that used to hang
    assert len(first["groups_per_call"]) == len(second["groups_per_call"])
    assert first["lm_calls"] == second["lm_calls"]
    assert len(step_logs(first)) == NUM_STEPS


def test_a_timed_out_run_leaves_no_process_behind():
    """The time-out kills the whole process group: a child that would sleep on (a torchrun worker, a compiler) goes
    too (subprocess.run's time-out killed only the direct child and left torchrun's workers running)."""
    sleeper = "import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])"
    cmd = [sys.executable, "-c", f"{sleeper}; print(child.pid, flush=True); time.sleep(120)"]
    with pytest.raises(pytest.fail.Exception, match="timed out after 3 s; its process group was killed") as caught:
        run_in_group(cmd, 3)
    child = int(str(caught.value).split("killed\n")[1].split()[0])
    deadline = time.time() + 10
    while Path(f"/proc/{child}").exists() and time.time() < deadline:
        time.sleep(0.1)
    state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}").exists() else "gone"
    assert state in ("gone", "Z"), state  # killed (a zombie until its reaped parent is gone)


@pytest.mark.slow
def test_data_selection_shards_over_two_processes_and_resumes(tmp_path):
    """5 queries over 2 ranks (one rank pads its last rollout): every query scored exactly once, the report counts
    them all; a second run finds them all scored and only refilters."""
    annotations, video_dir = make_grounding_dataset(tmp_path / "data", num_videos=5, duration=4.0, fps=4.0)
    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "selection"
    flags = [flag for flag in TRAIN_FLAGS if flag not in ("--max_steps", str(NUM_STEPS))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "_dist_select.py"), "--model_name_or_path", str(model),
        "--annotation_file", str(annotations), "--video_dir", str(video_dir), "--output_dir", str(out),
        "--use_cpu", "true", *flags, "--reward_funcs", "low_token", "query_number",
    ]  # fmt: skip
    for _ in range(2):
        result = run_in_group(cmd, TRAIN_TIMEOUT_S, cwd=REPO, env=env)
        assert result.returncode == 0, result.stderr[-5000:]
        ranks = {path.name: [json.loads(line)["query_id"] for line in path.read_text().splitlines()]
                 for path in sorted(out.glob("scores.rank*.jsonl"))}  # fmt: skip
        assert sorted(ranks) == ["scores.rank0.jsonl", "scores.rank1.jsonl"]
        assert [len(ids) for ids in ranks.values()] == [3, 2]  # queries 0, 2, 4 and 1, 3
        assert sorted(sum(ranks.values(), [])) == sorted(f"synth_{i:03d}#0" for i in range(5)), ranks
        for path in out.glob("scores.rank*.jsonl"):  # each query's rewards are its own, not another rank's rows
            for score in map(json.loads, path.read_text().splitlines()):
                number = float(score["query_id"].split("_")[1].split("#")[0])
                assert score["rewards"]["query_number_reward"] == [number] * 4, score
        report = json.loads((out / "selection_report.json").read_text())
        assert report["counts"]["queries"] == 5
        assert sum(report["counts"][k] for k in ("kept", "equal_rewards", "low_std", "solved")) == 5
    assert "5 queries, 5 already scored" in result.stderr
