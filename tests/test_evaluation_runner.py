"""The evaluation loop end to end: tiny Qwen2.5-VL on synthetic mp4 videos, on CPU.

The fixture split has 8 queries: 6 on decodable synthetic videos, one on a video that does not exist and one on a
file that is not a video, so every failure kind that does not need a model shows up in the denominators.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from open_r1.configs import EvalArguments
from open_r1.evaluation import format_table
from open_r1.evaluation import runner as ev

REPO = Path(__file__).resolve().parents[1]
TINY_VIDEO = {"video_fps": 1.0, "video_total_pixels": 8 * 28 * 28 * 4, "video_min_pixels": 28 * 28}
NUM_QUERIES = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from open_r1.modeling import build_tiny_model
    from open_r1.synthetic import make_grounding_dataset

    root = tmp_path_factory.mktemp("eval")
    annotation, video_dir = make_grounding_dataset(root / "data", num_videos=3, seed=0, events_per_video=2)
    data = json.loads(Path(annotation).read_text())
    data["ghost"] = {"duration": 8.0, "timestamps": [[1.0, 3.0]], "sentences": ["the red square appears."]}
    data["broken"] = {"duration": 8.0, "timestamps": [[2.0, 4.0]], "sentences": ["the blue circle appears."]}
    (Path(video_dir) / "broken.mp4").write_bytes(b"not a video at all" * 100)
    annotation = root / "data" / "with_failures.json"
    annotation.write_text(json.dumps(data))
    model = build_tiny_model(root / "model")
    return {"root": root, "annotation": str(annotation), "video_dir": str(video_dir), "model": str(model)}


def make_args(setup, name, **overrides):
    kwargs = {
        "model_base": setup["model"],
        "annotation_file": setup["annotation"],
        "video_dir": setup["video_dir"],
        "output_dir": str(setup["root"] / name),
        "batch_size": 4,
        "max_new_tokens": 16,
        "allow_missing_videos": True,  # the fixture's "ghost" query has no video on purpose
        **TINY_VIDEO,
    }
    kwargs.update(overrides)
    return EvalArguments(**kwargs)


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def without_paths(metrics):
    return {k: v for k, v in metrics.items() if k != "output_dir"}


@pytest.fixture(scope="module")
def full_run(setup):
    metrics = ev.run_evaluation(make_args(setup, "full"))
    return metrics, Path(metrics["output_dir"])


def test_end_to_end_tiny_model(full_run):
    metrics, out = full_run
    assert metrics["num_queries"] == NUM_QUERIES
    assert metrics["failures"]["missing_video"] == 1
    assert metrics["failures"]["decode_error"] == 1
    # A random tiny model writes no span: the 6 real queries fail to parse and all 8 stay in the denominator.
    assert metrics["failures"]["no_answer"] == 6 and metrics["num_failed"] == 8
    # Not one answer parsed: said loudly (a damaged checkpoint looks the same), in the log, the table and metrics.json.
    assert metrics["warnings"] and "none of the 6 answers" in metrics["warnings"][0]
    assert json.loads((out / "metrics.json").read_text())["warnings"] == metrics["warnings"]
    assert "WARNING: none of the 6 answers" in format_table(metrics)
    assert metrics["R1@0.3"] == 0.0 and metrics["mIoU"] == 0.0
    records = lines(out / "predictions.jsonl")
    assert len(records) == NUM_QUERIES and len({r["query_id"] for r in records}) == NUM_QUERIES
    keys = {"video_id", "query_id", "query", "duration", "gt", "output", "pred", "iou", "rule", "error"}
    assert all(keys <= set(r) for r in records)
    by_id = {r["query_id"]: r for r in records}
    assert by_id["ghost#0"]["error"] == "missing_video" and by_id["ghost#0"]["output"] is None
    assert by_id["broken#0"]["error"] == "decode_error" and by_id["broken#0"]["gt"] == [[2.0, 4.0]]
    assert all(isinstance(by_id[f"synth_00{v}#{k}"]["output"], str) for v in range(3) for k in range(2))
    assert without_paths(metrics) == json.loads((out / "metrics.json").read_text())
    assert (out / "eval_plot.png").stat().st_size > 10_000
    # Rescoring the file reproduces the run's numbers.
    rescored = ev.rescore_predictions(out / "predictions.jsonl", write=False)
    assert {k: rescored[k] for k in rescored} == {k: metrics[k] for k in rescored}


def test_batch_size_1_and_4_give_the_same_greedy_predictions(setup, full_run):
    # fp32 on CPU: left padding changes no logit enough to flip a greedy choice within 16 tokens on this model. (In
    # bf16 it can: on an H200, 1 of 12 outputs of this random tiny model differed between batch sizes 1 and 4.)
    _, out4 = full_run
    metrics1 = ev.run_evaluation(make_args(setup, "bs1", batch_size=1))
    outputs4 = {r["query_id"]: r["output"] for r in lines(out4 / "predictions.jsonl")}
    outputs1 = {r["query_id"]: r["output"] for r in lines(Path(metrics1["output_dir"]) / "predictions.jsonl")}
    assert outputs1 == outputs4
    assert sum(1 for text in outputs1.values() if text) == 6


def test_kill_and_resume_gives_identical_metrics_and_no_duplicates(setup, full_run, monkeypatch):
    full_metrics, _ = full_run
    args = make_args(setup, "resume", max_queries=3)
    ev.run_evaluation(args)  # "killed" after 3 queries
    path = Path(args.output_dir) / "predictions.jsonl"
    first = path.read_text().splitlines()
    assert len(first) == 3
    with path.open("a") as f:  # the kill cut the 4th line short
        f.write('{"video_id": "synth_001", "query_id": "synth_001#1", "query": "the')

    generated = []
    real_generator = ev.BatchGenerator

    class CountingGenerator(real_generator):
        def __call__(self, queries, clips):
            generated.extend(q["query_id"] for q in queries)
            return super().__call__(queries, clips)

    monkeypatch.setattr(ev, "BatchGenerator", CountingGenerator)
    metrics = ev.run_evaluation(make_args(setup, "resume"))
    records = path.read_text().splitlines()
    assert len(records) == NUM_QUERIES and records[:3] == first
    assert len({json.loads(x)["query_id"] for x in records}) == NUM_QUERIES
    assert len(generated) == len(set(generated)) <= NUM_QUERIES - 3  # done queries are not generated again
    assert without_paths(metrics) == without_paths(full_metrics)
    # A second resume has nothing left to do and changes nothing.
    assert without_paths(ev.run_evaluation(make_args(setup, "resume"))) == without_paths(full_metrics)
    assert path.read_text().splitlines() == records
    # The resumed file is one run's: --rescore scores it without --allow_mixed.
    from open_r1.evaluation import rescore_predictions

    assert rescore_predictions(path, plot=False)["num_queries"] == NUM_QUERIES


def test_resume_refuses_a_different_prompt(setup, full_run):
    _, out = full_run
    with pytest.raises(ValueError, match="no_think"):
        ev.run_evaluation(make_args(setup, "full", no_think=True))


class OracleGenerator:
    """Answers each query with its ground truth (shifted for one query, failing for another): tests the loop only."""

    def __init__(self, args, device):
        from open_r1.data import load_annotations

        self.gt = {row["query_id"]: (row["start"], row["end"]) for row in load_annotations(args.annotation_file)}

    def __call__(self, queries, clips):
        if any(q["query_id"] == "synth_000#1" for q in queries):
            raise RuntimeError("CUDA out of memory (simulated)")
        outputs = []
        for q in queries:
            start, end = self.gt[q["query_id"]]
            if q["query_id"] == "synth_000#0":  # half the window: IoU 0.5, a tie at R1@0.5
                end = start + (end - start) / 2
            outputs.append(f"<think>looking</think><answer>{start} to {end}</answer>")
        return outputs


def test_loop_scores_answers_and_isolates_a_failing_query(setup, monkeypatch):
    monkeypatch.setattr(ev, "BatchGenerator", OracleGenerator)
    metrics = ev.run_evaluation(dataclasses.asdict(make_args(setup, "oracle")))  # the demo passes a plain dict
    # 8 queries: 4 exact, 1 at IoU 0.5, 1 generation error (its batch is retried query by query), 2 video failures.
    assert metrics["failures"] == {"no_answer": 0, "missing_video": 1, "decode_error": 1, "generation_error": 1}
    assert (metrics["R1@0.3"], metrics["R1@0.5"], metrics["R1@0.7"]) == (62.5, 62.5, 50.0)
    assert metrics["mIoU"] == 56.25
    records = {r["query_id"]: r for r in lines(Path(metrics["output_dir"]) / "predictions.jsonl")}
    assert records["synth_000#0"]["iou"] == 0.5 and records["synth_000#0"]["rule"] == "answer"
    failed = [r for r in records.values() if r["error"] == "generation_error"]
    assert len(failed) == 1 and "out of memory" in failed[0]["detail"]


def test_reads_the_preprocessing_cache_without_videos(setup, full_run):
    from open_r1.video import VideoCache, decode_video, find_video

    args = make_args(setup, "cached", video_dir=None, cache_dir=str(setup["root"] / "cache"))
    settings = args.to_settings()
    cache = VideoCache(args.cache_dir)
    for v in range(3):
        video_id = f"synth_00{v}"
        cache.save(video_id, decode_video(find_video(setup["video_dir"], video_id), settings), settings)
    metrics = ev.run_evaluation(args)
    _, out = full_run
    cached = {r["query_id"]: r["output"] for r in lines(Path(metrics["output_dir"]) / "predictions.jsonl")}
    decoded = {r["query_id"]: r["output"] for r in lines(out / "predictions.jsonl")}
    assert {k: v for k, v in cached.items() if v} == {k: v for k, v in decoded.items() if v}
    assert metrics["failures"]["missing_video"] == 2  # "broken" is not in the cache and there is no video folder


def test_vision_tokens_are_never_generated(setup, tmp_path):
    import torch

    from open_r1.modeling import load_model, load_processor, vision_token_ids
    from open_r1.video import VideoSource

    # A model whose favourite next token is <|video_pad|>: without suppression greedy decoding emits only that.
    processor = load_processor(setup["model"])
    model = load_model(setup["model"], attn_implementation="sdpa", dtype=torch.float32)
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    with torch.no_grad():
        model.lm_head.weight[video_pad] = model.lm_head.weight[video_pad] * 0 + 5.0
        model.model.language_model.norm.weight.fill_(1.0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    args = make_args(setup, "suppress", model_base=str(tmp_path / "model"))
    generator = ev.BatchGenerator(args, torch.device("cpu"))
    clip = VideoSource(args.to_settings(), video_dir=setup["video_dir"]).get("synth_000")
    from open_r1.modeling import encode_batch
    from open_r1.prompts import build_conversation

    batch = encode_batch(processor, [build_conversation("the red square appears")], [clip])
    ids = generator.model.generate(**batch, generation_config=generator.generation_config)
    new = ids[0, batch["input_ids"].shape[1] :].tolist()
    assert new and not set(new) & set(vision_token_ids(processor.tokenizer))
    config = generator.generation_config
    config.suppress_tokens = None
    unsuppressed = generator.model.generate(**batch, generation_config=config)[0, batch["input_ids"].shape[1] :]
    assert video_pad in unsuppressed.tolist()  # the test model really does want to emit it


@pytest.mark.parametrize(
    "dataset, split, count",
    [
        ("charades", None, 3720),
        ("activitynet", None, 17031),
        ("activitynet", "val_1", 17505),
        ("charades_cd", "test_iid", None),
    ],
)
def test_splits_by_name(dataset, split, count):
    rows, name = ev.resolve_queries(EvalArguments(model_base="m", video_dir=".", dataset=dataset, split=split))
    assert name == f"{dataset}_{split or ev.DEFAULT_SPLITS[dataset]}"
    if count is not None:
        assert len(rows) == count


@pytest.mark.parametrize(
    "dataset, split, listed", [("charades_sta", None, "activitynet, charades"), ("charades", "val", "train, test")]
)
def test_unknown_dataset_or_split_fails_listing_the_names(dataset, split, listed):
    with pytest.raises(ValueError, match=listed):
        ev.resolve_queries(EvalArguments(model_base="m", video_dir=".", dataset=dataset, split=split))


def test_arguments_fail_fast():
    with pytest.raises(ValueError, match="model_base"):
        EvalArguments(video_dir=".")
    with pytest.raises(ValueError, match="video_dir"):
        EvalArguments(model_base="m")
    with pytest.raises(ValueError, match="batch_size"):
        EvalArguments(model_base="m", video_dir=".", batch_size=-1)  # 0 means: picked for the device


@pytest.mark.gpu
def test_cuda_bf16_run_matches_the_cpu_failure_accounting(setup, full_run):
    import torch

    full_metrics, _ = full_run
    metrics = ev.run_evaluation(make_args(setup, "cuda"))  # auto: bf16 and the best attention kernel on the GPU
    assert torch.cuda.max_memory_allocated() > 0
    assert metrics["num_queries"] == NUM_QUERIES and metrics["failures"] == full_metrics["failures"]


@pytest.mark.slow
def test_torchrun_two_ranks_from_scripts_folder(setup, full_run):
    full_metrics, _ = full_run
    out = setup["root"] / "ddp"
    cmd = ["bash", "evaluate.sh", "--model_base", setup["model"], "--annotation_file", setup["annotation"]]
    cmd += ["--video_dir", setup["video_dir"], "--output_dir", str(out), "--batch_size", "4", "--max_new_tokens", "16"]
    cmd += ["--allow_missing_videos", "true"]
    cmd += [x for k, v in TINY_VIDEO.items() for x in (f"--{k}", str(v))]
    env = {
        **os.environ,
        "NPROC_PER_NODE": "2",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(cmd, cwd=REPO / "scripts", env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "R1@0.3" in result.stdout
    assert sorted(p.name for p in out.glob("predictions*")) == ["predictions.jsonl"]  # shards merged and removed
    records = lines(out / "predictions.jsonl")
    assert len(records) == len({r["query_id"] for r in records}) == NUM_QUERIES
    assert without_paths(json.loads((out / "metrics.json").read_text())) == without_paths(full_metrics)


def test_shared_work_encodes_each_video_once_with_the_same_predictions(setup, full_run, monkeypatch):
    """Batches of 4 hold 2 queries per video: the tower runs once per distinct video; the outputs are unchanged."""
    from open_r1 import modeling

    _, out = full_run  # shared_work is the default
    calls = []
    original = modeling.video_features_once

    def spy(model, patches, grids, device):
        calls.append((len(patches), len({id(p) for p in patches})))
        return original(model, patches, grids, device)

    monkeypatch.setattr(modeling, "video_features_once", spy)
    ev.run_evaluation(make_args(setup, "shared_spy", overwrite=True))
    assert calls and all(rows == 2 * distinct for rows, distinct in calls), calls  # 2 queries per synthetic video
    per_row = ev.run_evaluation(make_args(setup, "per_row", shared_work=False))
    shared = {r["query_id"]: r["output"] for r in lines(out / "predictions.jsonl")}
    assert {r["query_id"]: r["output"] for r in lines(Path(per_row["output_dir"]) / "predictions.jsonl")} == shared


def test_each_video_is_decoded_and_encoded_once_per_run(setup, full_run, monkeypatch):
    """Batches of 1 put each of a video's 2 queries in its own batch: the clip and its features carry over to the next
    batch instead of being decoded and encoded again, and the predictions are the batch-of-4 run's."""
    from open_r1 import modeling
    from open_r1.video import VideoSource

    encoded, decoded = [], []
    encode, get = modeling.video_features_once, VideoSource.get

    def encode_spy(model, patches, grids, device):
        encoded.append(len({id(p) for p in patches}))
        return encode(model, patches, grids, device)

    def get_spy(self, video_id):
        decoded.append(video_id)
        return get(self, video_id)

    monkeypatch.setattr(modeling, "video_features_once", encode_spy)
    monkeypatch.setattr(VideoSource, "get", get_spy)
    metrics = ev.run_evaluation(make_args(setup, "one_per_batch", batch_size=1))
    videos = [f"synth_{i:03d}" for i in range(3)]
    assert sum(encoded) == 3  # per batch: 6, each video once for each of its 2 queries
    assert sorted(decoded) == sorted(videos + ["broken"])  # each decodable (or broken) file read once
    _, out = full_run
    outputs = {r["query_id"]: r["output"] for r in lines(Path(metrics["output_dir"]) / "predictions.jsonl")}
    assert outputs == {r["query_id"]: r["output"] for r in lines(out / "predictions.jsonl")}


def static_run(setup, name, monkeypatch, **overrides):
    """An evaluation with --decode static (the compiled step captured by dynamo with its "eager" backend): its
    outputs by query, the (rows, cache) shape of every static decode, and the graphs dynamo compiled (its counter)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from open_r1 import decoding

    monkeypatch.setattr(decoding, "COMPILE_BACKEND", "eager")
    shapes = []
    real_call = decoding.StaticDecoder.__call__

    def recording(self, model, rows, needed_length, decode):
        out = real_call(self, model, rows, needed_length, decode)
        shapes.append((rows, self.cache_length_for(needed_length)))  # the length that call used (it only grows)
        return out

    monkeypatch.setattr(decoding.StaticDecoder, "__call__", recording)
    torch._dynamo.reset()
    counters.clear()
    metrics = ev.run_evaluation(make_args(setup, name, decode="static", **overrides))
    outputs = {r["query_id"]: r["output"] for r in lines(Path(metrics["output_dir"]) / "predictions.jsonl")}
    return metrics, outputs, shapes, counters["stats"]["unique_graphs"]


def eager_outputs(full_run):
    _, out = full_run
    return {r["query_id"]: r["output"] for r in lines(out / "predictions.jsonl")}


def test_static_compiled_decode_gives_the_eager_predictions(setup, full_run, monkeypatch):
    """--decode static: a static KV cache and a compiled decode step (whole-graph capture, CPU) answer every query
    with the eager run's text, compiling one graph per (rows, cache bucket) shape for the whole run."""
    metrics, outputs, shapes, graphs = static_run(setup, "static_decode", monkeypatch)
    assert outputs == eager_outputs(full_run) and metrics["failures"].get("generation_error", 0) == 0
    assert len(shapes) >= 2 and graphs == len(set(shapes))


@pytest.mark.parametrize("budget", ["ours", "dynamo's"])
def test_static_decode_past_the_recompile_limit_loses_no_query(setup, full_run, monkeypatch, request, budget, caplog):
    """One query per batch and a 1-token cache bucket: every distinct prompt length is a shape, more of them than
    dynamo's limit (set to 1). Past the decoder's budget the batches decode eagerly; with no budget of ours, dynamo's
    2nd compile fails (FailOnRecompileLimitHit) and the batch is repeated eagerly. No query is lost either way."""
    import logging

    import torch._dynamo

    from open_r1 import decoding

    monkeypatch.setattr(decoding, "CACHE_LENGTH_BUCKET", 1)
    monkeypatch.setattr(decoding, "HIGH_WATER", False)  # each call's own length: a shape per prompt length
    if budget == "dynamo's":
        monkeypatch.setattr(decoding, "MAX_COMPILED_SHAPES", 100)
    limit = torch._dynamo.config.patch(recompile_limit=1)
    limit.__enter__()
    request.addfinalizer(lambda: limit.__exit__(None, None, None))
    with caplog.at_level(logging.WARNING):
        metrics, outputs, shapes, graphs = static_run(setup, f"limit_{budget[0]}", monkeypatch, batch_size=1)
    assert len(set(shapes)) > 1  # more shapes than the limit
    assert metrics["failures"].get("generation_error", 0) == 0 and outputs == eager_outputs(full_run)
    assert graphs == 1
    if budget == "ours":
        assert "further shapes decode eagerly" in caplog.text and "failed" not in caplog.text
    else:
        assert "compiled decode failed (FailOnRecompileLimitHit" in caplog.text


def test_flash_attention_evaluation_runs_the_flash_kernels(setup, monkeypatch, flash_attn):
    """The GPU default (flash_attention_2, bf16) through transformers' flash-attention code on the flash-attn stand-in:
    eager decoding runs the kernels in every step; a static decode runs them in the tower and decodes under sdpa,
    one graph per shape. Both answer every decodable query."""
    import flash_attn_stand_in

    from open_r1.modeling import default_attn_implementation

    assert (
        default_attn_implementation() == "flash_attention_2"
    )  # the project's own choice, as on a GPU with flash-attn
    eager = ev.run_evaluation(make_args(setup, "flash_eager", dtype="bfloat16"))
    eager_kernels = flash_attn_stand_in.kernel_calls(flash_attn)
    # The tower's windows and the language model's prefill and decode steps, 16 new tokens, 2 layers.
    assert eager_kernels > 16 * 2 and eager["failures"].get("generation_error", 0) == 0
    metrics, _, shapes, graphs = static_run(setup, "flash_static", monkeypatch, dtype="bfloat16")
    assert flash_attn_stand_in.kernel_calls(flash_attn) > eager_kernels  # the tower, on flash
    assert metrics["failures"].get("generation_error", 0) == 0 and graphs == len(set(shapes))


def test_missing_videos_stop_the_run_before_the_model_loads(setup, monkeypatch, tmp_path):
    """A misspelled cache or a cache built at other settings: counts, first ids and the settings, no model loaded."""
    from open_r1.configs import VideoSettings
    from open_r1.preprocess import preprocess_videos

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ev, "load_eval_model", no_model)
    with pytest.raises(FileNotFoundError, match=r"1 of 5 videos \(1 of 8 queries\).*first missing: ghost"):
        ev.run_evaluation(make_args(setup, "refuse", allow_missing_videos=False))
    # Only a cache, built at 2 fps while this run asks for TINY_VIDEO's 1 fps.
    cache = tmp_path / "cache"
    videos = {f"synth_00{i}": Path(setup["video_dir"]) / f"synth_00{i}.mp4" for i in range(3)}
    preprocess_videos(videos, cache, settings=VideoSettings(fps=2.0, total_pixels=8 * 28 * 28 * 4,
                                                            min_pixels=28 * 28), progress=False)  # fmt: skip
    args = make_args(setup, "other_settings", video_dir=None, cache_dir=str(cache), allow_missing_videos=False)
    with pytest.raises(FileNotFoundError, match=r"3 of them are cached at other settings .*\"fps\": 2\.0"):
        ev.run_evaluation(args)


def test_batch_size_picked_for_the_device():
    import torch
    from transformers import AutoConfig

    from open_r1.modeling import ASSETS_DIR

    config = AutoConfig.from_pretrained(ASSETS_DIR)
    text = config.text_config
    # Keys and values, every layer, bf16: 2 x 28 x 4 x 128 x 2 bytes for Qwen2.5-VL-7B.
    per_token = (
        2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 2
    )
    assert ev.kv_bytes_per_token(config) == per_token == 57_344
    row = 3584 + 128 + 1024  # the paper's video tokens, the prompt text, a 1024-token answer
    assert ev.pick_batch_size(120 * 2**30, row, per_token) == 64  # an H200's free memory: the cap
    assert ev.pick_batch_size(24 * 2**30, row, per_token) == int(0.5 * 24 * 2**30 // (row * per_token)) == 47
    assert ev.pick_batch_size(2**20, row, per_token) == 1
    args = EvalArguments(model_base="m", annotation_file="a.json", video_dir="v")
    assert args.batch_size == 0  # the default: picked for the device
    assert ev.device_batch_size(None, torch.device("cpu"), args) == 8
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        EvalArguments(model_base="m", annotation_file="a.json", video_dir="v", batch_size=-1)


def test_an_evaluation_whose_every_generation_fails_exits_non_zero(setup, tmp_path):
    """`python evaluate.py` end to end, with generate failing for every batch (as a checkpoint with a broken vocabulary
    or a device error does): the one-by-one retries fail too, metrics.json is written, and the command exits 1 naming
    the cause, instead of printing an all-zero table and exiting 0."""
    code = (
        "import sys, transformers\n"
        "def broken(self, *args, **kwargs):\n"
        "    raise RuntimeError('device-side assert triggered')\n"
        "transformers.GenerationMixin.generate = broken\n"
        "from open_r1.evaluate import main\n"
        "main(sys.argv[1:])\n"
    )
    out = tmp_path / "all_failed"
    flags = [
        "--model_base", setup["model"], "--annotation_file", setup["annotation"], "--video_dir", setup["video_dir"],
        "--output_dir", str(out), "--batch_size", "4", "--max_new_tokens", "4", "--allow_missing_videos", "true",
        *[f"--{k}={v}" for k, v in TINY_VIDEO.items()],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "every one of the 6 queries that reached the model failed to generate" in result.stderr
    assert "device-side assert triggered" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failures"]["generation_error"] == 6 and metrics["num_queries"] == NUM_QUERIES


def test_features_carried_across_batches_stay_with_their_videos(setup):
    """A batch that starts with a video carried from the previous batch and then holds two new videos (GPU batches of
    up to 64 queries sorted by video make this layout): every row gets its own video's features. Keyed by the batch's
    video ids instead of the new rows', the features would shift onto the wrong queries."""
    import torch

    from open_r1.modeling import encode_batch, per_row_patches, video_features_once
    from open_r1.prompts import build_conversation
    from open_r1.video import VideoSource

    args = make_args(setup, "carried")
    generator = ev.BatchGenerator(args, torch.device("cpu"))
    source = VideoSource(args.to_settings(), video_dir=setup["video_dir"])
    clips = {v: source.get(v) for v in ("synth_000", "synth_001", "synth_002")}
    seen = []
    real = generator.model.generate

    def recording(**kwargs):
        seen.append(list(kwargs["mm_encoder_outputs"]["video"].pooler_output))
        return real(**kwargs)

    generator.model.generate = recording

    def query(video_id):
        return {"video_id": video_id, "query": "the red square appears."}

    generator([query("synth_000")], [clips["synth_000"]])
    batch = ["synth_000", "synth_001", "synth_001", "synth_002", "synth_002"]  # carried | new, new, other, other
    generator([query(v) for v in batch], [clips[v] for v in batch])

    own = {}
    for video_id, clip in clips.items():
        encoded = encode_batch(generator.processor, [build_conversation("the red square appears.")], [clip])
        patches = per_row_patches(encoded["pixel_values_videos"], encoded["video_grid_thw"])
        with torch.inference_mode():
            own[video_id] = video_features_once(generator.model, patches, encoded["video_grid_thw"], "cpu")[0]
    assert not torch.allclose(own["synth_001"], own["synth_002"])  # the videos are told apart
    assert len(seen[-1]) == len(batch)
    for video_id, features in zip(batch, seen[-1], strict=True):
        torch.testing.assert_close(features, own[video_id], atol=1e-5, rtol=1e-5, msg=video_id)


def test_batches_of_three_answer_as_batches_of_four(setup, full_run):
    """Batches of 3 cut the videos' query pairs differently (carried videos at batch starts); the answers are the full
    run's (batches of 4), which the one-query-per-batch run above matches too."""
    metrics = ev.run_evaluation(make_args(setup, "batches_of_3", batch_size=3))
    outputs = {r["query_id"]: r["output"] for r in lines(Path(metrics["output_dir"]) / "predictions.jsonl")}
    assert outputs == eager_outputs(full_run)


def test_the_gpu_batch_size_is_picked_from_free_memory(monkeypatch):
    """--batch_size 0 on a GPU: the rows whose bf16 KV caches (video tokens + 128 prompt tokens + max_new_tokens each)
    fill half of the free memory that torch.cuda reports (faked here), capped at 64."""
    import types

    import torch
    from transformers import AutoConfig

    from open_r1.modeling import ASSETS_DIR

    model = types.SimpleNamespace(config=AutoConfig.from_pretrained(ASSETS_DIR))
    args = EvalArguments(model_base="m", annotation_file="a.json", video_dir="v")
    row_bytes = (3584 + 128 + 1024) * 57_344  # the paper's video tokens, the prompt text, a 1024-token answer
    for free, expected in ((16 * 2**30, int(0.5 * 16 * 2**30 // row_bytes)), (200 * 2**30, 64), (2**28, 1)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 2 * free))
        assert ev.device_batch_size(model, torch.device("cuda"), args) == expected
    assert expected == 1 and int(0.5 * 16 * 2**30 // row_bytes) == 31


def test_an_evaluation_on_a_folder_in_use_stops_before_the_model_loads(setup, monkeypatch):
    """A second evaluation started on the output folder of one that is running (a live process holds its lock):
    stopped at once naming the first, before any model is loaded or any file touched."""
    import socket
    import subprocess

    from open_r1.run_lock import LOCK_NAME, FolderInUseError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ev, "load_eval_model", no_model)
    args = make_args(setup, "in_use")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"job": "evaluation", "pid": running.pid, "host": socket.gethostname(), "started": "then",
                  "command": "evaluate.py"}  # fmt: skip
        (out / LOCK_NAME).write_text(json.dumps(holder))
        with pytest.raises(FolderInUseError, match=f"in use by another evaluation: pid {running.pid}"):
            ev.run_evaluation(args)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        running.kill()
        running.wait()


def test_a_retrained_checkpoint_is_not_resumed_as_the_old_run(setup, tmp_path):
    """Retrained into the same folder (same path, same settings, other weights): the evaluation does not print the
    old checkpoint's table as a resume; it stops, keeps the old predictions, and says how to start over."""
    import shutil

    import torch

    from open_r1.modeling import load_model, weights_digest

    checkpoint = Path(shutil.copytree(setup["model"], tmp_path / "ckpt"))
    first = ev.run_evaluation(
        make_args(setup, "retrained", model_base=str(checkpoint), output_dir=str(tmp_path / "e"))
    )
    before = weights_digest(checkpoint)
    model = load_model(checkpoint)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)  # one training step's worth of change
    model.save_pretrained(checkpoint)
    assert weights_digest(checkpoint) != before
    args = make_args(setup, "retrained", model_base=str(checkpoint), output_dir=str(tmp_path / "e"))
    with pytest.raises(ValueError, match="differs in weights; the checkpoint's weights changed since: retrained"):
        ev.run_evaluation(args)
    assert len(lines(tmp_path / "e" / "predictions.jsonl")) == first["num_queries"]  # nothing lost
    again = ev.run_evaluation(dataclasses.replace(args, overwrite=True))
    assert again["num_queries"] == first["num_queries"]
    config = json.loads((tmp_path / "e" / "eval_config.json").read_text())
    assert config["weights"] == weights_digest(checkpoint)


def test_a_rescore_never_scores_fewer_queries_than_the_run_was_written_for(full_run, tmp_path):
    """A predictions file cut short (at a line boundary, or mid-line): --rescore stops naming the file (and the line),
    instead of scoring the readable half with exit 0; the complete file rescoring as before."""
    import shutil

    from open_r1.evaluation import PredictionsFileError, rescore_predictions

    _, out = full_run
    folder = Path(shutil.copytree(out, tmp_path / "copy"))
    path = folder / "predictions.jsonl"
    text = path.read_text()
    assert rescore_predictions(path, plot=False)["num_queries"] == NUM_QUERIES
    cut = text.splitlines(keepends=True)
    path.write_text("".join(cut[:4]))
    with pytest.raises(PredictionsFileError, match=f"holds 4 of the {NUM_QUERIES} queries its run was written for"):
        rescore_predictions(path, plot=False)
    path.write_text("".join(cut[:4]) + cut[4][:30])
    with pytest.raises(PredictionsFileError, match=r"predictions.jsonl:5: line is not JSON"):
        rescore_predictions(path, plot=False)


def test_cpu_evaluation_runs_on_one_thread_unless_asked(setup, monkeypatch, caplog):
    """The demo's rule on CPU: one thread unless OMP_NUM_THREADS says otherwise (a 400-query evaluation took 103 s on
    2 threads of a busy machine, 7 s on one), said in the log."""
    import logging

    import torch

    previous = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO):
            ev.run_evaluation(make_args(setup, "threads_default", overwrite=True))
        assert torch.get_num_threads() == 1
        assert "CPU evaluation on 1 thread(s) (evaluation's default on CPU" in caplog.text
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            ev.run_evaluation(make_args(setup, "threads_asked", overwrite=True))
        assert torch.get_num_threads() == 2 and "CPU evaluation on 2 thread(s) (OMP_NUM_THREADS)" in caplog.text
    finally:
        torch.set_num_threads(previous)


def test_every_protocol_and_the_generation_budget_come_with_the_run(full_run):
    """metrics.json holds all four protocols and how many answers ran out of tokens (counted from the token ids)."""
    metrics, out = full_run
    assert set(metrics["protocols"]) == {"timezero", "timezero-original", "lmms-eval", "timelens"}
    assert metrics["protocol"] == "timezero" and metrics["R1@0.5"] == metrics["protocols"]["timezero"]["R1@0.5"]
    # The two video failures stay in the denominator everywhere except under TimeZero's original rule.
    assert metrics["protocols"]["timelens"]["num_scored"] == NUM_QUERIES
    assert metrics["protocols"]["timezero-original"]["num_skipped"] >= 2
    generated = [r for r in lines(out / "predictions.jsonl") if r["output"] is not None]
    assert generated and all(1 <= r["num_tokens"] <= 16 for r in generated)
    assert all(r["hit_budget"] == (r["num_tokens"] == 16) for r in generated)  # no end token within the budget
    assert metrics["generation"]["max_new_tokens"] == 16
    assert metrics["generation"]["num_hit_budget"] == sum(r["hit_budget"] for r in generated)
    rescored = ev.rescore_predictions(out / "predictions.jsonl", write=False)
    assert rescored["protocols"] == metrics["protocols"]


def test_answer_lengths_stop_at_the_first_end_token():
    import torch
    from transformers import GenerationConfig

    from open_r1.decoding import answer_lengths

    config = GenerationConfig(eos_token_id=[7, 9], pad_token_id=0)
    rows = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 5, 6, 5], [9, 0, 0, 0, 0], [5, 6, 5, 6, 7]])
    assert answer_lengths(rows, config) == [(3, True), (5, False), (1, True), (5, True)]
