"""open_r1.trainer.packing under the shipped recipes: a flash-attention-2 model still packs a group into one sequence,
and gradient-accumulation micro-batches hold whole groups, each with the same loss and gradients as the path it
replaces."""

import flash_attn_stand_in
import pytest
import torch
from test_shared_work import perturbed_trainer, tiny_path  # noqa: F401  (the module fixture)
from test_trainer import dataset
from transformers.integrations import flash_attention, sdpa_attention

from open_r1.positions import inner_vlm
from open_r1.trainer import packing

# --------------------------------------------------------------------------------------------------------------------
# Whole-group order (no model)


def test_group_blocks_follow_the_global_groups():
    assert packing.group_blocks(16, 8) == [range(0, 8), range(8, 16)]
    # Rows 4..19 of the global batch on this process: a group's tail, a whole group, a group's head.
    assert packing.group_blocks(16, 8, offset=4) == [range(0, 4), range(4, 12), range(12, 16)]


def test_whole_group_order_puts_one_group_in_each_micro_batch():
    torch.manual_seed(0)
    for _ in range(20):
        order = packing.whole_group_order(16, 8, num_chunks=2)
        assert sorted(order) == list(range(16))
        halves = [sorted(order[:8]), sorted(order[8:])]
        assert sorted(halves) == [list(range(8)), list(range(8, 16))]
        assert order[:8] == sorted(order[:8])  # a group's rows stay together, in order


@pytest.mark.parametrize(
    "rows, group, chunks, offset",
    [
        (16, 8, 4, 0),  # micro-batches of 4 rows cannot hold a group of 8
        (16, 8, 2, 4),  # pieces of 4 and 8 rows: no tiling into halves
        (12, 8, 2, 0),  # a group of 8 and a piece of 4
    ],
)
def test_whole_group_order_declines_when_groups_cannot_tile(rows, group, chunks, offset):
    assert packing.whole_group_order(rows, group, chunks, offset) is None


def test_reorder_rows_treats_values_like_trl_shuffle():
    batch = {
        "ids": torch.arange(8).view(4, 2),
        "patches": ["a", "b", "c", "d"],
        "scalar": torch.tensor(3.0),
        "absent": None,
    }
    out = packing.reorder_rows(batch, [2, 3, 0, 1])
    assert out["ids"].tolist() == [[4, 5], [6, 7], [0, 1], [2, 3]]
    assert out["patches"] == ["c", "d", "a", "b"]
    assert out["scalar"] is batch["scalar"] and out["absent"] is None


# --------------------------------------------------------------------------------------------------------------------
# The attention function of a flash-attention-2 model that packs


class FakeModule(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 1


def test_packable_attention_sends_packed_calls_to_sdpa_and_the_rest_to_flash():
    calls = []

    def flash(module, query, key, value, attention_mask, **kwargs):  # what was registered under the name before
        calls.append(attention_mask)
        return "flash", None

    attention = packing.packable_flash_attention(flash)
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 5, 4, generator=gen) for _ in range(3))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    mask[..., 3, 1] = False  # not causal-only: a shared-prefix mask
    out, _ = attention(FakeModule(), query, key, value, mask, scaling=0.5)
    expected, _ = sdpa_attention.sdpa_attention_forward(FakeModule(), query, key, value, mask, scaling=0.5)
    assert torch.equal(out, expected) and calls == []
    padding = torch.ones(1, 5, dtype=torch.long)
    assert attention(FakeModule(), query, key, value, padding)[0] == "flash"
    assert attention(FakeModule(), query, key, value, None)[0] == "flash"
    assert len(calls) == 2


def test_make_packable_keeps_the_flash_attention_2_name(monkeypatch):
    from transformers import AttentionInterface, Qwen2_5_VLConfig

    monkeypatch.setitem(
        AttentionInterface._global_mapping, "flash_attention_2", flash_attention.flash_attention_forward
    )
    config = Qwen2_5_VLConfig().text_config
    config._attn_implementation = "flash_attention_2"
    assert not packing.packs_4d_masks("flash_attention_2")  # transformers' own function takes no 4-D mask
    # transformers loads flash-attn only for this exact name: the model keeps it, its attention function is wrapped.
    assert packing.make_packable(config) and config._attn_implementation == "flash_attention_2"
    wrapped = AttentionInterface._global_mapping["flash_attention_2"]
    assert wrapped.flash_attention is flash_attention.flash_attention_forward
    assert packing.make_packable(config) and AttentionInterface._global_mapping["flash_attention_2"] is wrapped
    config._attn_implementation = "sdpa"
    assert packing.make_packable(config) and config._attn_implementation == "sdpa"
    config._attn_implementation = "flex_attention"
    assert not packing.make_packable(config)


def test_concatenated_groups_see_only_themselves():
    one = packing.packed_group(torch.arange(3), torch.tensor([[7, 8]]), torch.ones(1, 2), torch.zeros(3, 3).long())
    two = packing.packed_group(torch.arange(4), torch.tensor([[5], [6]]), torch.ones(2, 1), torch.ones(3, 4).long())
    packed, starts = packing.concat_packed([one, two])
    assert starts == [0, 4] and packed["input_ids"].shape == (1, 4 + 5)
    mask = packed["attention_mask"][0, 0]
    assert torch.equal(mask[:4, :4], one["attention_mask"][0, 0]) and torch.equal(
        mask[4:, 4:], two["attention_mask"][0, 0]
    )
    assert not mask[:4, 4:].any() and not mask[4:, :4].any()
    assert packed["position_ids"].shape == (3, 1, 9) and packed["shift_labels"][0, 2:4].tolist() == [7, 8]


# --------------------------------------------------------------------------------------------------------------------
# In the trainer (tiny model, CPU), with transformers' flash-attention integration running on the flash-attn stand-in


def count_packed_sequences(monkeypatch):
    counts = []
    real = packing.packed_group

    def counting(*args, **kwargs):
        counts.append(args[1].shape[0])  # completions in the packed sequence
        return real(*args, **kwargs)

    monkeypatch.setattr(packing, "packed_group", counting)
    return counts


def rollout_loss_and_grads(trainer, rows):
    torch.manual_seed(1)
    out = trainer._generate_and_score_completions(rows)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.slow
def test_flash_attention_2_recipe_packs_with_the_same_loss_and_gradients(tiny_path, tmp_path, monkeypatch):  # noqa: F811
    # Two prompts with different videos, 4 completions each; the sdpa runs first, before flash-attn is "installed".
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    reference = rollout_loss_and_grads(perturbed_trainer(tiny_path, tmp_path / "sdpa", True), rows)
    per_row = rollout_loss_and_grads(perturbed_trainer(tiny_path, tmp_path / "rows", False), rows)

    calls = flash_attn_stand_in.install(monkeypatch, fp32=True)
    packed_counts = count_packed_sequences(monkeypatch)
    # The project's own kernel choice (modeling.load_model, no attn_implementation given) picks flash-attention.
    trainer = perturbed_trainer(tiny_path, tmp_path / "flash", True)
    for config in (trainer.model.config, inner_vlm(trainer.model).language_model.config):
        assert config._attn_implementation == "flash_attention_2"
    flash = rollout_loss_and_grads(trainer, rows)

    # The flash kernels ran (the vision tower's windows, the shared prefill over left-padded prompts, every decode
    # step); every log-prob pass packed each group (the reference pass and the policy pass: 4 completions per prompt).
    assert calls["flash_attn_varlen_func"] > 2 * inner_vlm(trainer.model).language_model.config.num_hidden_layers
    assert packed_counts == [4, 4, 4, 4]
    for name, (out, loss, grads) in {"sdpa packed": reference, "per-row": per_row}.items():
        assert torch.equal(flash[0]["completion_ids"], out["completion_ids"]), name
        mask = out["completion_mask"].bool()
        torch.testing.assert_close(
            flash[0]["ref_per_token_logps"][mask], out["ref_per_token_logps"][mask], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(flash[1], loss, atol=1e-6, rtol=1e-5)
        assert flash[2].keys() == grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(flash[2][key], grad, atol=1e-6, rtol=1e-4, msg=f"{name}: {key}")


def accumulated_step(trainer, rows):
    """One optimizer step's two micro-batches through TRL's _prepare_inputs: the summed gradient and loss, the
    micro-batches' completions, and how many completions each packed sequence of the policy pass held."""
    torch.manual_seed(1)
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2
    total, completions = 0.0, []
    for step in range(2):
        trainer._step = step
        inputs = trainer._prepare_inputs(rows)
        completions.append(inputs["completion_ids"])
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return total, grads, completions


@pytest.mark.slow
def test_whole_group_micro_batches_give_the_same_loss_and_gradients(tiny_path, tmp_path, monkeypatch):  # noqa: F811
    # The recipes' layout at a smaller size: per-device batch = one group, 2 accumulation steps, 2 groups per rollout.
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    results = {}
    for whole in (False, True):
        trainer = perturbed_trainer(
            tiny_path, tmp_path / str(whole), True, per_device_train_batch_size=4, gradient_accumulation_steps=2
        )
        trainer.whole_groups = whole
        trainer._buffered_inputs = None
        packed = count_packed_sequences(monkeypatch)
        loss, grads, completions = accumulated_step(trainer, rows)
        # The rollout's reference pass sees all 8 rows at once (two groups: two sequences); then the policy passes.
        assert packed[:2] == [4, 4]
        results[whole] = loss, grads, completions, packed[2:]

    (row_loss, row_grads, row_completions, row_packed), (loss, grads, completions, packed) = (
        results[False],
        results[True],
    )
    # The same 8 completions, split differently.
    assert sorted(map(tuple, torch.cat(completions).tolist())) == sorted(
        map(tuple, torch.cat(row_completions).tolist())
    )
    assert packed == [4, 4]  # each micro-batch is one group: one packed sequence of its 4 completions
    assert len(row_packed) > 2  # TRL's row shuffle splits the groups (this seed: pieces in both micro-batches)
    assert loss == pytest.approx(row_loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == row_grads.keys()
    for key, grad in row_grads.items():
        torch.testing.assert_close(grads[key], grad, atol=1e-6, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_bnpo_keeps_trl_row_shuffle(tiny_path, tmp_path):  # noqa: F811
    """bnpo divides by the micro-batch's token count, so moving rows between micro-batches changes its loss: with
    whole_groups on it must cut the micro-batches exactly as TRL does (the same rows, the same loss)."""
    rows = [dict(row) for row in dataset(num_rows=2) for _ in range(4)]
    results = {}
    for whole in (False, True):
        trainer = perturbed_trainer(
            tiny_path,
            tmp_path / f"bnpo_{whole}",
            True,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            loss_type="bnpo",
        )
        trainer.whole_groups = whole
        trainer._buffered_inputs = None
        results[whole] = accumulated_step(trainer, rows)
    (row_loss, row_grads, row_completions), (loss, grads, completions) = results[False], results[True]
    assert all(torch.equal(a, b) for a, b in zip(completions, row_completions, strict=True))
    assert loss == row_loss
    for key, grad in row_grads.items():
        assert torch.equal(grads[key], grad), key
