"""VideoGRPOTrainer on a tiny Qwen2.5-VL: video inputs reach every forward pass, and GRPO learns."""

from pathlib import Path

import pytest
import torch
import yaml
from _reference_positions import batch_positions
from datasets import Dataset
from trl import GRPOConfig

from open_r1.modeling import build_tiny_model, encode_batch, load_model, load_processor
from open_r1.positions import set_position_layout
from open_r1.prompts import build_conversation
from open_r1.trainer import VideoGRPOTrainer, vision_tower
from open_r1.trainer.video_grpo_trainer import NonFiniteRewardError
from open_r1.video import VideoClip


def make_clip(num_frames, height, width, seed, fps=2.0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=gen)
    return VideoClip(
        frames=frames,
        sample_fps=fps,
        frame_indices=list(range(num_frames)),
        duration=num_frames / fps,
        source_fps=fps,
        source_size=(height, width),
        decoder="test",
    )


# Two videos of different sizes, so a per-device batch mixes patch counts (64 and 72 patches).
CLIPS = {"v0": make_clip(4, 56, 112, seed=0), "v1": make_clip(4, 84, 84, seed=1)}
# Rates where second_per_grid_ts is not the model's 1.0 default: 4 fps (0.5 s per grid step), an ActivityNet-like
# fractional rate (a 500 s video capped at 768 frames) and 1.7 fps; w0 and w2 differ only in content and rate.
CLIPS_AT_OTHER_RATES = {
    "w0": make_clip(8, 56, 112, seed=5, fps=4.0),
    "w1": make_clip(6, 84, 84, seed=6, fps=768 / 500),
    "w2": make_clip(8, 56, 112, seed=7, fps=1.7),
}


def dataset(num_rows=2, videos=("v0", "v1")):
    rows = [
        {
            "prompt": build_conversation(f"the event number {i} happens", think=False),
            "video_id": videos[i % len(videos)],
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


def make_trainer(tiny_path, tmp_path, reward_funcs=(length_reward, constant_reward), clips=CLIPS, **overrides):
    model = load_model(tiny_path)
    processor = load_processor(tiny_path)
    return VideoGRPOTrainer(
        model,
        list(reward_funcs),
        args=config(tmp_path, **overrides),
        train_dataset=dataset(videos=sorted(clips)),
        processing_class=processor,
        video_loader=clips.__getitem__,
    )


def direct_logps(model, batch, drop=()):
    """Per-token log-probs of the completion tokens from a plain model call."""
    inputs = {k: v for k, v in batch.items() if k not in drop}
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), dim=-1)
    return logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


def direct_forward_check(trainer, rows, clips):
    """Rolls ``rows`` out and checks every log-prob pass (policy in chunks of 3 rows, reference inside the rollout)
    against a forward built from each row's own clip alone: its own type ids, time intervals and positions. Returns
    what the caller may test further: (rollout, the direct-forward batch, completion mask, expected log-probs)."""
    trainer.model.eval()
    out = trainer._generate_and_score_completions(rows)

    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    width = out["completion_ids"].size(1)
    video_token = trainer.model.config.video_token_id
    # Type ids from the token ids themselves: 2 exactly on <|video_pad|>, 0 elsewhere (left padding included).
    type_ids = 2 * (input_ids == video_token).long()
    assert torch.equal(out["mm_token_type_ids"], type_ids)

    # Patches, grids and time intervals straight from each row's own clip.
    encoded = [encode_batch(trainer.processing_class, [row["prompt"]], [clips[row["video_id"]]]) for row in rows]
    fps_values = [clips[row["video_id"]].sample_fps for row in rows]
    grids = torch.cat([e["video_grid_thw"] for e in encoded])
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": torch.cat([e["pixel_values_videos"] for e in encoded]),
        "video_grid_thw": grids,
        "second_per_grid_ts": torch.tensor([2 / fps for fps in fps_values]),
        "mm_token_type_ids": type_ids,
        "position_ids": batch_positions(input_ids, attention_mask, video_token, grids.tolist(), fps_values),
    }
    mask = out["completion_mask"].bool()
    expected = direct_logps(trainer.model, batch)[:, -width:]

    # Policy pass, 3 rows per chunk (chunks cut across videos): patches are sliced per row.
    trainer._video_inputs = {
        "pixel_values_videos": torch.cat(out["pixel_values_videos"]),
        "video_grid_thw": out["video_grid_thw"],
        "second_per_grid_ts": out["second_per_grid_ts"],
    }
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, width, batch_size=3, mm_token_type_ids=out["mm_token_type_ids"]
        )
    trainer._video_inputs = None
    torch.testing.assert_close(logps[mask], expected[mask], atol=2e-5, rtol=0)

    # Reference pass inside TRL's rollout (a reloaded copy of the same weights at step 0).
    torch.testing.assert_close(out["ref_per_token_logps"][mask], expected[mask], atol=2e-5, rtol=0)
    return out, batch, mask, expected, width


@pytest.mark.parametrize("shared", [True, False], ids=["shared_work", "per_row"])
def test_logps_match_direct_forward_with_video(tiny_path, tmp_path, shared):
    """Every log-prob pass equals a forward built by the test alone, on the shared path and on the per-row path (the
    `--shared_work false` switch), at 4, 1.7 and 768/500 fps."""
    clips = CLIPS_AT_OTHER_RATES
    trainer = make_trainer(tiny_path, tmp_path, clips=clips)
    trainer.shared_work = shared
    rows = [dict(row) for row in dataset(num_rows=3, videos=sorted(clips))]
    rows = [row for row in rows for _ in range(4)]  # 4 completions per prompt, as the sampler repeats them
    out, batch, mask, expected, width = direct_forward_check(trainer, rows, clips)
    video_tokens = (batch["input_ids"] == trainer.model.config.video_token_id).sum(1)
    assert sorted(set(video_tokens.tolist())) == [27, 32]  # 4x4x2 (w0, w2: same size) and 3x3x3 (w1)

    # What each of the original's bugs would change, all far beyond the matching tolerance: the model's 1.0 s default
    # instead of the clip's interval, the processor's silent 24 fps default, 1-D positions without type ids, and the
    # installed library's positions after the video.
    implicit = dict(batch)
    del implicit["position_ids"]
    for changed in (
        dict(implicit, second_per_grid_ts=torch.ones(len(rows))),
        dict(implicit, second_per_grid_ts=torch.full((len(rows),), 2 / 24)),
        {k: v for k, v in implicit.items() if k != "mm_token_type_ids"},
    ):
        other = direct_logps(trainer.model, changed)[:, -width:]
        assert (other - expected)[mask].abs().max() > 1e-4
    set_position_layout(trainer.model, "transformers")
    other = direct_logps(trainer.model, implicit)[:, -width:]
    set_position_layout(trainer.model, "reference")
    assert (other - expected)[mask].abs().max() > 1e-4


ATTENTION_GAIN = 8.0


def test_same_query_text_on_two_videos_of_one_size(tiny_path, tmp_path):
    """Charades-STA repeats query texts across videos ("person opens the door"): two groups with identical prompt
    token ids whose videos (w0, w2) have the same size but other content and rate. On both paths every log-prob pass
    equals a direct forward with each row's own video, and the shared path samples (and decodes greedily) what the
    per-row path does."""
    clips = {name: CLIPS_AT_OTHER_RATES[name] for name in ("w0", "w2")}
    prompt = build_conversation("person opens the door.", think=False)
    rows = [
        {"prompt": prompt, "video_id": name, "solution": [1.0, 2.0], "duration": 2.0}
        for name in ("w0", "w2")
        for _ in range(4)
    ]
    sampled, greedy = {}, {}
    for shared in (False, True):
        trainer = make_trainer(tiny_path, tmp_path / str(shared), clips=clips)
        trainer.shared_work = shared
        # The random tiny model attends almost uniformly, so its answers barely depend on the video: sharper
        # attention (larger query weights) makes them depend on it.
        for model in (trainer.model, trainer.ref_model):
            with torch.no_grad():
                for layer in model.model.language_model.layers:
                    layer.self_attn.q_proj.weight.mul_(ATTENTION_GAIN)
        torch.manual_seed(3)
        out, *_ = direct_forward_check(trainer, rows, clips)
        assert torch.equal(out["prompt_ids"][0], out["prompt_ids"][4])  # the same tokens, two videos
        sampled[shared] = out["completion_ids"]
        trainer.generation_config.do_sample = False
        greedy[shared] = trainer._generate_and_score_completions(rows)["completion_ids"]
    assert torch.equal(sampled[True], sampled[False])
    assert torch.equal(greedy[True], greedy[False])
    assert not torch.equal(greedy[True][0], greedy[True][4])  # the two videos do change the answer


@pytest.mark.slow
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0"])
def test_a_non_finite_reward_stops_training_naming_reward_and_row(tiny_path, tmp_path, bad):
    def spiky_reward(completions, **kwargs):
        return [1.0, bad] + [0.5] * (len(completions) - 2)

    trainer = make_trainer(tiny_path, tmp_path, reward_funcs=(spiky_reward, constant_reward), max_steps=1)
    with pytest.raises(NonFiniteRewardError, match=r"reward 'spiky_reward' returned .* for row 1 \(\{'video_id': 'v"):
        trainer.train()


def test_a_reward_may_return_none_for_rows_it_does_not_score(tiny_path, tmp_path):
    def partial_reward(completions, **kwargs):
        return [None] + [1.0] * (len(completions) - 1)

    trainer = make_trainer(tiny_path, tmp_path, reward_funcs=(partial_reward, constant_reward), max_steps=1)
    trainer.train()  # TRL's rule for None (no reward for that row), unchanged
    assert trainer.state.log_history[0]["rewards/partial_reward/mean"] == 1.0


def test_two_steps_log_rewards_and_train_only_the_llm(tiny_path, tmp_path, caplog):
    import logging

    trainer = make_trainer(tiny_path, tmp_path, learning_rate=1e-2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    with caplog.at_level(logging.WARNING):
        trainer.train()
    # The random model writes no parsable answer: said once, at the first rollout (a damaged checkpoint looks the same).
    assert caplog.text.count("no completion of the first rollout") == 1
    assert "no group whose rewards differ" not in caplog.text  # the length reward spreads every group

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


REPO = Path(__file__).resolve().parents[1]
# The paper recipes (the demo recipe is the demo's sizes on a CPU).
PAPER_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/grpo_*.yaml") if p.parent.name != "demo")
# The recipe keys that decide the GRPO loss.
LOSS_KEYS = (
    "beta",
    "loss_type",
    "use_bias_correction_kl",
    "scale_rewards",
    "num_iterations",
    "epsilon",
    "epsilon_high",
    "importance_sampling_level",
    "mask_truncated_completions",
    "temperature",
)


def paper_loss(logps, ref_logps, rewards, mask, group, beta):
    """DeepSeekMath GRPO (TimeZero eq. 1-2) written out: group-normalised advantages, ratio pi/pi_old with pi_old =
    pi (one iteration: clipping never binds), the k3 KL estimator, per-sequence token mean, then batch mean."""
    grouped = rewards.view(-1, group)
    advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    advantages = advantages.reshape(-1, 1)
    ratio = torch.exp(logps - logps.detach())
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    per_token = -(ratio * advantages) + beta * kl
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: p.parent.name)
def test_recipe_loss_and_gradient_are_the_papers(tiny_path, tmp_path, recipe):
    settings = {key: yaml.safe_load(recipe.read_text())[key] for key in LOSS_KEYS}
    trainer = make_trainer(
        tiny_path,
        tmp_path,
        reward_funcs=[low_token_reward],
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        **settings,
    )
    model = trainer.model
    # Move the policy away from the reference, as after some training: at step 0 the KL and its gradient vanish
    # and every KL variant would look the same.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn(param.shape, generator=gen))
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    model.train()
    out = trainer._generate_and_score_completions(rows)
    trainer.current_gradient_accumulation_steps = 1

    def trainer_loss_and_grads():
        model.zero_grad()
        loss = trainer.compute_loss(model, out)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = trainer_loss_and_grads()

    # The test's own forward: patches, positions and type ids from the clips and token ids; rewards from the ids.
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    width = out["completion_ids"].size(1)
    clips = [CLIPS[row["video_id"]] for row in rows]
    encoded = [encode_batch(trainer.processing_class, [row["prompt"]], [clip]) for row, clip in zip(rows, clips)]
    grids = torch.cat([e["video_grid_thw"] for e in encoded])
    video_token = model.config.video_token_id
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": torch.cat([e["pixel_values_videos"] for e in encoded]),
        "video_grid_thw": grids,
        "second_per_grid_ts": torch.tensor([2 / clip.sample_fps for clip in clips]),
        "mm_token_type_ids": 2 * (input_ids == video_token).long(),
        "position_ids": batch_positions(
            input_ids, attention_mask, video_token, grids.tolist(), [c.sample_fps for c in clips]
        ),
    }

    def logps_of(m):
        logits = m(**batch).logits[:, -width - 1 : -1]
        return torch.log_softmax(logits.float(), -1).gather(-1, out["completion_ids"][..., None]).squeeze(-1)

    mask = out["completion_mask"].float()
    rewards = torch.tensor(low_token_reward([ids[m.bool()].tolist() for ids, m in zip(out["completion_ids"], mask)]))
    assert rewards.view(-1, 4).std(1).min() > 0  # every group has a learning signal
    with torch.no_grad():
        ref_logps = logps_of(trainer.ref_model)
    model.zero_grad()
    expected_loss = paper_loss(logps_of(model), ref_logps, rewards, mask, group=4, beta=settings["beta"])
    expected_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.testing.assert_close(loss, expected_loss.detach(), atol=1e-6, rtol=1e-5)
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)

    # TRL's default (KL x probability ratio) gives another gradient: the test tells the two apart.
    trainer.args.use_bias_correction_kl = True
    _, corrected = trainer_loss_and_grads()
    worst = max((corrected[n] - expected[n]).abs().max() / expected[n].abs().max() for n in expected)
    assert worst > 1e-3


@pytest.mark.slow
def test_rollouts_sample_with_the_recipe_not_the_checkpoint_generation_config(tiny_path, tmp_path):
    """Qwen2.5-VL ships temperature 1e-6 and repetition_penalty 1.05; rollouts must use the recipe's values."""
    recipe = yaml.safe_load((REPO / "recipes/charades/grpo_qwen2_5_vl_7b.yaml").read_text())
    sampling = {key: recipe[key] for key in ("temperature", "top_p", "top_k", "repetition_penalty")}
    trainer = make_trainer(tiny_path, tmp_path, **sampling)
    model = trainer.model
    model.generation_config.temperature = 1e-6  # the real checkpoint's generation_config.json
    model.generation_config.repetition_penalty = 1.05
    model.generation_config.do_sample = True
    seen = []
    original = model.generate

    def spy(*args, generation_config=None, **kwargs):
        effective, _ = model._prepare_generation_config(generation_config)
        seen.append({key: getattr(effective, key) for key in sampling} | {"do_sample": effective.do_sample})
        return original(*args, generation_config=generation_config, **kwargs)

    model.generate = spy
    trainer._generate_and_score_completions([dict(row) for row in dataset(num_rows=1) for _ in range(4)])
    assert seen == [sampling | {"do_sample": True}]
    assert model.generation_config.temperature == 1e-6  # restored after the rollout


def test_a_run_that_learns_nothing_says_so(tiny_path, tmp_path, caplog):
    """Only a constant reward: no group has a spread, every advantage is 0. After the watch's window (set to 2
    rollouts here; 10 by default) the run says so once, naming the likely cause."""
    import logging

    trainer = make_trainer(tiny_path, tmp_path, reward_funcs=(constant_reward,), max_steps=3)
    trainer.signal_watch.rollouts = 2
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert caplog.text.count("the last 2 rollouts had no group whose rewards differ") == 1
    assert "no sampled answer parses" in caplog.text  # the random model's answers
