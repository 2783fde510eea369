"""GRPO on videos: TRL's GRPOTrainer with the video tensors threaded through every forward pass.

TRL 1.16 handles images only. This subclass wraps (never copies) five of its methods:

- ``_generate_and_score_completions``: loads each row's clip, encodes prompts + videos once with
  :func:`open_r1.modeling.encode_batch`, runs TRL's rollout/scoring, then attaches the video tensors to the batch
  row by row so TRL's shuffle and split keep each completion with its own video.
- ``_tokenize_prompts``: hands TRL the token ids and video tensors encoded above, so generation sees the video.
- ``_get_per_token_logps_and_entropies``: adds ``pixel_values_videos``, ``video_grid_thw``, ``second_per_grid_ts``
  and ``mm_token_type_ids`` to the model call, slicing the patches per row by ``video_grid_thw.prod(-1)``. This
  covers the old-policy, reference and policy passes, so all of them use the same 3-D time positions as sampling.
- ``_compute_loss``: makes the current slice's videos the ones that pass uses.
- ``_calculate_rewards``: also logs where the rollout's signal is (``signal/*``, :mod:`open_r1.signals`).

With ``shared_work`` (the default) work shared by the rows of a group is done once: the frozen vision tower encodes
each distinct video once per rollout, without grad, and those features serve generation and the old-policy,
reference and policy passes (an unfrozen tower runs once per distinct video in each pass, with its gradient); a group's
completions are scored in one packed sequence (``trainer/packing.py``); and generation prefills each distinct prompt
once and samples its completions from copies of that cache. ``shared_work=False`` is the previous path (the tower over every row in every pass), kept for comparison.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
from collections.abc import Callable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from trl import GRPOTrainer

from open_r1.decoding import (
    RolloutWeights,
    StaticDecoder,
    check_decode_mode,
    check_rollout_weights,
    equal_run_length,
    generate_replaced,
    half_linear_weights,
    sample_from_one_prefill,
    use_static_decode,
)
from open_r1.modeling import (
    LocalModelCardMixin,
    encode_batch,
    per_row_patches,
    video_features_once,
    vision_token_ids,
)
from open_r1.positions import DEFAULT_POSITION_LAYOUT, inner_vlm, position_layout, set_position_layout
from open_r1.signals import SignalWatch
from open_r1.trainer import packing
from open_r1.trainer.packing import prompt_groups
from open_r1.trainer.reward_checks import NonFiniteRewardError, checked_reward

__all__ = ["NonFiniteRewardError", "VideoGRPOTrainer", "vision_tower"]
from open_r1.vision_attention import BATCHED_WINDOWS, set_vision_attention

logger = logging.getLogger(__name__)

VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
# TRL losses whose value depends on which rows share a micro-batch (bnpo divides by the micro-batch's token count);
# every other loss type averages each row once whichever micro-batch holds it, so whole-group micro-batches keep it.
SPLIT_DEPENDENT_LOSSES = ("bnpo",)


def vision_tower(model) -> torch.nn.Module:
    """The vision encoder (patch embed + blocks + merger) of a Qwen2.5-VL model, unwrapped from PEFT/DDP."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    base = getattr(inner, "model", inner)
    return base.visual


class VideoGRPOTrainer(LocalModelCardMixin, GRPOTrainer):
    """GRPO for temporal video grounding with Qwen2.5-VL.

    Args:
        model: model id/path or a loaded ``Qwen2_5_VLForConditionalGeneration``.
        reward_funcs: reward callables (see :mod:`open_r1.rewards`); each is logged as ``rewards/<name>/mean``.
        video_loader: ``video_id -> VideoClip`` (e.g. ``VideoSource(...).get``). Every dataset row needs a
            ``video_id`` and a conversational ``prompt`` with one ``{"type": "video"}`` item.
        freeze_vision_tower: train only the language model, as the paper does. ``False`` trains the vision encoder
            too (what TimeZero's script did by default).
        position_layout: 3-D rope positions of the policy and the reference model: ``"reference"`` (Qwen2.5-VL's
            own layout, the default) or ``"transformers"`` (see :mod:`open_r1.positions`).
        reference_dtype: dtype of the frozen reference model when it differs from the policy's (fp32 master weights
            of a bf16 run without DeepSpeed: the reference stays bf16). Ignored under DeepSpeed.
        shared_work: encode each distinct video once per rollout (frozen tower) or once per pass (trainable tower),
            sample a group's completions from one copy of its prompt and score them in one packed sequence (under a
            flash-attention-2 model too: packed calls go to sdpa, see :mod:`open_r1.trainer.packing`). ``False``
            runs the previous path.
        decode: ``"auto"`` (a static KV cache and a compiled decode step on CUDA, eager elsewhere), ``"static"`` (on
            every device) or ``"eager"``: how the completions of a shared prefill are decoded (see
            :mod:`open_r1.decoding`; same samples under a seed).
        whole_groups: shuffle a rollout's groups, not its rows, before cutting gradient-accumulation micro-batches,
            so each micro-batch holds whole groups (one packed sequence each); same loss and gradients, except for
            ``loss_type: bnpo`` (normalised per micro-batch), which keeps TRL's row shuffle. ``False``: TRL's row
            shuffle.
        Remaining arguments go to :class:`trl.GRPOTrainer`.
    """

    def __init__(
        self,
        model,
        reward_funcs,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        video_loader: Callable | None = None,
        freeze_vision_tower: bool = True,
        position_layout: str = DEFAULT_POSITION_LAYOUT,
        reference_dtype: str | torch.dtype | None = None,
        shared_work: bool = True,
        whole_groups: bool = True,
        decode: str = "auto",
        rollout_weights: str = "auto",
        **kwargs,
    ):
        if video_loader is None:
            raise ValueError("VideoGRPOTrainer needs a video_loader (video_id -> VideoClip), e.g. VideoSource.get")
        unsupported = [name for name in ("tools", "rollout_func", "environment_factory") if kwargs.get(name)]
        if args is not None:
            unsupported += [
                flag for flag in ("use_vllm", "use_transformers_continuous_batching") if getattr(args, flag, False)
            ]
        if unsupported:
            # These TRL paths build their own prompts and would silently drop the video.
            raise ValueError(f"VideoGRPOTrainer does not support {', '.join(unsupported)}: they would drop the video")
        if args is not None and args.remove_unused_columns:
            # The video id and the reward columns (solution, duration) must reach the rollout and the rewards.
            raise ValueError("remove_unused_columns must be False: video_id and the reward columns are needed")
        if processing_class is not None and hasattr(processing_class, "tokenizer"):
            processing_class.tokenizer.padding_side = "left"
        if freeze_vision_tower and not isinstance(model, str):
            vision_tower(model).requires_grad_(False)
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if not self._is_vlm:
            raise ValueError("VideoGRPOTrainer needs a multimodal processor (Qwen2.5-VL), got a tokenizer")
        if freeze_vision_tower:
            vision_tower(self.model).requires_grad_(False)
        self.freeze_vision_tower = freeze_vision_tower
        # TRL built the reference model (and the policy, when given a path) itself: both get the same layout.
        set_position_layout(self.model, position_layout)
        if self.ref_model is not None:
            set_position_layout(self.ref_model, position_layout)
            if reference_dtype is not None and not self.is_deepspeed_enabled:
                dtype = getattr(torch, reference_dtype) if isinstance(reference_dtype, str) else reference_dtype
                self.ref_model.to(dtype)
        self.position_layout = position_layout
        self.shared_work = shared_work
        self.whole_groups = whole_groups
        self.decode = check_decode_mode(decode)
        self.rollout_weights = check_rollout_weights(rollout_weights)
        if rollout_weights == "bf16" and not (args is not None and args.bf16):
            raise ValueError(
                "rollout_weights 'bf16' copies the weights bf16 autocast would cast: it needs --bf16 true"
            )
        self._rollout_copy: RolloutWeights | None = None
        self.last_rollout: dict | None = None  # the latest rollout's rewards, spans and signals
        self.signal_watch = SignalWatch()  # says once when a run learns nothing (signals.py)
        # torch.compile backend of the static decode step (None: inductor); the CPU equality tests use "eager".
        self.decode_compile_backend: str | None = None
        self._static_decoder: StaticDecoder | None = None  # its compiled shapes and static cache, kept across rollouts
        self._logged_choices: set[str] = set()
        # TRL loads the reference model itself: its sdpa tower batches its windows when the policy's does
        # (load_model's default, see vision_attention.py).
        batched_windows = inner_vlm(self.model).visual.config._attn_implementation == BATCHED_WINDOWS
        for model in {id(m): m for m in (self.model, self.ref_model) if m is not None}.values():
            set_vision_attention(model, batched=batched_windows)
            if shared_work:
                # Packing needs an attention kernel that takes the packed group's 4-D mask (trainer/packing.py).
                packing.make_packable(inner_vlm(model).language_model.config)
        self.video_loader = video_loader
        # A reward that returns NaN or inf would be counted as 0 (TRL reads NaN as "no reward") or poison the
        # advantages: stop with the reward's name and the row instead.
        self.reward_funcs = [
            func if isinstance(func, torch.nn.Module) else checked_reward(func, name)
            for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True)
        ]

        # Vision placeholders are never part of an answer; a sampled `<|video_pad|>` would also break the next
        # forward (more video tokens than video features). TRL only suppresses the image token.
        suppress = sorted(set(self.generation_config.suppress_tokens or []) | set(vision_token_ids(self._tokenizer)))
        self.generation_config.suppress_tokens = suppress
        self.generation_kwargs["suppress_tokens"] = suppress

        # Video tensors of the rows whose log-probs are being computed (set by the two wrappers below).
        self._video_inputs: dict | None = None
        # Token ids / mm ids of the prompts being rolled out, read by `_tokenize_prompts`.
        self._encoded_prompts: dict | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Rollout

    def _log_once(self, key: str, message: str, *args) -> None:
        """One info line per trainer for a choice that holds for the whole run (packing, micro-batch layout)."""
        if key not in self._logged_choices:
            self._logged_choices.add(key)
            logger.info(message, *args)

    def _prepare_inputs(self, generation_batch):
        if not (self.whole_groups and self.model.training):
            return super()._prepare_inputs(generation_batch)
        if self.loss_type in SPLIT_DEPENDENT_LOSSES:
            self._log_once("whole_groups", "micro-batches: loss_type %s normalises per micro-batch, so which rows share "
                           "one changes the loss; rows shuffled one by one (TRL)", self.loss_type)  # fmt: skip
            return super()._prepare_inputs(generation_batch)
        import trl.trainer.grpo_trainer as trl_grpo

        row_shuffle = trl_grpo.shuffle_sequence_dict
        chunks = self.args.steps_per_generation

        def shuffle_whole_groups(batch):
            rows = len(next(value for value in batch.values() if value is not None))
            offset = self.accelerator.process_index * rows
            order = packing.whole_group_order(rows, self.num_generations, chunks, offset)
            if order is None:
                self._log_once(
                    "whole_groups",
                    "micro-batches: %d rows of groups of %d on this process do not tile %d micro-batches; "
                    "rows shuffled one by one (TRL)",
                    rows, self.num_generations, chunks,
                )  # fmt: skip
                return row_shuffle(batch)
            self._log_once(
                "whole_groups",
                "micro-batches: whole groups, %d rows per micro-batch from groups of %d",
                rows // chunks, self.num_generations,
            )  # fmt: skip
            return packing.reorder_rows(batch, order)

        trl_grpo.shuffle_sequence_dict = shuffle_whole_groups
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            trl_grpo.shuffle_sequence_dict = row_shuffle

    def _load_clips(self, inputs: list[dict]) -> list:
        """One clip per row; rows of the same group share a video, so each video is loaded once."""
        loaded = {}
        for row in inputs:
            if row["video_id"] not in loaded:
                loaded[row["video_id"]] = self.video_loader(row["video_id"])
        return [loaded[row["video_id"]] for row in inputs]

    def _tower_is_trainable(self) -> bool:
        return any(p.requires_grad for p in vision_tower(self.model).parameters())

    def _encode_videos(self, patches: list[torch.Tensor], grids: torch.Tensor, model=None) -> list[torch.Tensor]:
        """Vision features per row, each distinct video once, by ``model``'s tower (default: the policy's)."""
        with self.accelerator.autocast():
            return video_features_once(self.model if model is None else model, patches, grids, self.accelerator.device)

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        clips = self._load_clips(inputs)
        encoded = encode_batch(self.processing_class, [row["prompt"] for row in inputs], clips, padding_side="left")
        # TRL pads the prompts itself: hand it the unpadded ids.
        mask = encoded["attention_mask"].bool()
        prompt_mm = [ids[m].tolist() for ids, m in zip(encoded["mm_token_type_ids"], mask)]
        self._encoded_prompts = {
            "prompt_ids": [ids[m].tolist() for ids, m in zip(encoded["input_ids"], mask)],
            "mm_token_type_ids": prompt_mm,
        }
        video = {key: encoded[key] for key in VIDEO_KEYS}
        video["second_per_grid_ts"] = video["second_per_grid_ts"].to(torch.float32)
        patches = per_row_patches(video["pixel_values_videos"], video["video_grid_thw"])
        features = None
        if self.shared_work:
            # Rows of the same video share one patch tensor; with the tower frozen, one feature tensor too.
            first: dict[str, torch.Tensor] = {}
            patches = [first.setdefault(row["video_id"], tensor) for row, tensor in zip(inputs, patches)]
            with torch.no_grad():
                features = self._encode_videos(patches, video["video_grid_thw"])
        # Features every pass may reuse: only a frozen tower's (a trainable one runs again, with grad, per pass).
        reusable = features if features is not None and not self._tower_is_trainable() else None
        self._video_inputs = {**video, "prompt_mm_token_type_ids": prompt_mm, "patches": patches}
        if reusable is not None:
            self._video_inputs["features"] = reusable
        try:
            with self._shared_generation(inputs, features), self._bf16_rollout_weights():
                output = super()._generate_and_score_completions(inputs)
        finally:
            self._encoded_prompts = None
            self._video_inputs = None

        device = self.accelerator.device
        # Per-row entries: TRL shuffles the rows and splits them into per-step slices; a list of per-row patch
        # tensors and per-row grids move with their rows.
        output["pixel_values_videos"] = patches
        if reusable is not None:
            output["video_features"] = reusable
        output["video_grid_thw"] = video["video_grid_thw"].to(device)
        output["second_per_grid_ts"] = video["second_per_grid_ts"].to(device)
        output["mm_token_type_ids"] = self._full_mm_token_type_ids(
            prompt_mm, output["prompt_ids"].size(1), output["completion_ids"].size(1)
        ).to(device)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards (gathered over processes), plus where the rollout's signal is (:mod:`open_r1.signals`):
        logged each step as ``signal/<name>`` and kept, with the rewards and parsed spans, in ``last_rollout``."""
        from accelerate.utils import gather

        from open_r1.grounding import parse_span
        from open_r1.rewards import completion_text
        from open_r1.signals import rollout_signals

        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        local = []
        for completion in completions:
            span = parse_span(completion_text(completion), strict=True)
            local.append(span if span is not None else (math.nan, math.nan))
        spans = gather(torch.tensor(local, dtype=torch.float64, device=rewards_per_func.device).view(-1, 2)).cpu()
        spans = [None if math.isnan(start) else (start, end) for start, end in spans.tolist()]
        if self.last_rollout is None and self.model.training:
            self.signal_watch.first_rollout(spans)
        weights = self.reward_weights.to(rewards_per_func.device)
        total = (rewards_per_func * weights).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = math.nan
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        signals = rollout_signals(total.cpu(), spans, num_generations)
        for name, value in signals.items():
            if not math.isnan(value):  # no group with two parsed answers: no span spread this step
                self._metrics[mode][f"signal/{name}"].append(value)
        self.last_rollout = {"rewards_per_func": rewards_per_func.cpu(), "total": total.cpu(), "spans": spans,
                             "signals": signals}  # fmt: skip
        if mode == "train":
            self.signal_watch.update(signals, lambda: completion_text(completions[0]))
        return rewards_per_func

    def _uses_rollout_copy(self, model) -> bool:
        """A bf16 copy of the linear weights for generation: on the fp32-master path under bf16 autocast (``auto``),
        or when asked (``bf16``); never under DeepSpeed, whose bf16 model holds bf16 weights already."""
        if self.rollout_weights == "master" or self.is_deepspeed_enabled or not self.args.bf16:
            return False
        return bool(half_linear_weights(model))

    @contextlib.contextmanager
    def _bf16_rollout_weights(self):
        """During TRL's ``generate`` call: the linear layers' weights as one bf16 copy (:class:`RolloutWeights`),
        refreshed from the fp32 masters once per rollout, instead of autocast's cast per layer per token."""
        model = self.accelerator.unwrap_model(self.model)
        if not self._uses_rollout_copy(model):
            yield
            return
        if self._rollout_copy is None or self._rollout_copy.model is not model:
            self._rollout_copy = RolloutWeights(model, torch.bfloat16)
        self._log_once("rollout_weights", "rollouts: one bf16 copy of the linear weights per rollout (fp32 masters "
                       "under bf16 autocast; --rollout_weights master casts per call instead)")  # fmt: skip
        current, copy = model.generate, self._rollout_copy

        def generate(*args, **kwargs):
            # Autocast around the call too: a trainer not yet prepared by accelerate (data selection) has no autocast
            # on its forward, and bf16 weights need it; inside a prepared forward's own autocast it changes nothing.
            with copy, self.accelerator.autocast():
                return current(*args, **kwargs)

        with generate_replaced(model, generate):
            yield

    @contextlib.contextmanager
    def _shared_generation(self, inputs: list[dict], features: list[torch.Tensor] | None):
        """During TRL's ``generate`` call: precomputed video features, and one prompt copy per run of equal rows."""
        if features is None:
            yield
            return
        model = self.accelerator.unwrap_model(self.model)
        original = model.generate
        video_ids = [row["video_id"] for row in inputs]

        def generate(input_ids, attention_mask, generation_config=None, **kwargs):
            kwargs.pop("pixel_values_videos", None)
            run = equal_run_length(input_ids, attention_mask, video_ids)
            if run == 1 or generation_config is None or kwargs.get("return_dict_in_generate"):
                run, keep = 1, torch.arange(input_ids.size(0), device=input_ids.device)
            else:
                keep = torch.arange(0, input_ids.size(0), run, device=input_ids.device)
                kwargs = {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                input_ids, attention_mask = input_ids[keep], attention_mask[keep]
                generation_config = copy.deepcopy(generation_config)
            pooled = BaseModelOutputWithPooling(pooler_output=tuple(features[row] for row in keep.tolist()))
            if run > 1 and generation_config.do_sample and position_layout(model) == "reference":
                static = None
                if use_static_decode(self.decode, input_ids.device):
                    if self._static_decoder is None:
                        self._static_decoder = StaticDecoder(input_ids.device, self.decode_compile_backend)
                        self._log_once("decode", "rollouts: static KV cache, compiled decode step (%s)",
                                       self._static_decoder.compile_config)  # fmt: skip
                    static = self._static_decoder
                return sample_from_one_prefill(
                    model, original, input_ids, attention_mask, pooled, run, generation_config, kwargs, static
                )
            greedy = run > 1 and not generation_config.do_sample
            if run > 1:
                # Greedy: one completion per prompt, repeated. Sampling with the library's layout (its last prompt
                # token sits off the decode offset, so no cache reuse): the run's completions from one prompt copy.
                generation_config.num_return_sequences = 1 if greedy else run
            out = original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                mm_encoder_outputs={"video": pooled},
                **kwargs,
            )
            return out.repeat_interleave(run, dim=0) if greedy else out

        with generate_replaced(model, generate):
            yield

    @staticmethod
    def _full_mm_token_type_ids(prompt_mm: list[list[int]], prompt_width: int, completion_width: int) -> torch.Tensor:
        """Left-pad each prompt's type ids to the padded prompt width and add zeros over the completion."""
        out = torch.zeros(len(prompt_mm), prompt_width + completion_width, dtype=torch.long)
        for row, ids in enumerate(prompt_mm):
            if ids:
                out[row, prompt_width - len(ids) : prompt_width] = torch.tensor(ids)
        return out

    def _tokenize_prompts(self, prompts: list):
        if self._encoded_prompts is None:
            raise RuntimeError("VideoGRPOTrainer rolls out only through _generate_and_score_completions")
        if len(prompts) != len(self._encoded_prompts["prompt_ids"]):
            raise RuntimeError("prompt count changed between encoding and generation")
        video = self._video_inputs
        multimodal_fields = {
            "pixel_values_videos": video["pixel_values_videos"],
            "video_grid_thw": video["video_grid_thw"],
            "second_per_grid_ts": video["second_per_grid_ts"],
            # A per-token field: TRL left-pads it like the prompt ids.
            "mm_token_type_ids": self._encoded_prompts["mm_token_type_ids"],
        }
        return self._encoded_prompts["prompt_ids"], None, multimodal_fields

    # ------------------------------------------------------------------------------------------------------------
    # Log-probs

    def _compute_loss(self, model, inputs):
        patches = inputs["pixel_values_videos"]
        self._video_inputs = {
            "pixel_values_videos": torch.cat(patches, dim=0) if isinstance(patches, list) else patches,
            "video_grid_thw": inputs["video_grid_thw"],
            "second_per_grid_ts": inputs["second_per_grid_ts"],
        }
        if isinstance(patches, list):
            self._video_inputs["patches"] = patches
        if inputs.get("video_features") is not None:
            self._video_inputs["features"] = inputs["video_features"]
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._video_inputs = None

    def _packed_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, video, patches, entropy, batch_size
    ):
        """Log-probs (and entropies) of every row: each group of rows sharing prompt and video becomes one packed
        sequence, and the rows, taken group by group, go through the model ``batch_size`` at a time, the groups of a
        call concatenated into one sequence. The number of model calls is ``ceil(rows / batch_size)``, the same on
        every rank whatever its groups (ZeRO-3 gathers the weights in every call, and ranks making different numbers
        of calls would wait on each other for ever); a group cut by a call boundary reads its prompt in both."""
        width = logits_to_keep
        prompt_width = input_ids.size(1) - width
        device = input_ids.device
        features = video.get("features")
        keys = [id(tensor) for tensor in (features if features is not None else patches)]
        inner = inner_vlm(model)
        logps: list[torch.Tensor | None] = [None] * input_ids.size(0)
        entropies: list[torch.Tensor | None] = [None] * input_ids.size(0)
        all_groups = prompt_groups(input_ids[:, :prompt_width], attention_mask[:, :prompt_width], keys)
        group_of = {row: index for index, rows in enumerate(all_groups) for row in rows}
        order = [row for rows in all_groups for row in rows]
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            groups = [list(rows) for _, rows in itertools.groupby(chunk, key=group_of.__getitem__)]
            firsts = [rows[0] for rows in groups]
            packed, offsets, prompt_lengths = packing.packed_call(
                inner, input_ids, attention_mask, prompt_width, groups, video, device
            )
            grids = video["video_grid_thw"][firsts].to(device)
            if features is not None:
                group_features = [features[first] for first in firsts]
            else:  # a trainable tower: every distinct video of the chunk in one pass, with grad
                group_features = self._encode_videos([patches[first] for first in firsts], grids, model)
            pooled = BaseModelOutputWithPooling(pooler_output=tuple(group_features))
            with self.accelerator.autocast():
                out = model(
                    **packed,
                    video_grid_thw=grids,
                    second_per_grid_ts=video["second_per_grid_ts"][firsts].to(device),
                    mm_encoder_outputs={"video": pooled},
                    fused_lm_head=True,
                )
            for rows, offset, prompt_length in zip(groups, offsets, prompt_lengths, strict=True):
                begin = offset + prompt_length - 1
                scored = out.log_probs[0, begin : begin + len(rows) * width].view(len(rows), width)
                for index, row in enumerate(rows):
                    logps[row] = scored[index]
                if entropy:
                    scored = out.entropy[0, begin : begin + len(rows) * width].view(len(rows), width)
                    for index, row in enumerate(rows):
                        entropies[row] = scored[index]
        return torch.stack(logps), torch.stack(entropies) if entropy else None, None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        video = self._video_inputs
        if video is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, **kwargs
            )

        mm_token_type_ids = kwargs.pop("mm_token_type_ids", None)
        if mm_token_type_ids is None:
            # Old-policy / reference pass inside TRL's rollout: TRL does not know about the video type ids.
            mm_token_type_ids = self._full_mm_token_type_ids(
                video["prompt_mm_token_type_ids"], input_ids.size(1) - logits_to_keep, logits_to_keep
            ).to(input_ids.device)
        device = input_ids.device
        patches = video.get("patches") or per_row_patches(video["pixel_values_videos"], video["video_grid_thw"])
        num_rows = input_ids.size(0)
        if len(patches) != num_rows:
            raise RuntimeError(f"{len(patches)} videos for {num_rows} rows")
        batch_size = kwargs.pop("batch_size", None) or num_rows
        if self.shared_work and packing.accepts_packed_mask(model) and not kwargs.get("compute_aux_loss"):
            self._log_once(
                "packing",
                "log-prob passes: one packed sequence per group, one model call per %d rows (%s attention)",
                batch_size,
                inner_vlm(model).language_model.config._attn_implementation,
            )
            entropy = kwargs.get("compute_entropy")
            return self._packed_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, video, patches, entropy, batch_size
            )

        results = []
        for start in range(0, num_rows, batch_size):
            end = min(start + batch_size, num_rows)
            grids = video["video_grid_thw"][start:end]
            chunk_video = {
                "video_grid_thw": grids.to(device),
                "second_per_grid_ts": video["second_per_grid_ts"][start:end].to(device),
            }
            if not self.shared_work:
                chunk_video["pixel_values_videos"] = torch.cat(patches[start:end], dim=0).to(device)
            else:
                # Frozen tower: the rollout's features. Trainable tower: once per distinct video of the chunk,
                # with grad (torch.is_grad_enabled() decides, as in a plain forward).
                features = video.get("features")
                if features is not None:
                    chunk = features[start:end]
                else:
                    chunk = self._encode_videos(patches[start:end], grids, model)
                pooled = BaseModelOutputWithPooling(pooler_output=tuple(chunk))
                chunk_video["mm_encoder_outputs"] = {"video": pooled}
            with _extra_forward_kwargs(model, chunk_video):
                results.append(
                    super()._get_per_token_logps_and_entropies(
                        model,
                        input_ids[start:end],
                        attention_mask[start:end],
                        logits_to_keep,
                        batch_size=end - start,
                        mm_token_type_ids=mm_token_type_ids[start:end],
                        **kwargs,
                    )
                )
        logps = torch.cat([r[0] for r in results], dim=0)
        entropies = torch.cat([r[1] for r in results], dim=0) if results[0][1] is not None else None
        aux = torch.stack([r[2] for r in results]).mean() if results[0][2] is not None else None
        return logps, entropies, aux


@contextlib.contextmanager
def _extra_forward_kwargs(model: torch.nn.Module, extra: dict):
    """Add ``extra`` keyword arguments to ``model``'s next forward calls (TRL builds the call's inputs itself)."""

    def hook(module, args, kwargs):
        return args, {**kwargs, **extra}

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
