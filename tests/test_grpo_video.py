"""The training entry point end to end on a synthetic dataset of real mp4 files, and its early checks."""

import json

import pytest

from open_r1.grpo_video import cli
from open_r1.modeling import build_tiny_model, load_model, load_processor
from open_r1.synthetic import make_grounding_dataset

# Tiny frames: 56x56 after resizing, 2 fps -> 8 temporal steps x 4 merged tokens = 32 video tokens per query.
VIDEO_FLAGS = ["--video_min_pixels", "3136", "--video_total_pixels", str(3136 * 16)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    annotations, video_dir = make_grounding_dataset(root / "data", num_videos=4, duration=4.0, fps=4.0)
    model = build_tiny_model(root / "tiny")
    return root, annotations, video_dir, model


def base_args(setup, output_dir, *extra):
    _, annotations, video_dir, model = setup
    return [
        "--model_name_or_path", str(model),
        "--annotation_file", str(annotations),
        "--video_dir", str(video_dir),
        "--output_dir", str(output_dir),
        "--use_cpu", "true",
        "--bf16", "false",
        "--per_device_train_batch_size", "4",
        "--num_generations", "4",
        "--max_completion_length", "8",
        "--beta", "0.04",
        "--loss_type", "grpo",
        "--report_to", "none",
        "--logging_steps", "1",
        "--save_strategy", "no",
        *VIDEO_FLAGS,
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_trains_and_saves_a_loadable_checkpoint(setup, tmp_path):
    out = tmp_path / "run"
    trainer = cli(base_args(setup, out, "--max_steps", "2"))
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    for key in ("rewards/iou_reward/mean", "rewards/format_reward/mean", "kl", "completions/mean_length"):
        assert all(key in e for e in logs), key
    # Model and processor side by side: what evaluate.py --model_base needs.
    assert (out / "model.safetensors").is_file()
    assert (out / "preprocessor_config.json").is_file() or (out / "processor_config.json").is_file()
    processor = load_processor(out)
    model = load_model(out)
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")


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
    with pytest.raises(ValueError, match="nonexistent"):
        cli(["--config", str(recipe), *args])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
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
    with pytest.raises(FileNotFoundError, match=r"2 of 6 videos .*ghost_1, ghost_2"):
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
