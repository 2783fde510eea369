"""The shipped GPU recipes as written (flash_attention_2, bf16, gradient checkpointing, accumulation 2, whole groups,
shared work, the paper's 8 completions), end to end on CPU: GRPO, data selection and the SFT warm start.

transformers' own flash-attention code runs (its kernel lookup by name, unpadding, varlen calls, the vision tower's
windows) on the flash-attn stand-in, which replaces only the CUDA kernels and refuses fp32 as flash-attn does. Only
what cannot run here is overridden: the tiny model, the synthetic videos and their pixel budget, the step count and
the completion length, ``--use_cpu`` (transformers allows --bf16 on a CPU only with it), reporting and checkpoints.
Each test asserts that the flash kernels ran.
"""

import json
from pathlib import Path

import flash_attn_stand_in
import pytest
from _entry_points import VIDEO_FLAGS, tiny_setup

from open_r1 import decoding

REPO = Path(__file__).resolve().parents[1]
GRPO_RECIPE = REPO / "recipes" / "charades" / "grpo_qwen2_5_vl_7b.yaml"
SFT_RECIPE = REPO / "recipes" / "charades" / "sft_qwen2_5_vl_7b.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory, "flash_recipes")


def recipe_args(setup, recipe: Path, output_dir: Path, *extra: str) -> list[str]:
    root, annotations, video_dir, model = setup
    return [
        "--config", str(recipe),
        "--model_name_or_path", str(model),
        "--annotation_file", str(annotations),
        "--video_dir", str(video_dir),
        "--cache_dir", str(root / "no_cache"),
        "--output_dir", str(output_dir),
        "--use_cpu", "true",
        "--report_to", "none",
        "--save_strategy", "no",
        *VIDEO_FLAGS,
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_grpo_recipe_trains_through_flash_attention(setup, tmp_path, flash_attn, monkeypatch):
    from open_r1.grpo_video import cli

    monkeypatch.setattr(decoding, "COMPILE_BACKEND", "eager")  # dynamo's capture without inductor's C++ build
    trainer = cli(recipe_args(setup, GRPO_RECIPE, tmp_path / "grpo", "--max_steps", "1",
                              "--max_completion_length", "8", "--decode", "static"))  # fmt: skip
    args = trainer.args
    assert (args.bf16, args.gradient_checkpointing, args.gradient_accumulation_steps) == (True, True, 2)
    assert (trainer.num_generations, args.per_device_train_batch_size) == (8, 8)
    assert trainer.shared_work and trainer.whole_groups
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.config._attn_implementation == "flash_attention_2"
    assert model.model.language_model.config._attn_implementation == "flash_attention_2"
    # The tower's windows and the shared prefill over the padded prompts ran on the flash kernels; the decode steps
    # compiled once (sdpa over the static cache); the packed log-prob passes went to sdpa.
    assert flash_attn_stand_in.kernel_calls(flash_attn) > 0
    assert trainer._static_decoder.compile and len(trainer._static_decoder.shapes) == 1
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 1 and logs[0]["grad_norm"] > 0


@pytest.mark.slow
def test_data_selection_with_the_recipe_runs_the_flash_kernels(setup, tmp_path, flash_attn):
    from open_r1.select_data import cli

    out = tmp_path / "selection"
    report = cli(recipe_args(setup, GRPO_RECIPE, out, "--max_completion_length", "8"))
    assert flash_attn_stand_in.kernel_calls(flash_attn) > 0
    scored = [json.loads(line) for path in out.glob("scores.rank*.jsonl") for line in path.read_text().splitlines()]
    assert len(scored) == report["counts"]["queries"] == 4 and all(len(s["total"]) == 8 for s in scored)


@pytest.mark.slow
def test_sft_recipe_trains_through_flash_attention(setup, tmp_path, flash_attn):
    from open_r1.sft_video import cli

    trainer = cli(recipe_args(setup, SFT_RECIPE, tmp_path / "sft", "--max_steps", "1",
                              "--gradient_accumulation_steps", "1", "--logging_steps", "1"))  # fmt: skip
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.config._attn_implementation == "flash_attention_2" and trainer.args.bf16
    # 4 answers of different lengths in one padded batch: transformers unpads them into varlen calls.
    assert flash_attn["flash_attn_varlen_func"] > 0
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 1 and logs[0]["loss"] > 0
