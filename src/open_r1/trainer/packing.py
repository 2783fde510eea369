"""Shared-prefix packing: the G completions of one prompt scored in one sequence instead of G copies of the prompt.

A group's rows share their prompt (with its ~3.6k video tokens at the paper's settings) and differ in their
completions (~200 tokens). The packed sequence is::

    prompt[:-1] | prompt[-1], c1[0..C-2] | prompt[-1], c2[0..C-2] | ... | prompt[-1], cG[0..C-2]

Each block starts with a copy of the prompt's last token, so block ``g`` predicts exactly ``cg[0..C-1]`` from its
own positions (labels pre-shifted), the way the unpacked row ``[prompt, cg]`` does. The attention mask lets every
block see ``prompt[:-1]`` and its own earlier tokens only, and every block's 3-D rope positions continue from the
prompt's last position exactly as in its unpacked row. The prompt is processed once, plus one token per completion.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def packed_group(
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    prompt_positions: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Inputs of one packed sequence.

    Args:
        prompt_ids: ``(Lp,)`` the prompt's real tokens (no padding).
        completion_ids: ``(G, C)`` the group's completions, right-padded to ``C``.
        completion_mask: ``(G, C)`` 1 on real completion tokens.
        prompt_positions: ``(3, Lp)`` the prompt's 3-D rope positions.

    Returns:
        ``input_ids`` (1, N), ``attention_mask`` (1, 1, N, N) bool (True = may attend), ``position_ids`` (3, 1, N)
        and ``shift_labels`` (1, N) (-100 where nothing is scored), with ``N = Lp - 1 + G * C``; the scored
        positions of block ``g`` are ``Lp - 1 + g * C + j`` for ``j < C``.
    """
    num_rows, width = completion_ids.shape
    prompt_len = prompt_ids.numel()
    device = prompt_ids.device
    blocks = torch.cat([prompt_ids[-1:].expand(num_rows, 1), completion_ids[:, :-1]], dim=1)  # (G, C)
    input_ids = torch.cat([prompt_ids[:-1], blocks.reshape(-1)])[None]

    # Text after the prompt: each axis advances by one from the last prompt token's position.
    block_positions = prompt_positions[:, -1:] + torch.arange(width, device=device)  # (3, C)
    position_ids = torch.cat([prompt_positions[:, :-1], block_positions.repeat(1, num_rows)], dim=1)[:, None]

    segment = torch.cat(
        [
            torch.zeros(prompt_len - 1, dtype=torch.long, device=device),
            torch.arange(1, num_rows + 1, device=device).repeat_interleave(width),
        ]
    )
    index = torch.arange(segment.numel(), device=device)
    causal = index[:, None] >= index[None, :]
    visible = (segment[:, None] == segment[None, :]) | (segment[None, :] == 0)
    attention_mask = (causal & visible)[None, None]

    labels = completion_ids.masked_fill(completion_mask == 0, -100)
    shift_labels = torch.cat([torch.full((prompt_len - 1,), -100, device=device), labels.reshape(-1)])[None]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "shift_labels": shift_labels,
    }


def concat_packed(pieces: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Several packed groups (:func:`packed_group`) as one sequence: their tokens, positions and labels one after the
    other, their attention masks on the diagonal (no group sees another). Returns the inputs and where each group
    starts. One model call per micro-batch, whatever its number of groups: under ZeRO-3 every call gathers the
    weights on every rank, so the number of calls must not depend on the data."""
    if len(pieces) == 1:
        return pieces[0], [0]
    sizes = [piece["input_ids"].size(1) for piece in pieces]
    starts = [sum(sizes[:index]) for index in range(len(pieces))]
    total = sum(sizes)
    mask = torch.zeros(1, 1, total, total, dtype=torch.bool, device=pieces[0]["attention_mask"].device)
    for start, size, piece in zip(starts, sizes, pieces, strict=True):
        mask[:, :, start : start + size, start : start + size] = piece["attention_mask"]
    packed = {
        "input_ids": torch.cat([piece["input_ids"] for piece in pieces], dim=1),
        "attention_mask": mask,
        "position_ids": torch.cat([piece["position_ids"] for piece in pieces], dim=2),
        "shift_labels": torch.cat([piece["shift_labels"] for piece in pieces], dim=1),
    }
    return packed, starts


def packed_call(inner, input_ids, attention_mask, prompt_width: int, groups: list[list[int]], video: dict, device):
    """The inputs of one model call scoring ``groups`` (lists of rows sharing prompt and video) of a padded batch:
    each group packed (:func:`packed_group`, its 3-D positions from the model's own ``get_rope_index`` over its
    prompt), the groups concatenated (:func:`concat_packed`). Returns the inputs, where each group starts, and each
    group's prompt length."""
    video_token = inner.config.video_token_id
    pieces, prompt_lengths = [], []
    for rows in groups:
        first = rows[0]
        prompt = input_ids[first, :prompt_width][attention_mask[first, :prompt_width].bool()]
        with torch.no_grad():
            positions, _ = inner.get_rope_index(
                prompt[None],
                mm_token_type_ids=2 * (prompt[None] == video_token).long(),
                video_grid_thw=video["video_grid_thw"][first : first + 1].to(device),
                second_per_grid_ts=video["second_per_grid_ts"][first : first + 1].to(device),
                attention_mask=torch.ones_like(prompt[None]),
            )
        completions = input_ids[rows, prompt_width:], attention_mask[rows, prompt_width:]
        pieces.append(packed_group(prompt, *completions, positions[:, 0]))
        prompt_lengths.append(prompt.numel())
    packed, starts = concat_packed(pieces)
    return packed, starts, prompt_lengths


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, video_keys: list) -> list[list[int]]:
    """Rows that share prompt tokens and video, in order of first appearance (rows need not be adjacent)."""
    groups: dict[tuple, list[int]] = {}
    for row in range(prompt_ids.size(0)):
        key = (video_keys[row], tuple(prompt_ids[row][prompt_mask[row].bool()].tolist()))
        groups.setdefault(key, []).append(row)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------------------------
# Packing under a flash-attention recipe
#
# Flash-attention 2 takes no 4-D mask, and the shared-prefix mask above is not block-diagonal, so FA2's varlen
# packing cannot express it. Rather than fall back to one row per completion, transformers' ``flash_attention_2``
# entry is wrapped: a call carrying a 4-D mask (a packed group) goes to sdpa, every other call (the vision tower's
# varlen windows, generation, padded rows) to the function registered before, unchanged. The model keeps the name
# ``flash_attention_2``: transformers loads the flash-attn kernels, builds flash attention's masks and takes its
# generation branches by that exact name (a renamed implementation is looked up as a Hub kernel and fails). The choice
# depends only on the call's inputs, so a gradient-checkpointing recompute takes the same branch as its forward.

FLASH_ATTENTION = "flash_attention_2"


def packable_flash_attention(flash_attention):
    """``flash_attention`` (transformers' function) for every call except one with a 4-D mask, which sdpa computes."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, **kwargs):
        if attention_mask is not None and attention_mask.ndim == 4:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return flash_attention(module, query, key, value, attention_mask, **kwargs)

    attention.flash_attention = flash_attention
    return attention


def install_packable_flash_attention() -> None:
    """Wrap transformers' ``flash_attention_2`` attention function with :func:`packable_flash_attention` (once per
    process; calls without a 4-D mask, the only ones flash-attention accepts, reach the same function as before)."""
    from transformers import AttentionInterface

    current = AttentionInterface._global_mapping[FLASH_ATTENTION]
    if getattr(current, "flash_attention", None) is None:
        AttentionInterface.register(FLASH_ATTENTION, packable_flash_attention(current))


def packs_4d_masks(implementation: str) -> bool:
    """Whether a language model with this attention takes a packed group's 4-D mask."""
    if implementation in ("sdpa", "eager"):
        return True
    if implementation == FLASH_ATTENTION:
        from transformers import AttentionInterface

        return getattr(AttentionInterface._global_mapping[FLASH_ATTENTION], "flash_attention", None) is not None
    return False


def make_packable(language_model_config) -> bool:
    """Let a language model take packed groups; True when it now packs.

    sdpa and eager take a 4-D mask already; for flash-attention 2 the attention function is wrapped
    (:func:`install_packable_flash_attention`); any other kernel is left alone (False: its log-prob passes score each
    completion with its own prompt copy)."""
    if language_model_config._attn_implementation == FLASH_ATTENTION:
        install_packable_flash_attention()
    return packs_4d_masks(language_model_config._attn_implementation)


# --------------------------------------------------------------------------------------------------------------------
# Micro-batches of whole groups
#
# TRL shuffles a rollout's rows before cutting them into gradient-accumulation micro-batches, so the rows of one group
# land in several micro-batches and each holds pieces of several groups: more packed sequences, each re-reading its
# prompt. Shuffling whole groups instead keeps each group in one micro-batch. The loss and its gradient are the same:
# with equal micro-batch sizes, the accumulated gradient averages every row once whichever micro-batch holds it.


def group_blocks(num_rows: int, group_size: int, offset: int = 0) -> list[range]:
    """The local rows ``0..num_rows-1`` cut where a group starts; local row ``i`` is row ``offset + i`` of the global
    batch, whose groups are consecutive runs of ``group_size`` rows (TRL's sampler repeats each prompt G times)."""
    starts = [0] + [i for i in range(1, num_rows) if (offset + i) % group_size == 0]
    return [range(start, end) for start, end in zip(starts, starts[1:] + [num_rows], strict=True)]


def whole_group_order(num_rows: int, group_size: int, num_chunks: int, offset: int = 0) -> list[int] | None:
    """A random row order that moves whole groups, so each of ``num_chunks`` equal micro-batches holds whole groups;
    None when the group pieces on this process do not tile the micro-batches (then TRL's row shuffle is used)."""
    blocks = group_blocks(num_rows, group_size, offset)
    sizes = {len(block) for block in blocks}
    chunk = num_rows // max(num_chunks, 1)
    if len(sizes) != 1 or chunk == 0 or chunk % sizes.pop():
        return None
    return [row for index in torch.randperm(len(blocks)).tolist() for row in blocks[index]]


def reorder_rows(batch: dict, order: list[int]) -> dict:
    """``batch`` with every per-row value put in ``order``, as TRL's row shuffle treats them: None and 0-d tensors
    stay, tensors are indexed on their first dimension, any other sequence becomes a list."""
    index = torch.tensor(order, dtype=torch.long)
    out = {}
    for key, value in batch.items():
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = value[index.to(value.device)]
        else:
            out[key] = [value[i] for i in order]
    return out


def accepts_packed_mask(model) -> bool:
    """Packing needs an attention kernel that takes an arbitrary 4-D mask: sdpa, eager, or flash-attention 2 made
    packable by :func:`make_packable` (done when the trainer is built)."""
    from open_r1.positions import inner_vlm

    implementation = inner_vlm(model).language_model.config._attn_implementation
    if packs_4d_masks(implementation):
        return True
    if not getattr(accepts_packed_mask, "warned", False):
        logger.warning(
            "%s attention takes no 4-D mask: log-prob passes score each completion with its own prompt copy "
            "(attn_implementation sdpa packs a group into one sequence)",
            implementation,
        )
        accepts_packed_mask.warned = True
    return False
