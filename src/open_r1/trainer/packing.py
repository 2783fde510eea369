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
