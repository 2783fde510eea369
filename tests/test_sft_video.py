"""The supervised warm start (open_r1.sft_video): GRPO's prompt layout, loss on the answer tokens only, training on
one and two processes, and a checkpoint that GRPO and evaluation load."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _entry_points import VIDEO_FLAGS, common_args, tiny_setup
from trl import ModelConfig, SFTConfig, TrlParser

from open_r1.grounding import parse_span
from open_r1.modeling import encode_batch, load_model, load_processor
from open_r1.prompts import build_answer, build_conversation
from open_r1.rewards import format_reward
from open_r1.sft_video import SFTScriptArguments, VideoSFTCollator, build_dataset, cli
from open_r1.trainer import vision_tower
from open_r1.video import VideoSource

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory, "sft")


def args_for(setup, output_dir, *extra):
    return common_args(setup, output_dir, "--learning_rate", "3e-3", "--seed", "0", *extra)


def test_answer_text_is_what_the_rewards_accept():
    text = build_answer(5.0, 11.6)
    assert text == "<think></think><answer>5.00 to 11.60</answer>"
    assert parse_span(text) == (5.0, 11.6)
    assert format_reward([text]) == [1.0]
    assert build_answer(1, 2, think=False) == "<answer>1.00 to 2.00</answer>"


def test_collator_labels_only_the_answer_in_the_grpo_layout(setup):
    _, annotations, video_dir, model_dir = setup
    parser = TrlParser((SFTScriptArguments,))
    (script_args,) = parser.parse_args_into_dataclasses(
        args=["--annotation_file", str(annotations), "--video_dir", str(video_dir), *VIDEO_FLAGS]
    )
    from open_r1.data import load_annotations

    rows = load_annotations(annotations)[:3]
    # One answer longer than the others (two-digit times), so the shorter ones are padded on the right: padding must
    # never be labelled.
    rows[0] = {**rows[0], "windows": [[10.5, 12.25]], "duration": 13.0}
    features = list(build_dataset(rows, script_args))
    processor = load_processor(model_dir)
    source = VideoSource(script_args.to_settings(), video_dir=str(video_dir))
    batch = VideoSFTCollator(processor, source.get)(features)

    tokenizer = processor.tokenizer
    prompt = encode_batch(processor, [f["prompt"] for f in features], [source.get(f["video_id"]) for f in features])
    width = prompt["input_ids"].size(1)
    # The prompt side is exactly what GRPO's rollout encodes (left padding, video tensors, type ids).
    assert torch.equal(batch["input_ids"][:, :width], prompt["input_ids"])
    assert torch.equal(batch["pixel_values_videos"], prompt["pixel_values_videos"])
    assert torch.equal(batch["mm_token_type_ids"][:, :width], prompt["mm_token_type_ids"])
    assert not batch["mm_token_type_ids"][:, width:].any()
    for row, (feature, source_row) in enumerate(zip(features, rows)):
        labelled = batch["labels"][row] != -100
        assert not labelled[:width].any()  # nothing of the prompt is trained
        text = tokenizer.decode(batch["labels"][row][labelled])
        start, end = source_row["windows"][0]
        assert text == build_answer(start, end) + "<|im_end|>"
        assert feature["answer"] == build_answer(start, end)
        assert torch.equal(batch["attention_mask"][row][width:].bool(), labelled[width:])
    padded = batch["attention_mask"][:, width:] == 0
    assert padded[1:].any(dim=1).all() and not padded[0].any()  # the shorter answers are padded
    assert (batch["labels"][:, width:][padded] == -100).all()


@pytest.mark.slow
def test_trains_the_answer_and_saves_a_checkpoint_grpo_and_evaluation_load(setup, tmp_path):
    out = tmp_path / "sft"
    before = {n: p.detach().clone() for n, p in load_model(setup[3]).named_parameters()}
    trainer = cli(args_for(setup, out, "--max_steps", "12"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    # Observed: the mean loss of the first 3 steps 7.3, of the last 3 5.5 (answer tokens only, lr 3e-3).
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    model = load_model(out)
    processor = load_processor(out)
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    visual = {f"model.visual.{n}" for n, _ in vision_tower(model).named_parameters()}
    for name, param in model.named_parameters():
        if name in visual:
            assert torch.equal(param, before[name]), name  # frozen by default, as in GRPO
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n not in visual)


@pytest.mark.slow
def test_loss_is_the_mean_nll_of_the_answer_tokens(setup, tmp_path):
    """SFTTrainer's loss on a batch equals -mean log p(answer token) from a direct forward with the video."""
    from trl import SFTTrainer

    _, annotations, video_dir, model_dir = setup
    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, _ = parser.parse_args_and_config(args=args_for(setup, tmp_path / "x"))
    from open_r1.data import load_annotations

    rows = load_annotations(annotations)
    source = VideoSource(script_args.to_settings(), video_dir=str(video_dir))
    processor = load_processor(model_dir)
    collator = VideoSFTCollator(processor, source.get)
    batch = collator(list(build_dataset(rows, script_args)))
    model = load_model(model_dir)
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=build_dataset(rows, script_args),
        processing_class=processor,
        data_collator=collator,
    )
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logps = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    expected = -(logps[mask]).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert mask.sum() == sum(len(processor.tokenizer(build_answer(*r["windows"][0]))["input_ids"]) + 1 for r in rows)


@pytest.mark.slow
def test_two_processes_ddp(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank trains on its share and rank 0 saves one checkpoint."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "open_r1.sft_video",
        *args_for(setup, out, "--max_steps", "3", "--per_device_train_batch_size", "2"),
        "--save_strategy", "steps", "--save_steps", "3",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    # 4 queries, 2 per process per step: with both processes each step is a whole epoch (one process: half).
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["epoch"] == 3.0
    assert (out / "model.safetensors").is_file()
    assert load_model(out).config.video_token_id == load_processor(out).tokenizer.convert_tokens_to_ids(
        "<|video_pad|>"
    )


def test_launcher_runs_the_warm_start_entry(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (fake / "torchrun").chmod(0o755)
    # PREFLIGHT=0: only the arguments torchrun gets matter here (the Charades recipe cannot run on this machine).
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PREFLIGHT": "0"}
    env.pop("RECIPE", None)
    out = subprocess.run(
        ["bash", "scripts/run_sft_video.sh", "--max_steps", "1"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    args = out.stdout.splitlines()
    assert args[args.index("-m") + 1] == "open_r1.sft_video"
    assert args[args.index("--config") + 1] == str(REPO / "recipes/charades/sft_qwen2_5_vl_7b.yaml")
    assert args[-2:] == ["--max_steps", "1"]


def test_recipe_parses(tmp_path):
    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", str(REPO / "recipes/charades/sft_qwen2_5_vl_7b.yaml"), "--output_dir", str(tmp_path)]
        + ["--bf16", "false", "--use_cpu", "true"]
    )
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert script_args.position_layout == "reference" and script_args.freeze_vision_tower
    assert (script_args.video_fps, script_args.video_total_pixels) == (2.0, 3584 * 28 * 28)
    assert training_args.warmup_steps == 0.03 and training_args.num_train_epochs == 1
    assert build_conversation("a")[0]["content"]  # the same prompt builder as GRPO


@pytest.mark.slow
def test_the_launcher_runs_the_demo_sft_recipe_on_a_cpu(tmp_path):
    """`RECIPE=recipes/demo/sft_tiny.yaml bash scripts/run_sft_video.sh` from a folder laid out like the demo's output
    (before: 11 flags to override the Charades recipe); its log speaks of no reference model (SFT has none)."""
    from open_r1.demo import make_split
    from open_r1.modeling import build_tiny_model

    repo = Path(__file__).resolve().parents[1]
    demo = tmp_path / "outputs" / "demo"
    build_tiny_model(demo / "random_model")
    make_split(demo / "data" / "train", 2, 1, "train", demo / "data" / "cache")
    env = {**os.environ, "RECIPE": str(repo / "recipes" / "demo" / "sft_tiny.yaml"), "OMP_NUM_THREADS": "2"}
    for name in ("GPUS_PER_NODE", "DEEPSPEED_CONFIG", "WANDB_MODE", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "run_sft_video.sh"), "--max_steps", "2", "--per_device_train_batch_size", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "deepspeed=none" in result.stdout and "Traceback" not in result.stderr
    assert (demo / "sft_launcher" / "model.safetensors").is_file()
    assert "reference model" not in result.stderr
