"""Evaluation: R1@m and mIoU of a checkpoint on a grounding split, resumable and data-parallel.

The metric is the paper's (TimeZero section 4.1): R1@m is the share of queries whose top-1 predicted span has
temporal IoU >= m with the ground truth (m = 0.3, 0.5, 0.7), mIoU is the mean IoU; both in percent. Unlike the
original evaluation, every query stays in the denominator: an unparsable answer, a missing or undecodable video, or an
exception during generation scores IoU 0 and is counted by kind (skipping them inflates every number).

The span parser and IoU are :mod:`open_r1.grounding`'s, the same functions the IoU reward uses, and the prompt is
:mod:`open_r1.prompts`' (the training template), so "correct" means one thing in training and evaluation.

Output folder (one run = one folder):

- ``predictions.jsonl``: one line per query, appended and flushed as results arrive, with keys ``video_id``,
  ``query_id``, ``query``, ``duration``, ``gt`` (list of ``[start, end]`` windows), ``output`` (raw model text or
  null), ``pred`` (``[start, end]`` or null), ``iou``, ``rule`` (which parse rule matched: ``"answer"``,
  ``"fallback"`` or null) and ``error`` (null or one of :data:`FAILURE_KINDS`; ``detail`` says more). A killed run
  resumes where it stopped; under torchrun each rank appends to ``predictions.rank{r}.jsonl`` and rank 0 merges the
  shards into ``predictions.jsonl`` at the end.
- ``metrics.json``: :func:`compute_metrics` of the run; ``eval_config.json``: what was evaluated (a resume with
  different settings is refused); ``eval_plot.png``: timelines of ground truth vs prediction and R1 against the IoU
  threshold.

One module per job: :mod:`~open_r1.evaluation.metrics` (pure functions of records),
:mod:`~open_r1.evaluation.predictions` (the predictions file: read, validate, merge, rescore, atomic writes),
:mod:`~open_r1.evaluation.runner` (model, generation, sharding, resume), :mod:`~open_r1.evaluation.protocols` (the
field's scoring conventions, all computed for every run), :mod:`~open_r1.evaluation.importers` (lmms-eval and TimeLens
outputs as predictions files) and :mod:`~open_r1.evaluation.plots`. The
command line is :mod:`open_r1.evaluate` (``python evaluate.py`` / ``python -m open_r1.evaluate``).
"""

from open_r1.evaluation.metrics import (
    FAILURE_KINDS,
    IOU_TIE_EPS,
    THRESHOLDS,
    compute_metrics,
    format_table,
    recall_at,
    record_iou,
    rescore_record,
    score_output,
)
from open_r1.evaluation.plots import plot_predictions
from open_r1.evaluation.predictions import (
    CONFIG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    PREDICTIONS_FILE,
    PredictionsFileError,
    merge_predictions,
    read_predictions,
    record_key,
    record_problem,
    rescore_predictions,
)
from open_r1.evaluation.runner import (
    DEFAULT_SPLITS,
    BatchGenerator,
    default_output_dir,
    generate_records,
    resolve_queries,
    run_evaluation,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_SPLITS",
    "FAILURE_KINDS",
    "IOU_TIE_EPS",
    "METRICS_FILE",
    "PLOT_FILE",
    "PREDICTIONS_FILE",
    "THRESHOLDS",
    "BatchGenerator",
    "PredictionsFileError",
    "compute_metrics",
    "default_output_dir",
    "format_table",
    "generate_records",
    "merge_predictions",
    "plot_predictions",
    "read_predictions",
    "recall_at",
    "record_iou",
    "record_key",
    "record_problem",
    "rescore_predictions",
    "rescore_record",
    "resolve_queries",
    "run_evaluation",
    "score_output",
]
