"""Supervised warm start for video grounding: teacher-forced answers in the paper's format, before GRPO.

    python -m open_r1.sft_video --config recipes/charades/sft_qwen2_5_vl_7b.yaml --cache_dir cache/charades
    bash scripts/run_sft_video.sh                       # torchrun + DeepSpeed, the same conventions as GRPO

Each query becomes the GRPO prompt (same question, same video cache, same 3-D positions) followed by the target
``<think></think><answer>S to E</answer><|im_end|>`` (:func:`open_r1.prompts.build_answer`); the loss covers the
answer tokens only. Training runs on TRL's ``SFTTrainer`` with a collator that encodes through
:func:`open_r1.modeling.encode_batch`, so the rows are laid out exactly like GRPO's log-prob passes (left-padded
prompt, right-padded answer). The output folder holds model and processor: ``grpo_video --model_name_or_path`` and
``evaluate.py --model_base`` take it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from trl import ModelConfig, SFTConfig, SFTTrainer

from open_r1.configs import VideoDataArguments
from open_r1.modeling import LocalModelCardMixin

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(VideoDataArguments):
    """Data and video flags of the warm start (``python -m open_r1.sft_video``); optimisation flags are SFTConfig's."""

    dataset: str = field(default="charades", metadata={"help": "Bundled dataset (ignored with --annotation_file)."})
    split: str = field(default="train", metadata={"help": "Split of --dataset to train on."})
    no_think: bool = field(default=False, metadata={"help": "Targets without the <think></think> block."})
    video_first: bool = field(default=False, metadata={"help": "Put the video before the question in the prompt."})
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Train only the language model (false: the vision encoder too)."}
    )
    answer_decimals: int = field(
        default=2, metadata={"help": "Digits after the point in the target spans (the question asks for 2)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N queries only."})

    def __post_init__(self):
        super().__post_init__()
        if self.cache_dir is None and self.video_dir is None:
            raise ValueError("give --video_dir (raw videos) and/or --cache_dir (preprocessed videos)")


def build_dataset(rows: list[dict], script_args: SFTScriptArguments):
    """Rows -> a ``datasets.Dataset`` with the prompt conversation, the video id and the target text."""
    from datasets import Dataset

    from open_r1.prompts import build_answer, build_conversation

    think = not script_args.no_think
    return Dataset.from_list(
        [
            {
                "prompt": build_conversation(
                    row["query"], think=think, video_first=script_args.video_first, timestamps=script_args.timestamps
                ),
                "video_id": row["video_id"],
                # The first window is the target (a query with several windows is a QVHighlights-style exception).
                "answer": build_answer(
                    *map(float, row["windows"][0]), think=think, decimals=script_args.answer_decimals
                ),
            }
            for row in rows
        ]
    )


class VideoSFTTrainer(LocalModelCardMixin, SFTTrainer):
    """TRL's ``SFTTrainer``; only its model card differs (it names a local base model)."""


class VideoSFTCollator:
    """Features -> model inputs: ``[left-padded prompt | right-padded answer + <|im_end|>]``, labels on the answer.

    The prompt side goes through :func:`open_r1.modeling.encode_batch` (video patches, ``video_grid_thw``,
    ``second_per_grid_ts``, ``mm_token_type_ids``), the layout of GRPO's log-prob passes.
    """

    def __init__(self, processor, video_loader):
        self.processor = processor
        self.video_loader = video_loader
        tokenizer = processor.tokenizer
        self.end_ids = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        from open_r1.modeling import encode_batch

        clips: dict[str, object] = {}
        for feature in features:
            if feature["video_id"] not in clips:
                clips[feature["video_id"]] = self.video_loader(feature["video_id"])
        batch = encode_batch(
            self.processor, [f["prompt"] for f in features], [clips[f["video_id"]] for f in features], "left"
        )
        tokenizer = self.processor.tokenizer
        answers = [tokenizer(f["answer"], add_special_tokens=False)["input_ids"] + self.end_ids for f in features]
        width = max(len(a) for a in answers)
        answer_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        answer_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, ids in enumerate(answers):
            answer_ids[row, : len(ids)] = torch.tensor(ids)
            answer_mask[row, : len(ids)] = 1
        prompt_width = batch["input_ids"].size(1)
        batch["input_ids"] = torch.cat([batch["input_ids"], answer_ids], dim=1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], answer_mask], dim=1)
        batch["mm_token_type_ids"] = torch.nn.functional.pad(batch["mm_token_type_ids"], (0, width))
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        labels[:, :prompt_width] = -100
        batch["labels"] = labels
        batch["second_per_grid_ts"] = batch["second_per_grid_ts"].to(torch.float32)
        return dict(batch)


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig, callbacks=None):
    """Train and save; returns the trainer."""
    from open_r1.grpo_video import load_for_training, preflight, train_and_save
    from open_r1.trainer import vision_tower

    _, rows, source, checkpoint = preflight(script_args, training_args, model_args, job="warm start")
    # The collator reads the prompt, video id and answer columns; the dataset is encoded on the fly.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    dataset = build_dataset(rows, script_args)
    logger.info("%d warm-start queries over %d videos", len(rows), len({r["video_id"] for r in rows}))

    model, processor, _ = load_for_training(script_args, training_args, model_args)
    if script_args.freeze_vision_tower:
        vision_tower(model).requires_grad_(False)
    trainer = VideoSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=VideoSFTCollator(processor, source.get),
        callbacks=callbacks,
    )
    return train_and_save(trainer, processor, checkpoint, script_args)


def cli(argv: list[str] | None = None):
    from open_r1.grpo_video import run_entry_point

    return run_entry_point((SFTScriptArguments, SFTConfig, ModelConfig), main, "warm start", argv)


if __name__ == "__main__":
    cli()
