"""open_r1.preflight: training, the warm start and evaluation check everything they can before loading anything and
name every problem in one message, in seconds and without a network."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _entry_points import common_args, tiny_setup

from open_r1.configs import EvalArguments
from open_r1.grpo_video import cli as train_cli
from open_r1.preflight import Preflight, PreflightError, model_problem, output_problem
from open_r1.sft_video import cli as warm_start_cli

FAST = 10.0  # seconds: the bound for a pre-flight failure without network


def fails_fast(run, args) -> str:
    """``run(args)``'s PreflightError message, after checking it came within :data:`FAST` seconds."""
    started = time.perf_counter()
    with pytest.raises(PreflightError) as caught:
        run(args)
    assert time.perf_counter() - started < FAST
    return str(caught.value)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory, "preflight")


def entry_args(setup, output_dir, grpo: bool, **replace):
    extra = ["--num_generations", "4", "--max_completion_length", "8"] if grpo else []
    args = common_args(setup, output_dir, *extra)
    for flag, value in replace.items():
        args[args.index(f"--{flag}") + 1] = value
    return args


@pytest.mark.parametrize("offline", [False, True], ids=["online_without_network", "offline"])
@pytest.mark.parametrize("entry", [train_cli, warm_start_cli], ids=["training", "warm_start"])
def test_a_hub_looking_missing_model_and_a_missing_cache_are_named_together(
    setup, tmp_path, monkeypatch, entry, offline
):
    # `outputs/my_run` where ./outputs does not exist looks like a Hub id: before, it retried the Hub for minutes,
    # and the missing cache was reported first without naming the model.
    monkeypatch.chdir(tmp_path)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = entry_args(
        setup,
        tmp_path / "out",
        entry is train_cli,
        model_name_or_path="outputs/my_run",
        video_dir=str(tmp_path / "no_videos"),
    )
    message = fails_fast(entry, args)
    assert "2 problems" in message
    assert "'outputs/my_run': not a local folder" in message
    assert ("offline mode" if offline else "could not be reached") in message
    assert "4 of 4 videos (4 of 4 queries) are not available" in message and str(tmp_path / "no_videos") in message


def test_offline_hub_id_fails_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    problem = model_problem("my-org/model")
    assert time.perf_counter() - started < FAST
    assert "offline mode (HF_HUB_OFFLINE) has no cached copy" in problem


def test_a_model_folder_without_config_is_named(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    assert (
        model_problem(tmp_path / "ckpt")
        == f"no config.json in the model folder {tmp_path / 'ckpt'} (a checkpoint folder holds config.json)"
    )
    (tmp_path / "weights.bin").write_bytes(b"")
    assert "is a file, not a model folder" in model_problem(tmp_path / "weights.bin")


def test_output_folder_problems(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in output_problem(tmp_path / "file")
    assert "cannot be created" in output_problem(tmp_path / "file" / "run")
    assert output_problem(tmp_path / "new" / "run") is None


def test_evaluation_names_model_annotation_and_output_together(setup, tmp_path):
    from open_r1.evaluation import run_evaluation

    (tmp_path / "taken").write_text("a file where the output folder should go")
    args = EvalArguments(
        model_base=str(tmp_path / "no_model"),
        annotation_file=str(tmp_path / "missing.json"),
        video_dir=str(setup[2]),
        output_dir=str(tmp_path / "taken"),
    )
    message = fails_fast(run_evaluation, args)
    assert "evaluation: 3 problems" in message
    assert "model folder not found" in message and "no_model" in message
    assert "missing.json" in message
    assert "is a file, not a folder" in message


def test_one_problem_keeps_its_own_type_and_message():
    checks = Preflight("job")
    checks.run(open, "/surely/not/a/file")
    with pytest.raises(FileNotFoundError, match="/surely/not/a/file"):
        checks.finish()
    fine = Preflight("job")
    assert fine.run(int, "7") == 7
    fine.finish()  # nothing to report


@pytest.fixture
def checkpoint(tmp_path):
    """A copy of the bundled warm start (a complete, loadable checkpoint) to damage."""
    import shutil

    from open_r1.demo import BUNDLED_WARM_START

    return Path(shutil.copytree(BUNDLED_WARM_START, tmp_path / "ckpt"))


def test_a_complete_checkpoint_passes(checkpoint):
    assert model_problem(checkpoint) is None


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda c: (c / "tokenizer.json").unlink(), "no tokenizer in"),
        (lambda c: (c / "processor_config.json").unlink(), "no processor config in"),
        (lambda c: (c / "chat_template.jinja").unlink(), "no chat template in"),
        (lambda c: (c / "model.safetensors").unlink(), "no weights in"),
        (lambda c: (c / "config.json").write_text("{broken"), "config.json is not readable JSON"),
        (
            lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:-1000]),
            "model.safetensors is truncated or damaged",
        ),
        (lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 4), "model.safetensors is truncated or not"),
        (
            lambda c: (c / "config.json").write_text(
                json.dumps(
                    {
                        **json.loads((c / "config.json").read_text()),
                        "text_config": {
                            **json.loads((c / "config.json").read_text())["text_config"],
                            "vocab_size": 999,
                        },
                    }
                )
            ),
            "model.embed_tokens.weight is [2112, 64], but config.json says vocab_size 999",
        ),
        (lambda c: (c / "config.json").write_text("{}"), "gives no vocab_size, hidden_size, num_hidden_layers"),
        (
            lambda c: (c / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"})),
            "would build a default-size model",
        ),
    ],
)
def test_a_damaged_checkpoint_is_named_before_loading(checkpoint, damage, named):
    # Before: a missing config built a default-size model (killed for memory), missing tokenizer files scored every
    # query 0 with exit 0, a truncated file or bad JSON failed deep in the loaders without the path.
    damage(checkpoint)
    problem = model_problem(checkpoint)
    assert problem and named in problem and str(checkpoint) in problem


def test_demo_checks_its_warm_start_before_any_work(checkpoint, tmp_path):
    from open_r1.demo import run_demo

    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json in the model folder"):
        run_demo(tmp_path / "demo", warm_start=checkpoint)
    assert not (tmp_path / "demo").exists()


def test_evaluation_fails_when_no_query_could_be_generated(tmp_path):
    from open_r1.evaluation.runner import check_generation_worked

    path = tmp_path / "predictions.jsonl"
    record = {"query_id": "q", "video_id": "v", "query": "x", "gt": [[1.0, 2.0]], "output": None, "error": "generation_error",
              "detail": "ValueError: tokenizer files missing"}  # fmt: skip
    path.write_text(json.dumps(record) + "\n")
    all_failed = {
        "num_queries": 3,
        "failures": {"generation_error": 2, "missing_video": 1},
        "output_dir": str(tmp_path),
    }
    with pytest.raises(RuntimeError, match="every one of the 2 queries .*tokenizer files missing"):
        check_generation_worked(all_failed, "ckpt")
    check_generation_worked({**all_failed, "failures": {"generation_error": 1, "missing_video": 1}}, "ckpt")


def test_two_checkpoint_problems_are_named_together(checkpoint):
    """No weights and no tokenizer: both in the one message, each naming the folder (not the first one, then the
    other on the next try)."""
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "tokenizer.json").unlink()
    problem = model_problem(checkpoint)
    assert "no weights in" in problem and "no tokenizer in" in problem and problem.count(str(checkpoint)) >= 2


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--temperature", "nan"], "--temperature nan"),  # TRL's own flags too
        (["--learning_rate", "inf"], "--learning_rate inf"),
        (["--video_fps", "nan"], "--video_fps nan"),
        (["--reward_weights", "1.0", "nan", "--reward_funcs", "iou", "format"], "--reward_weights [1.0, nan]"),
    ],
)
def test_training_flags_refuse_nan_and_inf_by_name(tmp_path, flags, named):
    from trl import GRPOConfig, ModelConfig

    from open_r1.configs import GRPOScriptArguments
    from open_r1.grpo_video import parse_cli

    base = ["--model_name_or_path", "m", "--annotation_file", "a.json", "--video_dir", "v", "--output_dir",
            str(tmp_path), "--use_cpu", "true", "--bf16", "false"]  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(named) + ": numeric flags must be finite numbers"):
        parse_cli((GRPOScriptArguments, GRPOConfig, ModelConfig), base + flags)


def test_evaluation_selection_and_preprocessing_refuse_nan():
    from open_r1.configs import EvalArguments, VideoSettings
    from open_r1.select_data import SelectionArguments

    with pytest.raises(ValueError, match=r"--video_fps nan: numeric flags must be finite"):
        EvalArguments(model_base="m", annotation_file="a.json", video_dir="v", video_fps=float("nan"))
    with pytest.raises(ValueError, match=r"--min_reward_std nan: numeric flags must be finite"):
        SelectionArguments(min_reward_std=float("nan"))  # kept every query and wrote NaN into its report before
    with pytest.raises(ValueError, match="fps must be a positive number, got nan"):
        VideoSettings(fps=float("nan"))  # preprocessing's flags become these settings


def test_abbreviated_flags_are_refused_by_every_entry_point(tmp_path):
    """`--model_name_or_pat` used to match `--model_name_or_path` and train: a typo must fail as an unknown flag does
    (argparse's prefix matching is off everywhere)."""
    from trl import GRPOConfig, ModelConfig, SFTConfig

    from open_r1.configs import GRPOScriptArguments
    from open_r1.evaluate import main as evaluate_main
    from open_r1.grpo_video import parse_cli
    from open_r1.preprocess import build_parser
    from open_r1.select_data import SelectionArguments
    from open_r1.sft_video import SFTScriptArguments

    base = ["--annotation_file", "a.json", "--video_dir", "v", "--output_dir", str(tmp_path), "--use_cpu", "true",
            "--bf16", "false"]  # fmt: skip
    for types in ((GRPOScriptArguments, GRPOConfig, ModelConfig), (SFTScriptArguments, SFTConfig, ModelConfig),
                  (GRPOScriptArguments, GRPOConfig, ModelConfig, SelectionArguments)):  # fmt: skip
        with pytest.raises(ValueError, match="not used by the HfArgumentParser.*--model_name_or_pat"):
            parse_cli(types, ["--model_name_or_pat", "m", *base])
        assert parse_cli(types, ["--model_name_or_path", "m", *base])  # the full name still works
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(["--model_bas", "m", "--annotation_file", "a.json", "--video_dir", "v"])
    assert stopped.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["charades", "--video_di", "v", "--output_dir", str(tmp_path)])
    demo = subprocess.run([sys.executable, "-m", "open_r1.demo", "--output_di", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert demo.returncode == 2 and "unrecognized arguments: --output_di" in demo.stderr


def test_evaluation_problems_are_one_message_directly_and_through_the_script(tmp_path):
    """A missing checkpoint and a missing annotation file: `python evaluate.py` and `bash scripts/evaluate.sh` (its
    pre-flight before torchrun) print one `pre-flight (evaluation): ...` message naming both, exit 2, no traceback."""
    repo = Path(__file__).resolve().parents[1]
    flags = ["--model_base", str(tmp_path / "no_model"), "--annotation_file", str(tmp_path / "no.json"),
             "--video_dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "NPROC_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": ""}
    for command in ([sys.executable, str(repo / "evaluate.py")], ["bash", str(repo / "scripts" / "evaluate.sh")]):
        result = subprocess.run([*command, *flags], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "pre-flight (evaluation): evaluation: 2 problems" in result.stderr
        assert "no_model" in result.stderr and "no.json" in result.stderr
        assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
