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

import torch


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
# packing cannot express it. Rather than fall back to one row per completion, the language model gets an attention
# function that sends a call carrying a 4-D mask (a packed group) to sdpa and every other call (generation, padded
# rows) to flash-attention. Its choice depends only on the call's inputs, so a gradient-checkpointing recompute takes
# the same branch as the forward it repeats. The vision tower keeps flash-attention's varlen windows.

PACKABLE_FLASH_ATTENTION = "flash_attention_2_packable"


def packable_flash_attention(module, query, key, value, attention_mask, **kwargs):
    """flash-attention 2, except for a call with a 4-D (packed) mask, which sdpa computes."""
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.ndim == 4:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return flash_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_packable_flash_attention() -> str:
    """Register :data:`PACKABLE_FLASH_ATTENTION` with transformers (attention and mask functions); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(PACKABLE_FLASH_ATTENTION, packable_flash_attention)
    # Masks for everything that is not a packed group are built as for flash-attention 2 (None or the 2-D padding
    # mask); a 4-D mask passed in is used as it is.
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKABLE_FLASH_ATTENTION, flash_attention_mask)
    return PACKABLE_FLASH_ATTENTION


def make_packable(language_model_config) -> bool:
    """Switch a flash-attention-2 language model to :data:`PACKABLE_FLASH_ATTENTION`; True when it now packs.

    sdpa and eager take a 4-D mask already; flash-attention 2 is switched; any other kernel is left alone (False: its
    log-prob passes score each completion with its own prompt copy)."""
    implementation = language_model_config._attn_implementation
    if implementation in ("sdpa", "eager", PACKABLE_FLASH_ATTENTION):
        return True
    if implementation == "flash_attention_2":
        language_model_config._attn_implementation = register_packable_flash_attention()
        return True
    return False


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
