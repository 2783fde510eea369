"""VideoGRPOTrainer on a tiny Qwen2.5-VL: video inputs reach every forward pass, and GRPO learns."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from open_r1.modeling import build_tiny_model, load_model, load_processor
from open_r1.prompts import build_conversation
from open_r1.trainer import VideoGRPOTrainer, vision_tower
from open_r1.video import VideoClip


def make_clip(num_frames, height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=gen)
    return VideoClip(
        frames=frames,
        sample_fps=2.0,
        frame_indices=list(range(num_frames)),
        duration=num_frames / 2.0,
        source_fps=2.0,
        source_size=(height, width),
        decoder="test",
    )


# Two videos of different sizes, so a per-device batch mixes patch counts (64 and 72 patches).
CLIPS = {"v0": make_clip(4, 56, 112, seed=0), "v1": make_clip(4, 84, 84, seed=1)}


def dataset(num_rows=2):
    rows = [
        {
            "prompt": build_conversation(f"the event number {i} happens", think=False),
            "video_id": f"v{i % 2}",
            "solution": [1.0, 2.0],
            "duration": 2.0,
        }
        for i in range(num_rows)
    ]
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        beta=0.04,
        loss_type="grpo",
        learning_rate=1e-3,
        save_strategy="no",
        temperature=1.0,
        seed=0,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def length_reward(completions, **kwargs):
    return [len(c[0]["content"]) / 10 for c in completions]


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


def make_trainer(tiny_path, tmp_path, reward_funcs=(length_reward, constant_reward), **overrides):
    model = load_model(tiny_path)
    processor = load_processor(tiny_path)
    return VideoGRPOTrainer(
        model,
        list(reward_funcs),
        args=config(tmp_path, **overrides),
        train_dataset=dataset(),
        processing_class=processor,
        video_loader=CLIPS.__getitem__,
    )


def direct_logps(model, batch, drop=()):
    """Per-token log-probs of the completion tokens from a plain model call."""
    inputs = {k: v for k, v in batch.items() if k not in drop}
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), dim=-1)
    return logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


def test_logps_match_direct_forward_with_video(tiny_path, tmp_path):
    trainer = make_trainer(tiny_path, tmp_path)
    rows = [dict(row) for row in dataset()]
    rows = [row for row in rows for _ in range(4)]  # 4 completions per prompt, as the sampler repeats them
    trainer.model.eval()
    out = trainer._generate_and_score_completions(rows)

    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    width = out["completion_ids"].size(1)
    assert out["mm_token_type_ids"].shape == input_ids.shape
    assert not out["mm_token_type_ids"][:, -width:].any()  # zeros over the completion
    video_tokens = (input_ids == trainer.model.config.video_token_id).sum(1)
    assert torch.equal((out["mm_token_type_ids"] == 2).sum(1), video_tokens)
    assert sorted(set(video_tokens.tolist())) == [16, 18]  # both videos, in the same batch

    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": torch.cat(out["pixel_values_videos"]),
        "video_grid_thw": out["video_grid_thw"],
        "second_per_grid_ts": out["second_per_grid_ts"],
        "mm_token_type_ids": out["mm_token_type_ids"],
    }
    mask = out["completion_mask"].bool()
    expected = direct_logps(trainer.model, batch)[:, -width:]

    # Policy pass, one row per chunk: patches are sliced per row.
    trainer._video_inputs = {k: batch[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, width, batch_size=3, mm_token_type_ids=batch["mm_token_type_ids"]
        )
    trainer._video_inputs = None
    torch.testing.assert_close(logps[mask], expected[mask], atol=2e-5, rtol=0)

    # Reference pass inside TRL's rollout (a reloaded copy of the same weights at step 0).
    torch.testing.assert_close(out["ref_per_token_logps"][mask], expected[mask], atol=2e-5, rtol=0)

    # The time positions and the video type ids matter: the processor's silent 24 fps default (1/12 s per grid
    # step) or a missing mm_token_type_ids (1-D positions) give different log-probs.
    at_24fps = dict(batch, second_per_grid_ts=torch.full_like(batch["second_per_grid_ts"], 2 / 24))
    # (A random tiny model is only weakly position-sensitive: ~1e-4, still 5x the matching tolerance.)
    other = direct_logps(trainer.model, at_24fps)[:, -width:]
    assert (other - expected)[mask].abs().max() > 1e-4
    other = direct_logps(trainer.model, batch, drop=("mm_token_type_ids",))[:, -width:]
    assert (other - expected)[mask].abs().max() > 1e-4


@pytest.mark.slow
def test_two_steps_log_rewards_and_train_only_the_llm(tiny_path, tmp_path):
    trainer = make_trainer(tiny_path, tmp_path, learning_rate=1e-2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in ("rewards/length_reward/mean", "rewards/constant_reward/mean", "kl", "completions/mean_length"):
            assert key in entry, key
        assert entry["rewards/constant_reward/mean"] == 1.0
    assert logs[-1]["kl"] > 0  # the policy moved away from the reference after the first update

    visual = {f"model.visual.{name}" for name, _ in vision_tower(trainer.model).named_parameters()}
    assert visual
    for name, param in trainer.model.named_parameters():
        if name in visual:
            assert not param.requires_grad
            assert torch.equal(param, before[name]), f"{name} (vision tower) changed"
        else:
            assert not torch.equal(param, before[name]), f"{name} did not change"


@pytest.mark.slow
def test_accumulation_and_reused_rollouts(tiny_path, tmp_path, monkeypatch):
    """The recipe's shape (2 micro-batches per rollout) plus num_iterations=2, where TRL needs old-policy log-probs."""
    trainer = make_trainer(tiny_path, tmp_path, gradient_accumulation_steps=2, num_iterations=2, max_steps=2)
    assert trainer.args.steps_per_generation == 2
    calls = []
    original = type(trainer)._get_per_token_logps_and_entropies

    def spy(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        calls.append(self._video_inputs is not None)
        return original(self, model, input_ids, attention_mask, logits_to_keep, **kwargs)

    monkeypatch.setattr(type(trainer), "_get_per_token_logps_and_entropies", spy)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    # 1 rollout: old policy + reference, then 2 iterations x 2 micro-batches of policy passes; all with video.
    assert len(calls) == 2 + 4 and all(calls)


@pytest.mark.slow
def test_unfrozen_vision_tower_trains(tiny_path, tmp_path):
    model = load_model(tiny_path)
    trainer = VideoGRPOTrainer(
        model,
        [length_reward],
        args=config(tmp_path, learning_rate=1e-2, max_steps=1, beta=0.0),
        train_dataset=dataset(),
        processing_class=load_processor(tiny_path),
        video_loader=CLIPS.__getitem__,
        freeze_vision_tower=False,
    )
    weight = vision_tower(trainer.model).blocks[0].attn.qkv.weight
    before = weight.detach().clone()
    trainer.train()
    assert not torch.equal(weight, before)


def test_vision_tokens_are_suppressed(tiny_path, tmp_path):
    trainer = make_trainer(tiny_path, tmp_path)
    config_ = trainer.model.config
    suppressed = set(trainer.generation_config.suppress_tokens)
    assert {config_.video_token_id, config_.image_token_id, config_.vision_start_token_id} <= suppressed


def test_rejects_remove_unused_columns(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="remove_unused_columns"):
        make_trainer(tiny_path, tmp_path, remove_unused_columns=True)


def test_rejects_rollout_paths_that_drop_the_video(tiny_path, tmp_path):
    # TRL's vLLM and continuous-batching rollouts tokenize prompts themselves and never see the video.
    with pytest.raises(ValueError, match="use_vllm"):
        make_trainer(tiny_path, tmp_path, use_vllm=True)
    with pytest.raises(ValueError, match="use_transformers_continuous_batching"):
        make_trainer(tiny_path, tmp_path, use_transformers_continuous_batching=True)


LOW_IDS = 1024  # the first half of the small vocabulary


def low_token_reward(completion_ids, **kwargs):
    """Dense reward: the fraction of completion tokens drawn from the first half of the vocabulary."""
    return [sum(i < LOW_IDS for i in ids) / max(len(ids), 1) for ids in completion_ids]


@pytest.mark.slow
def test_grpo_learns_a_dense_reward(tiny_path, tmp_path):
    trainer = make_trainer(
        tiny_path,
        tmp_path,
        reward_funcs=[low_token_reward],
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        max_steps=24,
        num_generations=8,
        per_device_train_batch_size=8,
        beta=0.0,
        max_completion_length=6,
    )
    trainer.train()
    rewards = [e["rewards/low_token_reward/mean"] for e in trainer.state.log_history if "loss" in e]
    start, end = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    # Observed: ~0.5 over the first 5 steps (chance), 1.0 over the last 5.
    assert end > start + 0.3, rewards
    assert end > 0.85, rewards


@pytest.mark.slow
def test_one_step_with_the_real_152k_tokenizer(tmp_path):
    """The full Qwen vocabulary (ids of the vision tokens, chat template, output layer) trains too."""
    path = build_tiny_model(tmp_path / "tiny_real_vocab", small_vocab=False)
    processor = load_processor(path)
    assert len(processor.tokenizer) == 151665
    trainer = VideoGRPOTrainer(
        load_model(path),
        [length_reward],
        args=config(tmp_path, max_steps=1, per_device_train_batch_size=2, num_generations=2, max_completion_length=4),
        train_dataset=dataset(),
        processing_class=processor,
        video_loader=CLIPS.__getitem__,
    )
    assert 151656 in trainer.generation_config.suppress_tokens  # <|video_pad|> in the real vocabulary
    trainer.train()
    assert trainer.state.global_step == 1
