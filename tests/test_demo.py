"""The demo end to end on a shortened schedule: every stage runs and hands the right files on."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from open_r1.demo import (
    CHECKPOINT_FILES,
    SPLITS,
    STAGES,
    constant_predictions,
    export_checkpoint,
    make_data,
    paired_change,
    reward_trend,
    run_demo,
)
from open_r1.demo import main as demo_main
from open_r1.evaluation import compute_metrics


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo on a shortened schedule: 3 warm-start steps (unchecked: tests/test_demo_bench.py checks the warm start
    check), 2 GRPO steps, 8 training videos."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, sft_steps=3, grpo_steps=2, train_videos=8, check_warm_start=False)


@pytest.mark.slow
def test_every_stage_is_scored_on_the_held_out_videos(demo):
    out, summary = demo
    assert json.loads((out / "summary.json").read_text()) == summary
    for stage in STAGES:
        assert summary[stage]["num_queries"] == SPLITS["test"][0] >= 200  # held-out videos x 1 event
        for key in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU"):
            assert 0.0 <= summary[stage][key] <= 100.0
    assert summary["warm_start"] == str(out / "warm_start")
    change = summary["grpo_vs_sft"]["mIoU_change"]  # the mean per-query change is the change of mIoU
    assert change["num_queries"] == SPLITS["test"][0]
    assert abs(change["mean"] - (summary["grpo"]["mIoU"] - summary["sft"]["mIoU"])) <= 0.02
    assert summary["grpo_vs_sft"]["train_iou_reward"]["window"] == 2  # both GRPO steps
    for key in ("zero_std_share", "group_reward_std"):
        assert summary["grpo_vs_sft"][key]["window"] == 2, key
    # Selection scored every training query; a 3-step warm start answers too alike to leave a GRPO step's worth of
    # queries whose rewards differ, or it does not: either way the summary says which file GRPO trained on.
    selection = summary["selection"]
    assert selection["counts"]["queries"] == 8
    assert sum(selection["counts"][k] for k in ("kept", "equal_rewards", "low_std", "solved")) == 8
    assert selection["used"] == (selection["counts"]["kept"] >= 2)
    assert (out / "demo_plot.png").stat().st_size > 10_000
    assert (out / "grpo" / "model.safetensors").is_file()
    # One cache entry per video: 8 training, the held-out ones and their all-background copies.
    assert len(list((out / "data" / "cache").glob("*.safetensors"))) == 8 + 2 * SPLITS["test"][0]


@pytest.mark.slow
def test_the_constant_baseline_is_fitted_on_training_queries_only(demo):
    out, summary = demo
    splits = {name: out / "data" / name / "annotations.json" for name in ("train", "test")}
    records = constant_predictions(splits["train"], splits["test"])
    assert len({r["output"] for r in records}) == 1  # one span for every query
    assert compute_metrics(records)["mIoU"] == summary["constant"]["mIoU"]
    # Fitting on the held-out split instead can only do at least as well there.
    assert compute_metrics(constant_predictions(splits["test"], splits["test"]))["mIoU"] >= summary["constant"]["mIoU"]


@pytest.mark.slow
def test_an_exported_warm_start_keeps_only_what_loads_and_trains_on(demo, tmp_path):
    """How the bundled warm start is made: the trainer's folder minus its pickled arguments; GRPO starts from it."""
    from open_r1.modeling import load_model

    out, _ = demo
    assert (out / "warm_start" / "training_args.bin").is_file()
    exported = export_checkpoint(out / "warm_start", tmp_path / "export")
    # What loads, and the prompt format the warm start was trained with (open_r1.timestamps).
    assert sorted(p.name for p in exported.iterdir()) == sorted([*CHECKPOINT_FILES, "prompt_format.json"])
    assert json.loads((exported / "prompt_format.json").read_text())["timestamps"] == "mrope"
    original = load_model(out / "warm_start", attn_implementation="sdpa", dtype="float32").state_dict()
    copy = load_model(exported, attn_implementation="sdpa", dtype="float32").state_dict()
    assert all(original[name].equal(copy[name]) for name in original)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        export_checkpoint(out / "data", tmp_path / "not_a_checkpoint")


def test_paired_change_and_reward_trend():
    before = [{"query_id": "a", "iou": 0.0}, {"query_id": "b", "iou": 0.5}, {"query_id": "c", "error": "no parse"}]
    after = [{"query_id": "c", "iou": 0.25}, {"query_id": "a", "iou": 1.0}, {"query_id": "b", "iou": 0.5}]
    # Changes 25, 100, 0 points: mean 41.67, sample standard deviation 52.04, over sqrt(3).
    assert paired_change(before, after) == {"mean": 41.67, "standard_error": 30.05, "num_queries": 3}
    log = [{"rewards/iou_reward/mean": value, "step": step} for step, value in enumerate([0.1, 0.2, 0.3, 0.5], 1)]
    assert reward_trend(log + [{"train_loss": 1.0}], window=2) == {"first": 0.15, "last": 0.4, "window": 2}
    assert reward_trend(log, window=20) == {"first": 0.275, "last": 0.275, "window": 4}


def test_blank_videos_keep_the_held_out_queries(tmp_path):
    from open_r1.data import load_annotations

    splits = make_data(tmp_path, train_videos=2)
    test, blank = load_annotations(splits["test"]), load_annotations(splits["blank"])
    assert [(r["query"], r["windows"], r["duration"]) for r in test] == [
        (r["query"], r["windows"], r["duration"]) for r in blank
    ]
    assert len({r["video_id"] for r in load_annotations(splits["train"])} & {r["video_id"] for r in test}) == 0


REPO = Path(__file__).resolve().parents[1]


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_launcher_runs_the_demo_recipe_on_a_cpu(tmp_path):
    """`RECIPE=recipes/demo/grpo_tiny.yaml bash scripts/run_grpo_video.sh` from a folder laid out like the demo's
    output: one process, no DeepSpeed, fp32, sdpa, nothing reported; 2 steps, then a checkpoint evaluation can load."""
    from open_r1.demo import make_split
    from open_r1.modeling import build_tiny_model

    demo = tmp_path / "outputs" / "demo"
    build_tiny_model(demo / "warm_start")
    annotations = make_split(demo / "data" / "train", 2, 1, "train", demo / "data" / "cache")
    assert annotations == demo / "data" / "train" / "annotations.json"
    env = {**os.environ, "RECIPE": str(REPO / "recipes" / "demo" / "grpo_tiny.yaml"), "OMP_NUM_THREADS": "2"}
    for name in ("GPUS_PER_NODE", "DEEPSPEED_CONFIG", "WANDB_MODE", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "run_grpo_video.sh"), "--max_steps", "2", "--save_strategy", "steps",
         "--save_steps", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "processes/node=1" in result.stdout and "deepspeed=none" in result.stdout
    out = demo / "grpo_launcher"
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    assert (out / "checkpoint-2").is_dir()
    card = (out / "README.md").read_text()  # written by TRL at the checkpoint
    assert "[None]" not in card and str(demo / "warm_start") in card
    assert result.stderr.count("Traceback") == 0


def launcher(cwd: Path, recipe: Path | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for name in ("GPUS_PER_NODE", "DEEPSPEED_CONFIG", "CUDA_VISIBLE_DEVICES", "RECIPE"):
        env.pop(name, None)
    if recipe is not None:
        env["RECIPE"] = str(recipe)
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "run_grpo_video.sh")], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_the_launcher_names_every_problem_before_starting_workers(tmp_path):
    # The walk-through's command before the demo ran: before, 57 lines of torchrun traceback per problem, one problem
    # per run; now one message naming the model and the data, and no worker started.
    result = launcher(tmp_path, REPO / "recipes" / "demo" / "grpo_tiny.yaml")
    assert result.returncode == 2
    assert "pre-flight (training): training: 2 problems" in result.stderr
    assert f"model folder not found: {tmp_path / 'outputs' / 'demo' / 'warm_start'}" in result.stderr
    assert f"annotation file not found: {tmp_path / 'outputs' / 'demo' / 'data' / 'train' / 'annotations.json'}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and "torch.distributed" not in result.stderr


@pytest.mark.skipif(torch_cuda_available(), reason="the GPU recipe runs on a GPU")
def test_the_gpu_recipe_on_a_cpu_points_to_the_cpu_recipe(tmp_path):
    result = launcher(tmp_path, None)  # the Charades recipe: bf16 (before: transformers' "setup doesn't support bf16")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--bf16 true (the GPU recipes' setting) needs a GPU" in result.stderr
    assert "RECIPE=recipes/demo/grpo_tiny.yaml" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_videos", "0"], "--train_videos: must be at least 1, got 0"),  # before: silently 256
        (["--train_videos", "-3"], "--train_videos: must be at least 1, got -3"),
        (["--grpo_steps", "-5"], "--grpo_steps: must be at least 1, got -5"),  # before: whole epochs
        (["--sft_steps", "0"], "--sft_steps: must be at least 1, got 0"),
        (["--sft_steps", "x"], "--sft_steps: not an integer: 'x'"),
        (["--grpo_lr", "0"], "--grpo_lr: must be a positive number, got 0"),
    ],
)
def test_demo_flags_are_checked_before_any_work(flags, message, capsys):
    with pytest.raises(SystemExit) as caught:
        demo_main(flags)
    assert caught.value.code == 2 and message in capsys.readouterr().err


def test_demo_output_dir_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SystemExit):
        demo_main(["--output_dir", str(tmp_path / "taken")])
    assert f"--output_dir {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_the_bundled_warm_start_lands_where_the_walk_through_looks(tmp_path):
    from open_r1.demo import BUNDLED_WARM_START, place_warm_start

    # recipes/demo/grpo_tiny.yaml starts from OUTPUT/warm_start; before, `--warm_start bundled` left it empty and the
    # walk-through's next command failed with "model folder not found".
    recipe = yaml.safe_load((REPO / "recipes" / "demo" / "grpo_tiny.yaml").read_text())
    assert recipe["model_name_or_path"] == "outputs/demo/warm_start"
    placed = place_warm_start(BUNDLED_WARM_START, tmp_path)
    assert placed == tmp_path / "warm_start"
    for name in CHECKPOINT_FILES:
        assert (placed / name).read_bytes() == (BUNDLED_WARM_START / name).read_bytes(), name
    assert place_warm_start(placed, tmp_path) == placed  # already there: left as it is


def test_cpu_threads_are_one_unless_asked(monkeypatch):
    from open_r1.modeling import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads("the demo")[0] == 1  # contention-proof, and the same numbers on a busy or an idle machine
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads("the demo") == (3, "OMP_NUM_THREADS")


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_cleanly(tmp_path):
    """Before: a traceback after ~35 s. Now: a one-line message naming the output folder, exit status 130."""
    import signal
    import sys
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "open_r1.demo", "--output_dir", str(tmp_path / "demo"), "--train_videos", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    for line in process.stdout:
        if line.startswith("1/6"):
            break
    time.sleep(1.0)
    started = time.perf_counter()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert time.perf_counter() - started < 30
    assert "Traceback" not in err and f"interrupted; what was written so far is in {tmp_path / 'demo'}" in out


def test_ctrl_c_ends_the_demo_even_when_an_extension_swallows_the_interrupt(tmp_path):
    """Some C extensions (PyAV's write callbacks) print and drop an exception raised inside them, so the demo would run
    on after Ctrl-C; the watchdog ends it with the same line and exit status 130."""
    import signal
    import sys
    import time

    code = (
        "import time\nfrom pathlib import Path\nfrom open_r1.demo import stop_on_ctrl_c\n"
        f"stop_on_ctrl_c(Path({str(tmp_path)!r}), grace_s=1.0)\nprint('ready', flush=True)\n"
        "while True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass  # swallowed\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # inside the loop that swallows the interrupt
    started = time.perf_counter()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert 1.0 <= time.perf_counter() - started < 10
    assert f"interrupted; what was written so far is in {tmp_path}" in out and "Traceback" not in err


def test_the_demo_samples_as_its_recipe_says(tmp_path):
    """One source of truth for the demo's sampling: its GRPO and selection config and recipes/demo/grpo_tiny.yaml agree
    (before, the demo left TRL's top_k 0 while the recipe said 50, and `select_data --config` on the recipe refused the
    demo's own scores)."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    from open_r1.configs import GRPOScriptArguments
    from open_r1.demo import DEMO_SAMPLING, grpo_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "grpo_tiny.yaml"
    _, from_recipe, _ = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig)).parse_args_and_config(
        args=["--config", str(recipe), "--output_dir", str(tmp_path)]
    )
    demo = grpo_config(tmp_path, 1, 0, 1e-6, 2)
    for key, value in DEMO_SAMPLING.items():
        assert getattr(demo, key) == getattr(from_recipe, key) == value, key
    assert demo.top_k == 50  # the paper's (the original's GenerationConfig default), not TRL's 0


def test_the_readme_names_the_default_run_and_the_scripts_say_what_they_do():
    """The README names the demo's default seed with the numbers that run prints, and the launch scripts keep the
    demo's thread rule (one thread unless OMP_NUM_THREADS): before, demo.sh exported 2 threads and said ~4.5 min, and
    the build script's 2 threads gave another warm start than the default run's."""
    import inspect

    from open_r1 import demo

    repo = Path(__file__).resolve().parents[1]
    default_seed = int(inspect.getsource(demo.main).split('"--seed", type=int, default=')[1].split(",")[0])
    readme = (repo / "README.md").read_text()
    assert f"The default run is **seed {default_seed}**" in readme
    assert f"| `python -m open_r1.demo` (seed {default_seed}) |" in readme
    for script in ("demo.sh", "build_demo_warm_start.sh"):
        text = (repo / "scripts" / script).read_text().lower()
        assert "export omp_num_threads" not in text and "one" in text and "thread" in text, script
    assert "about 6 minutes on 2 idle cores" in (repo / "scripts" / "demo.sh").read_text()


def test_the_paired_comparison_of_two_demo_runs(tmp_path, capsys):
    """benchmarks/demo_paired.py (the README's selection − no selection figures): B − A per query, by paired_change."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "demo_paired", Path(__file__).resolve().parents[1] / "benchmarks" / "demo_paired.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, ious in (("a", [0.5, 0.0, 0.25]), ("b", [1.0, 0.0, 0.0])):
        folder = tmp_path / name / "eval" / "grpo"
        folder.mkdir(parents=True)
        lines = [{"query_id": f"v#{i}", "video_id": "v", "query": "q", "gt": [[0.0, 1.0]], "pred": None, "iou": iou,
                  "output": "x"} for i, iou in enumerate(ious)]  # fmt: skip
        (folder / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    change = module.main([str(tmp_path / "a"), str(tmp_path / "b")])
    from statistics import stdev

    standard_error = round(stdev([50.0, 0.0, -25.0]) / 3**0.5, 2)  # per-query changes in points
    assert change == {"mean": 8.33, "standard_error": standard_error, "num_queries": 3}
    assert f"+8.33 (paired SE {standard_error:.2f}, 3 queries)" in capsys.readouterr().out
