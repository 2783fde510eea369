"""The evaluation run: queries -> model -> batched generation -> scored records, sharded under torchrun, resumable."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from open_r1.configs import EvalArguments
from open_r1.data import (
    TIMELENS_BENCH,
    check_benchmark_size,
    dataset_splits,
    load_annotations,
    load_split,
    split_path,
)
from open_r1.decoding import GeneratedText, StaticDecoder, answer_lengths, empty_static_cache, use_static_decode
from open_r1.evaluation.metrics import IOU_TIE_EPS, compute_metrics, record_iou, score_output
from open_r1.evaluation.plots import plot_predictions
from open_r1.evaluation.predictions import (
    CONFIG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    PREDICTIONS_FILE,
    merge_predictions,
    read_predictions,
    record_key,
    rescore_predictions,
    shard_paths,
    write_json_atomic,
)
from open_r1.evaluation.protocols import protocol_report
from open_r1.jsonl import repair_tail
from open_r1.run_lock import folder_lock
from open_r1.video.sampling import IMAGE_FACTOR

logger = logging.getLogger(__name__)

# Each split's default when --split is not given: the split the paper (or the benchmark's authors) report.
DEFAULT_SPLITS = {
    "charades": "test",
    "activitynet": "val_2",
    "charades_cd": "test_ood",
    "charades_cg": "novel_composition",
    **dict.fromkeys(TIMELENS_BENCH, "test"),
}


def resolve_queries(args: EvalArguments) -> tuple[list[dict[str, Any]], str]:
    """The query rows to evaluate and the run's name (``<dataset>_<split>`` or the annotation file's stem).

    Unknown dataset or split names raise ``ValueError`` listing the valid ones before anything heavy happens.
    """
    if args.annotation_file is not None:
        rows = load_annotations(args.annotation_file)
        name = Path(args.annotation_file).stem
        check_benchmark_size(args.dataset, rows, args.annotation_file)  # a TimeLens-Bench file given by path
    else:
        split = args.split or DEFAULT_SPLITS.get(args.dataset) or (dataset_splits(args.dataset) or [""])[0]
        split_path(args.dataset, split)  # unknown names raise here, listing the valid ones
        rows = load_split(args.dataset, split)
        name = f"{args.dataset}_{split}"
    if args.max_queries is not None:
        rows = rows[: args.max_queries]
    return rows, name


def default_output_dir(args: EvalArguments, name: str) -> Path:
    model_name = Path(str(args.model_base).rstrip("/")).name or "model"
    suffix = ("_no_think" if args.no_think else "") + ("_interleaved" if args.timestamps == "interleaved" else "")
    return Path("outputs") / "eval" / model_name / (name + suffix)


def _run_config(args: EvalArguments, name: str) -> dict[str, Any]:
    """The settings that change predictions; a resume must match them (batch size, paths of videos do not). The
    checkpoint is identified by its path and its weights (:func:`open_r1.modeling.weights_digest`): retrained into
    the same folder, it is another run."""
    from open_r1.modeling import weights_digest

    return {
        "model_base": str(args.model_base),
        "weights": weights_digest(args.model_base),
        "run": name,
        "annotation_file": args.annotation_file,
        "no_think": args.no_think,
        "video_first": args.video_first,
        "video_settings": dataclasses.asdict(args.to_settings()),
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature if args.do_sample else None,
        "repetition_penalty": args.repetition_penalty,
        "position_layout": args.position_layout,
        # Only when not the paper's layout: runs written before the option keep their settings and run id.
        **({"timestamps": args.timestamps} if args.timestamps != "mrope" else {}),
    }


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _prepare_output_dir(output_dir: Path, config: dict[str, Any], overwrite: bool, rank: int, world: int) -> None:
    """Rank 0 creates (or clears) the folder and checks that a resume continues the same run."""
    if rank == 0:
        if overwrite and output_dir.exists():
            for path in [output_dir / PREDICTIONS_FILE, *shard_paths(output_dir), output_dir / METRICS_FILE]:
                path.unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        config_path = output_dir / CONFIG_FILE
        if config_path.exists() and not overwrite:
            previous = json.loads(config_path.read_text(encoding="utf-8"))
            # num_queries is what the run is written for (a --max_queries run may be resumed in full), not a setting.
            keys = (set(previous) | set(config)) - {"num_queries"}
            changed = sorted(k for k in keys if previous.get(k) != config.get(k))
            if changed:
                retrained = changed == ["weights"]
                raise ValueError(
                    f"{output_dir} holds predictions of another run (differs in {', '.join(changed)}"
                    + ("; the checkpoint's weights changed since: retrained into the same folder?" if retrained
                       else "") + "); its predictions and metrics.json are kept there: pass --overwrite to replace "
                    "them, or another --output_dir"
                )  # fmt: skip
        write_json_atomic(config_path, config)
    if world > 1:
        _barrier()
        if not (output_dir / CONFIG_FILE).exists():
            raise RuntimeError(f"rank 0 failed to prepare {output_dir}")


def load_eval_model(args: EvalArguments, device):
    """The model in bf16 with flash_attention_2 on GPU (fp32 + sdpa on CPU), falling back to sdpa when FA2 fails."""
    import torch

    from open_r1.modeling import default_attn_implementation, default_dtype, load_model

    # "auto" is bf16 on GPU and fp32 on CPU (the device is a GPU whenever one is available).
    dtype = default_dtype() if args.dtype == "auto" else getattr(torch, args.dtype)
    attn = args.attn_implementation or default_attn_implementation()
    # Under a device context transformers loads the weights straight onto that GPU (no full copy in host memory per
    # rank, which is what 8 ranks of a 7B model would otherwise cost).
    with torch.device(device):
        try:
            model = load_model(
                args.model_base, attn_implementation=attn, dtype=dtype, position_layout=args.position_layout
            )
        except (ImportError, ValueError) as exc:
            if attn != "flash_attention_2":
                raise
            logger.warning("flash_attention_2 unavailable (%s); falling back to sdpa", exc)
            attn = "sdpa"
            model = load_model(
                args.model_base, attn_implementation=attn, dtype=dtype, position_layout=args.position_layout
            )
    logger.info("Loaded %s (%s, %s attention) on %s", args.model_base, dtype, attn, device)
    return model.to(device).eval(), dtype


class BatchGenerator:
    """Batched greedy (or sampled) generation for one process: prompt -> encode -> generate -> decode."""

    def __init__(self, args: EvalArguments, device):
        import torch

        from open_r1.modeling import load_processor, vision_token_ids

        self.args = args
        self.device = device
        self.processor = load_processor(args.model_base)
        self.model, self.dtype = load_eval_model(args, device)
        tokenizer = self.processor.tokenizer
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = args.max_new_tokens
        config.use_cache = True
        config.suppress_tokens = vision_token_ids(tokenizer)
        if tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
        if args.repetition_penalty is not None:
            config.repetition_penalty = args.repetition_penalty
        if args.do_sample:
            config.do_sample, config.temperature = True, args.temperature
        else:
            # Greedy. Qwen2.5-VL ships do_sample=True with temperature 1e-6 (greedy in effect, as the original
            # evaluation ran it); argmax is the same choice without the sampling machinery. Its repetition_penalty
            # (1.05) is kept unless --repetition_penalty says otherwise.
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        self.generation_config = config
        # Vision features of the last batch's videos, by video id (shared_work).
        self._features: dict[str, Any] = {}
        # The static decode's compiled shapes (rows, cache bucket), kept for the whole run.
        self.static = StaticDecoder(device) if use_static_decode(args.decode, device) else None
        torch.manual_seed(args.seed)

    def __call__(self, queries: Sequence[dict[str, Any]], clips: Sequence[Any]) -> list[str]:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from open_r1.modeling import encode_batch, per_row_patches, video_features_once
        from open_r1.prompts import build_conversation

        conversations = [
            build_conversation(
                q["query"],
                think=not self.args.no_think,
                video_first=self.args.video_first,
                timestamps=self.args.timestamps,
            )
            for q in queries
        ]
        batch = encode_batch(self.processor, conversations, list(clips), padding_side="left")
        if self.args.shared_work:
            # One tower pass per distinct video of the run (Charades-STA test has 2.8 queries per video): the queries
            # come sorted by video, so a video's features are kept for the next batch, where its last queries may
            # fall, and dropped after it.
            video_ids = [q["video_id"] for q in queries]
            first: dict[str, torch.Tensor] = {}
            patches = per_row_patches(batch.pop("pixel_values_videos"), batch["video_grid_thw"])
            patches = [first.setdefault(v, tensor.to(self.dtype)) for v, tensor in zip(video_ids, patches)]
            new = [row for row, v in enumerate(video_ids) if v not in self._features]
            fresh = {}
            if new:
                with torch.inference_mode():
                    computed = video_features_once(
                        self.model, [patches[row] for row in new], batch["video_grid_thw"][new], self.device
                    )
                fresh = {video_ids[row]: feature for row, feature in zip(new, computed)}
            self._features = {v: self._features.get(v, fresh.get(v)) for v in video_ids}
            features = [self._features[v] for v in video_ids]
            batch["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=tuple(features))}
        batch = {
            k: (v.to(self.device, self.dtype) if k == "pixel_values_videos" else v.to(self.device))
            if hasattr(v, "to")
            else v
            for k, v in batch.items()
        }
        if self.static is None:
            with torch.inference_mode():
                out = self.model.generate(**batch, generation_config=self.generation_config)
        else:
            # A static KV cache and a compiled decode step (open_r1.decoding); the same tokens as eager.
            length = batch["input_ids"].shape[1] + self.generation_config.max_new_tokens

            def decode(compiled: bool, cache_length: int):
                config = self.static.generation_config(self.generation_config, compiled)
                with torch.inference_mode():
                    return self.model.generate(**batch, generation_config=config,
                                               cache=empty_static_cache(self.model, cache_length))  # fmt: skip

            out = self.static(self.model, batch["input_ids"].shape[0], length, decode)
        completions = out[:, batch["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(completions, skip_special_tokens=True)
        return [
            GeneratedText(text, n, not ended and n >= self.generation_config.max_new_tokens)
            for text, (n, ended) in zip(texts, answer_lengths(completions, self.generation_config))
        ]


CPU_BATCH_SIZE = 8
MAX_BATCH_SIZE = 64


def kv_bytes_per_token(config) -> int:
    """Bytes of KV cache one token takes in every layer (keys and values, the model's dtype)."""
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    itemsize = torch_dtype_size(getattr(text, "dtype", None) or config.dtype)
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * itemsize


def torch_dtype_size(dtype) -> int:
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return torch.empty((), dtype=dtype or torch.float32).element_size()


def pick_batch_size(free_bytes: int, row_tokens: int, bytes_per_token: int, share: float = 0.5) -> int:
    """Rows whose KV caches fill ``share`` of ``free_bytes`` (at least 1, at most :data:`MAX_BATCH_SIZE`): the rest
    is left for the prefill's activations and the allocator."""
    rows = int(share * free_bytes // max(1, row_tokens * bytes_per_token))
    return max(1, min(MAX_BATCH_SIZE, rows))


def device_batch_size(model, device, args: EvalArguments) -> int:
    """``--batch_size 0``: 8 on CPU; on a GPU from its free memory and one row's longest sequence (the video token
    budget, ~128 text tokens, the answer)."""
    import torch

    if device.type != "cuda":
        size = CPU_BATCH_SIZE
    else:
        free, _ = torch.cuda.mem_get_info(device)
        row_tokens = args.to_settings().total_pixels // IMAGE_FACTOR**2 + 128 + args.max_new_tokens
        size = pick_batch_size(free, row_tokens, kv_bytes_per_token(model.config))
    logger.info("batch size %d (picked for %s; --batch_size N to choose)", size, device)
    return size


def _load_clips(source, queries: Sequence[dict[str, Any]], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decode each distinct video of a batch once (a video of the ``previous`` batch is taken from it); failures
    become ``(kind, message)`` tuples."""
    from open_r1.video import VideoDecodeError

    clips: dict[str, Any] = {}
    for video_id in dict.fromkeys(q["video_id"] for q in queries):
        if previous is not None and video_id in previous:
            clips[video_id] = previous[video_id]
            continue
        try:
            if source.missing([video_id]):
                clips[video_id] = ("missing_video", f"no cached or raw video for {video_id}")
            else:
                clips[video_id] = source.get(video_id)
        except VideoDecodeError as exc:
            clips[video_id] = ("decode_error", str(exc))
        except Exception as exc:  # a decoder crash on one file must not end the run; it is scored 0 and reported
            logger.warning("decoding %s failed: %s: %s", video_id, type(exc).__name__, exc)
            clips[video_id] = ("decode_error", f"{type(exc).__name__}: {exc}")
    return clips


def _result(query: dict[str, Any], output: str | None, error: str | None = None, detail: str | None = None) -> dict:
    gt = [list(map(float, w)) for w in query["windows"]]
    record = {
        "video_id": query["video_id"],
        "query_id": query["query_id"],
        "query": query["query"],
        "duration": float(query["duration"]),
        "gt": gt,
        "output": output,
    }
    if isinstance(output, GeneratedText):  # the generation budget each protocol's harness would have given
        record.update(output=str(output), num_tokens=output.num_tokens, hit_budget=output.hit_budget)
    if error is None:
        record.update(score_output(output, gt))
    else:
        record.update(pred=None, iou=0.0, rule=None, error=error)
    if detail:
        record["detail"] = detail
    return record


def generate_records(generate, batch, clips) -> list[dict[str, Any]]:
    """Results of one batch; a failed generate() is retried one query at a time before it counts as a failure."""
    records: dict[str, dict[str, Any]] = {}
    ready = []
    for query in batch:
        clip = clips[query["video_id"]]
        if isinstance(clip, tuple):
            records[query["query_id"]] = _result(query, None, error=clip[0], detail=clip[1])
        else:
            ready.append(query)
    groups = [ready] if ready else []
    while groups:
        group = groups.pop(0)
        try:
            outputs = generate(group, [clips[q["video_id"]] for q in group])
        except Exception as exc:  # one bad query must not end a 17k-query run; it scores 0 and is reported
            if len(group) > 1:
                logger.warning("generate() failed on a batch of %d (%s); retrying one by one", len(group), exc)
                groups = [[q] for q in group] + groups
                _empty_cuda_cache()
                continue
            logger.warning("generate() failed on %s: %s", group[0]["query_id"], exc)
            records[group[0]["query_id"]] = _result(group[0], None, "generation_error", f"{type(exc).__name__}: {exc}")
            _empty_cuda_cache()
            continue
        for query, output in zip(group, outputs):
            records[query["query_id"]] = _result(query, output)
    for query in ready:
        start = min(float(window[0]) for window in query["windows"])
        if clips[query["video_id"]].duration <= start:
            records[query["query_id"]]["clip_ends_before_gt"] = True
    return [records[q["query_id"]] for q in batch]


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_evaluation(args: EvalArguments):
    """Every check that needs no model, all problems reported together (:class:`open_r1.preflight.Preflight`): the
    checkpoint, the queries, the output folder, the videos. Returns the queries, the run's name, the video source and
    the description of missing videos (None when all are there). ``python -m open_r1.evaluate --preflight`` runs only
    this, as ``scripts/evaluate.sh`` does before torchrun starts."""
    from open_r1.preflight import Preflight, model_problem, output_problem
    from open_r1.timestamps import check_prompt_format
    from open_r1.video import VideoSource, describe_missing

    checks = Preflight("evaluation")
    checks.add(model_problem(args.model_base, flag="--model_base"))
    checks.run(check_prompt_format, args.model_base, args.timestamps, args.allow_format_mismatch)
    queries, name = checks.run(resolve_queries, args) or ([], None)
    if name is not None and not queries:
        checks.add(f"{name}: no queries to evaluate")
    checks.add(output_problem(args.output_dir or (default_output_dir(args, name) if name else None)))
    source = VideoSource(args.to_settings(), cache_dir=args.cache_dir, video_dir=args.video_dir)
    missing = describe_missing(source, [q["video_id"] for q in queries]) if queries else None
    if missing and not args.allow_missing_videos:
        # Before the model loads: a misspelled --cache_dir would otherwise score every query 0 and exit 0.
        checks.fail(FileNotFoundError(f"{name}: {missing} --allow_missing_videos scores them as failures instead."))
    checks.finish()
    return queries, name, source, missing


def run_evaluation(args: EvalArguments | dict[str, Any], checked: tuple | None = None) -> dict[str, Any]:
    """Evaluate ``args.model_base`` on a split; returns :func:`compute_metrics` over all its queries.

    Resumes from the predictions already in the output folder (each query is generated once). Under torchrun each
    rank takes every WORLD_SIZE-th query, writes its own shard, and rank 0 merges them at the end; every rank returns
    the same metrics (plus ``output_dir``). With ``args.rescore`` set, only rescores that file. ``checked``: what
    :func:`check_evaluation` returned for these ``args``, when the caller ran the checks already.

    Example (from Python, e.g. after training)::

        run_evaluation({"model_base": "outputs/ckpt", "dataset": "charades", "cache_dir": "cache/charades"})
    """
    if isinstance(args, dict):
        args = EvalArguments(**args)
    if args.rescore is not None:
        return rescore_predictions(args.rescore, allow_mixed=args.allow_mixed, protocol=args.protocol)
    queries, name, source, missing = checked or check_evaluation(args)
    if missing:
        logger.warning("%s: %s They score IoU 0 (missing_video).", name, missing)
    import torch

    rank, world, local_rank = _dist_info()
    initialized_here = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo is enough: the ranks only wait for each other (a long timeout: shards can finish hours apart).
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
            initialized_here = True
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args, name)
    try:
        # One evaluation per output folder (rank 0 holds the lock for the launch): a second one would redo the work
        # and append to the same files.
        with folder_lock(output_dir, "evaluation") if rank == 0 else contextlib.nullcontext():
            metrics = _evaluate(args, queries, name, output_dir, rank, world, local_rank, torch, source)
        check_generation_worked(metrics, args.model_base)
        return metrics
    finally:
        if initialized_here:
            torch.distributed.destroy_process_group()


def _reached_model(metrics: dict[str, Any]) -> int:
    """Queries whose video could be read, so that the model was asked to answer them."""
    failures = metrics.get("failures", {})
    return metrics["num_queries"] - failures.get("missing_video", 0) - failures.get("decode_error", 0)


def warn_if_nothing_parsed(metrics: dict[str, Any], model_base) -> None:
    """Say loudly when the model generated for every query that reached it and not one answer parsed: a damaged or
    untrained checkpoint (flipped weight bytes load fine and answer nonsense), or the wrong prompt format. It is a
    warning, not an error (a random model is scored as a baseline); recorded under ``warnings`` before metrics.json is
    written."""
    failures = metrics.get("failures", {})
    generated = _reached_model(metrics) - failures.get("generation_error", 0)
    if generated > 0 and failures.get("no_answer", 0) == generated:
        message = (
            f"none of the {generated} answers of {model_base} has a parsable span ('a to b' in <answer>): is the "
            "checkpoint damaged or untrained, or does it expect another prompt (--no_think, --video_first)? Every "
            "query scored 0"
        )
        logger.warning("%s", message)
        metrics.setdefault("warnings", []).append(message)


def check_generation_worked(metrics: dict[str, Any], model_base) -> None:
    """Fail when every query that reached the model failed to generate: the checkpoint (weights, tokenizer) cannot
    answer, and all-zero metrics must not end the run as a success. metrics.json is written before."""
    reached = _reached_model(metrics)
    if reached > 0 and metrics.get("failures", {}).get("generation_error", 0) == reached:
        output_dir = Path(metrics.get("output_dir", "."))
        details = [r.get("detail") for r in read_predictions(output_dir / PREDICTIONS_FILE) if r.get("detail")]
        raise RuntimeError(
            f"every one of the {reached} queries that reached the model failed to generate (first: "
            f"{(details or ['no detail'])[0][:300]}); is the checkpoint {model_base} complete? The all-zero "
            f"metrics are in {output_dir / METRICS_FILE}"
        )


def _evaluate(args, queries, name, output_dir: Path, rank, world, local_rank, torch, source) -> dict[str, Any]:
    from tqdm.auto import tqdm

    settings = _run_config(args, name)
    # The number of queries the run is written for (a rescore of its file refuses to score fewer); not a setting.
    _prepare_output_dir(output_dir, {**settings, "num_queries": len(queries)}, args.overwrite, rank, world)
    # Every line carries its run's id, so that a file holding lines of two runs is noticed when rescored (a
    # --max_queries run resumed in full is one run: the id comes from the settings alone).
    run_id = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    done = set()
    for path in [output_dir / PREDICTIONS_FILE, *shard_paths(output_dir)]:
        done.update(record_key(r) for r in read_predictions(path))
    # Sharding by position in the split (not by what is left) keeps ranks disjoint whatever each one has read.
    mine = [q for i, q in enumerate(queries) if i % world == rank and q["query_id"] not in done]
    # Similar lengths batch together (less padding), and queries of one video sit side by side (one decode).
    mine.sort(key=lambda q: (q["duration"], q["video_id"]))
    own_file = output_dir / (PREDICTIONS_FILE if world == 1 else f"predictions.rank{rank}.jsonl")
    repair_tail(own_file)
    logger.info(
        "%s: %d queries, %d already done, %d for rank %d/%d -> %s",
        name,
        len(queries),
        len(done & {q["query_id"] for q in queries}),
        len(mine),
        rank,
        world,
        output_dir,
    )

    if mine:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            from open_r1.modeling import cpu_threads

            threads, why = cpu_threads("evaluation")
            torch.set_num_threads(threads)
            logger.info("CPU evaluation on %d thread(s) (%s)", threads, why)
        generate = BatchGenerator(args, device)
        batch_size = args.batch_size or device_batch_size(generate.model, device, args)
        batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        hits = scored = 0
        # Decode the next batch's videos in a thread while the model generates the current one.
        with ThreadPoolExecutor(max_workers=1) as pool, own_file.open("a", encoding="utf-8") as out:
            pending = pool.submit(_load_clips, source, batches[0])
            progress = tqdm(total=len(mine), desc=f"eval {name}", disable=rank != 0, unit="query")
            for i, batch in enumerate(batches):
                clips = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(_load_clips, source, batches[i + 1], clips)
                for record in generate_records(generate, batch, clips):
                    record["run_id"] = run_id
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    hits += record_iou(record) >= 0.5 - IOU_TIE_EPS
                    scored += 1
                progress.update(len(batch))
                progress.set_postfix({"R1@0.5": f"{100 * hits / scored:.1f}"})
            progress.close()

    _barrier()
    order = [q["query_id"] for q in queries]
    if rank == 0:
        if world > 1 or shard_paths(output_dir):
            merge_predictions(output_dir, order)
        wanted = set(order)
        records = [r for r in read_predictions(output_dir / PREDICTIONS_FILE) if record_key(r) in wanted]
        missing = len(wanted) - len(records)
        if missing:
            raise RuntimeError(f"{missing} queries of {name} have no prediction in {output_dir}; rerun to resume")
        metrics = compute_metrics(records) | protocol_report(records, args.protocol, args.max_new_tokens)
        metrics["run"] = name
        metrics["model_base"] = str(args.model_base)
        warn_if_nothing_parsed(metrics, args.model_base)
        write_json_atomic(output_dir / METRICS_FILE, metrics)
        plot_predictions(records, output_dir / PLOT_FILE, args.num_plot_queries)
        logger.info(
            "%s: R1@0.3 %.2f, R1@0.5 %.2f, R1@0.7 %.2f, mIoU %.2f over %d queries (%d failed) -> %s",
            name,
            metrics["R1@0.3"],
            metrics["R1@0.5"],
            metrics["R1@0.7"],
            metrics["mIoU"],
            metrics["num_queries"],
            metrics["num_failed"],
            output_dir / METRICS_FILE,
        )
    _barrier()
    metrics = json.loads((output_dir / METRICS_FILE).read_text(encoding="utf-8"))
    metrics["output_dir"] = str(output_dir)
    return metrics
