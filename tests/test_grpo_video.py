"""The training entry point end to end on a synthetic dataset of real mp4 files, and its early checks."""

import json
import os
import subprocess
from pathlib import Path
from statistics import stdev

import pytest
import torch
from _entry_points import common_args, tiny_setup
from trl import GRPOConfig, ModelConfig, TrlParser

from open_r1.configs import GRPOScriptArguments
from open_r1.grpo_video import cli
from open_r1.modeling import load_model, load_processor
from open_r1.preflight import PreflightError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory, "grpo")


def base_args(setup, output_dir, *extra):
    grpo = ["--num_generations", "4", "--max_completion_length", "8", "--beta", "0.04", "--loss_type", "grpo"]
    return common_args(setup, output_dir, *grpo, *extra)


@pytest.mark.slow
def test_trains_and_saves_a_loadable_checkpoint(setup, tmp_path):
    out = tmp_path / "run"
    trainer = cli(base_args(setup, out, "--max_steps", "2", "--log_completions", "true"))
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    # A sample of completions with their rewards, per logging step.
    assert len(list((out / "completions").glob("completions_*.parquet"))) == 2
    for key in ("rewards/iou_reward/mean", "rewards/format_reward/mean", "kl", "completions/mean_length",
                "signal/zero_std_share", "signal/group_reward_std", "signal/span_parsed"):  # fmt: skip
        assert all(key in e for e in logs), key
    # Groups of equal rewards: ours per group, TRL's per row; the same share when the rewards are scaled per group.
    assert [e["signal/zero_std_share"] for e in logs] == [e["frac_reward_zero_std"] for e in logs]
    # The last step's within-group std, from that rollout's rewards (4 completions per group) by the formula.
    total = trainer.last_rollout["total"].tolist()
    groups = [total[i : i + 4] for i in range(0, len(total), 4)]
    assert logs[-1]["signal/group_reward_std"] == pytest.approx(sum(map(stdev, groups)) / len(groups), abs=1e-6)
    # Model and processor side by side: what evaluate.py --model_base needs.
    assert (out / "model.safetensors").is_file()
    assert (out / "preprocessor_config.json").is_file() or (out / "processor_config.json").is_file()
    # Readable by the group and others as the umask allows (safetensors alone writes 0600).
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644 & ~mask | 0o600
    processor = load_processor(out)
    model = load_model(out)
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")


@pytest.mark.slow
def test_lora_saves_an_adapter(setup, tmp_path):
    """--use_peft trains LoRA adapters; the reference pass is the base model with the adapter disabled."""
    out = tmp_path / "lora"
    flags = ["--max_steps", "1", "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"]
    trainer = cli(base_args(setup, out, *flags))
    assert "kl" in trainer.state.log_history[0]
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_resumes_from_latest_checkpoint(setup, tmp_path):
    out = tmp_path / "run"
    cli(base_args(setup, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1"))
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    trainer = cli(
        base_args(setup, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")
        + ["--resume_from_checkpoint", "latest"]
    )
    assert trainer.state.global_step == 3
    steps = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert steps[-1] == 3


def test_recipe_yaml_and_cli_override(setup, tmp_path):
    """A recipe file supplies values, CLI flags override them, and checks run before the model loads."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_generations: 4\nreward_funcs:\n  - iou\n  - nonexistent\n")
    args = base_args(setup, tmp_path / "out")
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "no_model_here")
    # Every problem is named in one message (pre-flight), the missing model folder among them.
    with pytest.raises(PreflightError, match=r"(?s)2 problems.*model folder not found.*no_model_here.*nonexistent"):
        cli(["--config", str(recipe), *args])
    with pytest.raises(PreflightError, match=r"(?s)model folder not found.*no checkpoint-\* folder"):
        cli(["--config", str(recipe), *args, "--reward_funcs", "iou", "format", "--resume_from_checkpoint", "latest"])


def test_missing_videos_are_counted_before_the_model_loads(setup, tmp_path):
    _, annotations, video_dir, _ = setup
    data = json.loads(annotations.read_text())
    data["ghost_1"] = data["ghost_2"] = next(iter(data.values()))
    bad = tmp_path / "with_missing.json"
    bad.write_text(json.dumps(data))
    args = base_args(setup, tmp_path / "out")
    args[args.index("--annotation_file") + 1] = str(bad)
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "no_model_here")
    with pytest.raises(PreflightError, match=r"(?s)model folder not found.*2 of 6 videos .*ghost_1, ghost_2"):
        cli(args)


def test_bundled_split_without_videos_fails_with_a_count(setup, tmp_path):
    args = base_args(setup, tmp_path / "out")
    i = args.index("--annotation_file")
    args[i : i + 2] = ["--dataset", "charades"]
    args[args.index("--video_dir") + 1] = str(tmp_path)  # an empty folder
    with pytest.raises(FileNotFoundError, match=r"5338 of 5338 videos \(12408 of 12408 queries\)"):
        cli(args)


def test_batch_arithmetic_is_explained(setup, tmp_path):
    args = base_args(setup, tmp_path / "out")
    args[args.index("--per_device_train_batch_size") + 1] = "6"
    with pytest.raises(ValueError, match="num_generations"):
        cli(args)


def test_needs_videos_or_cache(setup, tmp_path):
    args = base_args(setup, tmp_path / "out")
    i = args.index("--video_dir")
    del args[i : i + 2]
    with pytest.raises(ValueError, match="--video_dir"):
        cli(args)


def test_tiny_model_fixture_is_small(setup):
    _, _, _, model = setup
    assert sum(p.numel() for p in load_model(model).parameters()) < 2_000_000


REPO = Path(__file__).resolve().parents[1]
# The paper recipes (the demo recipe is the demo's sizes on a CPU).
PAPER_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/grpo_*.yaml") if p.parent.name != "demo")


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: p.parent.name)
def test_recipes_state_the_paper_settings(recipe, tmp_path):
    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true"]
    )
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert model_args.dtype == "bfloat16" and model_args.attn_implementation == "flash_attention_2"
    paper = {
        "num_generations": 8,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "beta": 0.04,
        "loss_type": "grpo",
        "num_iterations": 1,
        "learning_rate": 1e-6,
        "max_completion_length": 1024,
        "temperature": 1.0,
        # Every loss/sampling value the paper or the original fixes, where TRL's default differs or could move.
        "use_bias_correction_kl": False,
        "scale_rewards": "group",
        "epsilon": 0.2,
        "epsilon_high": 0.2,
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
        "top_p": 1.0,
        "top_k": 50,
        "repetition_penalty": 1.0,
        "num_train_epochs": 1,
        "gradient_checkpointing": True,
        "save_steps": 50,
        "report_to": ["wandb"],
    }
    for key, value in paper.items():
        assert getattr(training_args, key) == value, key
    assert script_args.reward_funcs == ["iou", "format"]
    assert script_args.freeze_vision_tower
    assert script_args.position_layout == "reference"
    assert (script_args.video_fps, script_args.video_total_pixels, script_args.video_min_pixels) == (
        2.0,
        3584 * 28 * 28,
        16 * 28 * 28,
    )
    assert script_args.dataset == recipe.parent.name


def fake_torchrun(tmp_path) -> dict:
    """An environment whose `torchrun` prints its folder and arguments instead of starting processes."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "torchrun").write_text('#!/usr/bin/env bash\necho "PWD=$PWD"\nprintf "%s\\n" "$@"\n')
    (fake / "torchrun").chmod(0o755)
    # PREFLIGHT=0: these tests look at the arguments torchrun gets for recipes this machine cannot run.
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PREFLIGHT": "0"}
    for name in ("GPUS_PER_NODE", "DEEPSPEED_CONFIG", "RECIPE", "NNODES", "NODE_RANK", "ENTRY"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("cwd", ["", "scripts", "elsewhere"])
def test_launcher_runs_from_any_folder(cwd, tmp_path):
    """The launcher stays in the caller's folder (relative paths mean what a shell means), finds its default recipe,
    reads the multi-node variables and passes flags through."""
    folder = tmp_path if cwd == "elsewhere" else REPO / cwd
    env = {**fake_torchrun(tmp_path), "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "1234", "GPUS_PER_NODE": "8",
           "DEEPSPEED_CONFIG": str(REPO / "scripts" / "zero3_offload.json")}  # fmt: skip
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "run_grpo_video.sh"), "--save_steps", "7"],
        cwd=folder, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert f"PWD={folder}" in lines
    args = lines[lines.index(f"PWD={folder}") + 1 :]
    assert args[args.index("--nnodes") + 1] == "2" and args[args.index("--node_rank") + 1] == "1"
    assert args[args.index("--nproc_per_node") + 1] == "8"
    assert args[args.index("--master_addr") + 1] == "10.0.0.1" and args[args.index("--master_port") + 1] == "1234"
    assert args[args.index("--config") + 1] == str(REPO / "recipes/charades/grpo_qwen2_5_vl_7b.yaml")
    assert Path(args[args.index("--deepspeed") + 1]).is_file()
    assert args[-2:] == ["--save_steps", "7"]


def test_launcher_defaults_on_a_machine_without_gpus(tmp_path):
    """One process and no DeepSpeed without GPUs; a missing recipe names its absolute path; --help starts nothing."""
    env = fake_torchrun(tmp_path)
    script = str(REPO / "scripts" / "run_grpo_video.sh")
    result = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    args = result.stdout.splitlines()
    assert args[args.index("--nproc_per_node") + 1] == "1" and "--deepspeed" not in args
    missing = subprocess.run(["bash", script], cwd=tmp_path, env={**env, "RECIPE": "recipes/nope.yaml"},
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and f"recipe not found: {tmp_path}/recipes/nope.yaml" in missing.stderr
    help_text = subprocess.run(["bash", script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert help_text.returncode == 0 and "PWD=" not in help_text.stdout  # torchrun never started
    for expected in (
        "RECIPE",
        "DEEPSPEED_CONFIG",
        "GPUS_PER_NODE",
        "NNODES",
        "MASTER_ADDR",
        "--config",
        "--video_fps",
    ):
        assert expected in help_text.stdout, expected
    assert help_text.stdout.count("usage:") == 1


@pytest.mark.parametrize("name", ["zero3_offload", "zero3", "zero2"])
def test_deepspeed_configs(name):
    config = json.loads((REPO / "scripts" / f"{name}.json").read_text())
    stage = config["zero_optimization"]["stage"]
    assert stage == (2 if name == "zero2" else 3)
    assert ("offload_param" in config["zero_optimization"]) == (name == "zero3_offload")
    # "auto" lets the HF integration fill batch sizes from the recipe, so the two never disagree.
    assert config["train_micro_batch_size_per_gpu"] == "auto"


def length_reward(completions, **kwargs):
    """A reward with spread inside every group, so one step has a non-zero gradient."""
    return [len(c[0]["content"]) / 10 for c in completions]


@pytest.mark.slow
def test_plain_path_keeps_fp32_master_weights(setup, tmp_path, monkeypatch):
    """At lr 1e-6 a bf16 run without DeepSpeed changes as many LLM weights in one step as an fp32 run does."""
    import torch

    from open_r1 import grpo_video, rewards
    from open_r1.trainer import vision_tower

    monkeypatch.setitem(rewards.REWARD_FUNCS, "length", length_reward)
    initial = {n: p.detach().clone() for n, p in load_model(setup[3]).named_parameters()}

    def fraction_changed(name, *flags):
        flags = ["--max_steps", "1", "--learning_rate", "1e-6", "--beta", "0.0", "--reward_funcs", "length", *flags]
        trainer = cli(base_args(setup, tmp_path / name, *flags))
        model = trainer.model
        visual = {id(p) for p in vision_tower(model).parameters()}
        changed = total = 0
        for param_name, param in model.named_parameters():
            if id(param) in visual:
                continue
            assert param.dtype == torch.float32, param_name  # the trained weights are the fp32 masters
            changed += (param.detach().float() != initial[param_name].float()).sum().item()
            total += param.numel()
        return changed / total

    fp32 = fraction_changed("fp32", "--dtype", "float32")
    plain = fraction_changed("bf16_plain", "--dtype", "bfloat16", "--bf16", "true")
    assert fp32 > 0.5
    assert abs(plain - fp32) < 0.05 * fp32, (plain, fp32)

    # What the plain path did before: AdamW stepping bf16 weights, where most 1e-6 updates round away.
    monkeypatch.setattr(grpo_video, "policy_dtypes", lambda model_args, training_args: (model_args.dtype, None))
    trainer = cli(
        base_args(setup, tmp_path / "bf16_direct", "--max_steps", "1", "--learning_rate", "1e-6", "--beta", "0.0")
        + ["--reward_funcs", "length", "--dtype", "bfloat16", "--bf16", "true"]
    )
    visual = {id(p) for p in vision_tower(trainer.model).parameters()}
    params = [(n, p) for n, p in trainer.model.named_parameters() if id(p) not in visual]
    direct = sum((p.detach().float() != initial[n].bfloat16().float()).sum().item() for n, p in params)
    assert direct / sum(p.numel() for _, p in params) < 0.5 * fp32


def test_reporting_problems_are_found_before_the_model_loads(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from open_r1.grpo_video import check_reporting

    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    args = SimpleNamespace(report_to=["wandb"])
    with pytest.raises(ValueError, match="no wandb API key.*wandb login.*WANDB_MODE=offline.*--report_to none"):
        check_reporting(args)
    check_reporting(SimpleNamespace(report_to=["none"]))  # nothing to check
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_reporting(args)
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    check_reporting(args)
    # The entry point runs the check before anything heavy: a model path that does not exist is never reached.
    (tmp_path / "netrc").unlink()
    with pytest.raises(ValueError, match="no wandb API key"):
        cli(["--model_name_or_path", str(tmp_path / "no_model"), "--dataset", "charades", "--cache_dir",
             str(tmp_path), "--output_dir", str(tmp_path / "out"), "--report_to", "wandb", "--use_cpu", "true"])  # fmt: skip


def test_flash_attention_falls_back_to_sdpa_without_cuda(caplog):
    from open_r1 import modeling

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    modeling._warned_attention.clear()
    assert modeling.resolve_attn_implementation("flash_attention_2") == "sdpa"
    assert modeling.resolve_attn_implementation("flash_attention_2") == "sdpa"
    assert caplog.text.count("flash_attention_2 requested") == 1  # one warning, not one per load
    assert modeling.resolve_attn_implementation("eager") == "eager"


def test_the_accumulation_mismatch_alarm_is_dropped_and_other_lines_kept(caplog, monkeypatch):
    """accelerate's "Gradient accumulation steps mismatch" line (on every DeepSpeed run with accumulation > 1) is
    filtered at the handlers the entry point logs to; everything else still reaches them."""
    import logging

    from open_r1.grpo_video import _QuietAccumulationMismatch, parse_cli

    with pytest.raises(SystemExit):  # parse_cli installs the filter, then argparse stops at --help
        parse_cli((GRPOScriptArguments,), ["--help"])
    assert any(isinstance(f, _QuietAccumulationMismatch) for h in logging.getLogger().handlers for f in h.filters)
    accelerate_logger = logging.getLogger("accelerate.accelerator")
    accelerate_logger.warning(
        "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has 2. "
        "Using DeepSpeed's value."
    )
    accelerate_logger.warning("a different warning")
    assert "accumulation steps mismatch" not in caplog.text and "a different warning" in caplog.text
