"""shared_work: each distinct video is encoded once and a group's prompt is sampled from once, with the same rollouts,
log-probs, loss and gradients as the per-row path it replaces (shared_work=False)."""

import pytest
import torch
from test_trainer import CLIPS, dataset, length_reward, make_trainer

from open_r1.trainer import vision_tower

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from open_r1.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_shared"))


def perturbed_trainer(tiny_path, tmp_path, shared_work, **overrides):
    """A trainer whose policy sits away from the reference (so the KL and its gradient are not zero).

    Only trained weights move, as in training: a frozen tower keeps the pretrained weights the reference model has.
    """
    values = dict(
        reward_funcs=[length_reward],
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        gradient_checkpointing=True,
    )
    values.update(overrides)
    freeze = values.pop("freeze_vision_tower", True)
    trainer = make_trainer(tiny_path, tmp_path / str(shared_work), **values)
    trainer.shared_work = shared_work
    if not freeze:
        vision_tower(trainer.model).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn(param.shape, generator=gen))
    trainer.model.train()
    return trainer


class TowerCounter:
    """Counts the patches through the vision towers' first block (recomputes under gradient checkpointing too)."""

    def __init__(self, *models):
        self.calls = self.patches = 0
        self.handles = [vision_tower(m).blocks[0].register_forward_hook(self.hook) for m in models if m is not None]

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def hook(self, module, args, output):
        self.calls += 1
        self.patches += args[0].shape[0]


def rollout_and_grads(trainer, rows):
    torch.manual_seed(1)
    counter = TowerCounter(trainer.model, trainer.ref_model)
    out = trainer._generate_and_score_completions(rows)
    rollout_patches = counter.patches
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    counter.remove()
    return out, loss.detach(), grads, rollout_patches, counter.patches - rollout_patches


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen_tower", "trainable_tower"])
def test_same_rollouts_logps_loss_and_gradients(tiny_path, tmp_path, freeze):
    # Two prompts with different videos (64 and 72 patches) and lengths, 4 completions each; num_iterations=2 makes
    # TRL compute old-policy log-probs in the rollout too.
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    results = {}
    for shared in (False, True):
        trainer = perturbed_trainer(tiny_path, tmp_path, shared, num_iterations=2, freeze_vision_tower=freeze)
        results[shared] = rollout_and_grads(trainer, rows)
    (old, old_loss, old_grads, old_roll, old_policy), (new, new_loss, new_grads, new_roll, new_policy) = (
        results[False],
        results[True],
    )
    assert torch.equal(old["completion_ids"], new["completion_ids"])  # the same samples
    mask = old["completion_mask"].bool()
    for key in ("ref_per_token_logps", "old_per_token_logps"):
        torch.testing.assert_close(new[key][mask], old[key][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(new_loss, old_loss, atol=1e-6, rtol=1e-5)
    assert new_grads.keys() == old_grads.keys()
    for name, grad in old_grads.items():
        torch.testing.assert_close(new_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    visual = {f"model.visual.{n}" for n, _ in vision_tower(trainer.model).named_parameters()}
    assert bool(visual & new_grads.keys()) == (not freeze)  # the tower gets a gradient exactly when trainable

    distinct = sum(
        CLIPS[v].frames.shape[0] // 2 * (CLIPS[v].frames.shape[2] // 14) * (CLIPS[v].frames.shape[3] // 14)
        for v in ("v0", "v1")
    )
    assert distinct == 64 + 72
    # Per-row path: the tower over all 8 rows (4 per video) in generation, the old-policy and the reference pass;
    # then again over all rows in the policy pass.
    assert old_roll == 3 * 4 * distinct
    assert old_policy >= 4 * distinct
    # Shared: each distinct video once per rollout; a frozen tower never again (the reference reuses the features:
    # its tower is the same frozen weights), a trainable one once per distinct video in each pass.
    assert new_roll == (distinct if freeze else 3 * distinct)
    assert new_policy == (0 if freeze else distinct)


def test_greedy_generation_is_the_same(tiny_path, tmp_path):
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    completions = {}
    for shared in (False, True):
        trainer = perturbed_trainer(tiny_path, tmp_path, shared, generation_kwargs={"do_sample": False})
        completions[shared] = trainer._generate_and_score_completions(rows)["completion_ids"]
    assert torch.equal(completions[True], completions[False])


def test_full_training_step_touches_the_frozen_tower_once(tiny_path, tmp_path):
    trainer = perturbed_trainer(tiny_path, tmp_path, True, max_steps=1)
    counter = TowerCounter(trainer.model)
    before = {n: p.detach().clone() for n, p in vision_tower(trainer.model).named_parameters()}
    trainer.train()
    assert counter.calls == 1  # one pass encodes both distinct videos of the rollout; no backward recompute
    for name, param in vision_tower(trainer.model).named_parameters():
        assert param.grad is None and torch.equal(param, before[name]), name


class TokenCounter:
    """Counts the tokens the language model processes (all forward calls)."""

    def __init__(self, model):
        self.tokens = self.calls = 0
        self.handle = model.model.language_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        self.tokens += embeds.shape[0] * embeds.shape[1]
        self.calls += 1


@pytest.mark.parametrize("batch_size", [8, 3])
def test_packed_passes_on_shuffled_rows(tiny_path, tmp_path, batch_size):
    """Rows in any order (TRL shuffles them), groups split or mixed: log-probs and entropies equal the per-row
    path's; the language model is called once per ``batch_size`` rows (the same count on every rank, as ZeRO-3
    needs), and within a call reads each group's prompt once."""
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    order = torch.tensor([5, 0, 3, 6, 1, 7, 2, 4])
    results = {}
    for shared in (False, True):
        trainer = perturbed_trainer(tiny_path, tmp_path, shared)
        torch.manual_seed(1)
        out = trainer._generate_and_score_completions(rows)
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)[order]
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)[order]
        inputs = {
            "pixel_values_videos": [out["pixel_values_videos"][i] for i in order],
            "video_grid_thw": out["video_grid_thw"][order],
            "second_per_grid_ts": out["second_per_grid_ts"][order],
        }
        if "video_features" in out:
            inputs["video_features"] = [out["video_features"][i] for i in order]
        trainer._video_inputs = {
            "pixel_values_videos": torch.cat(inputs["pixel_values_videos"]),
            "patches": inputs["pixel_values_videos"],
            "video_grid_thw": inputs["video_grid_thw"],
            "second_per_grid_ts": inputs["second_per_grid_ts"],
        }
        if "video_features" in inputs:
            trainer._video_inputs["features"] = inputs["video_features"]
        counter = TokenCounter(trainer.model)
        with torch.no_grad():
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model,
                input_ids,
                attention_mask,
                out["completion_ids"].size(1),
                batch_size=batch_size,
                compute_entropy=True,
                mm_token_type_ids=out["mm_token_type_ids"][order],
            )
        counter.handle.remove()
        results[shared] = (logps, entropies, out["completion_mask"][order].bool(), counter, out)
    (old_logps, old_entropy, mask, old_counter, old_out), (new_logps, new_entropy, _, new_counter, _) = (
        results[False],
        results[True],
    )
    torch.testing.assert_close(new_logps[mask], old_logps[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(new_entropy[mask], old_entropy[mask], atol=1e-5, rtol=0)
    assert new_counter.calls == old_counter.calls == -(-8 // batch_size)
    # Per-row: 8 rows x (padded prompt + completion). Packed: per group and call, the prompt once + a block of C
    # tokens per completion. Rows 5, 0, 3, 6, ...: the second group (rows 4-7) comes first; taken group by group,
    # calls of 3 rows cut the groups 3 | 1 + 2 | 2.
    width = old_out["completion_ids"].size(1)
    prompt = {group: old_out["prompt_mask"][4 * group].sum().item() - 1 for group in (0, 1)}
    assert old_counter.tokens == 8 * (old_out["prompt_ids"].size(1) + width)
    pieces = {8: [(1, 4), (0, 4)], 3: [(1, 3), (1, 1), (0, 2), (0, 2)]}[batch_size]
    assert new_counter.tokens == sum(prompt[group] + size * width for group, size in pieces)
