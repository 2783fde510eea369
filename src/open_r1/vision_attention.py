"""The vision tower's attention without its per-window loop: one sdpa call per window size and layer.

Qwen2.5-VL's vision blocks attend inside windows (most layers) or inside each temporal patch (four layers). Under
flash-attention the windows go to one varlen call; under sdpa, transformers calls attention once per window, ~7,300
calls per video at the paper's shape, a host-bound loop. Windows of a layer come in a few sizes only (interior and
edge windows), so :func:`windowed_sdpa_attention` gathers the windows of each size into one batch and makes one sdpa
call per size: the same arithmetic per window, no padding, a handful of calls per layer.

transformers sends the whole sequence with its window boundaries (``cu_seq_lens_q``) to the attention function only on
its flash-attention branch, which it takes for any implementation whose name contains "flash"; hence the name
:data:`BATCHED_WINDOWS`, registered with transformers' attention functions. Nothing about flash-attention is used.
"""

from __future__ import annotations

import torch

from open_r1.positions import inner_vlm

BATCHED_WINDOWS = "flash_path_sdpa_batched_windows"


def windowed_sdpa_attention(module, query, key, value, attention_mask=None, cu_seq_lens_q=None, **kwargs):
    """Attention inside each window ``cu_seq_lens_q[i]:cu_seq_lens_q[i + 1]`` of ``(1, heads, N, dim)`` inputs.

    Returns ``(1, N, heads, dim)``, what the per-window loop returns after concatenating its windows.
    """
    if cu_seq_lens_q is None:
        raise ValueError(f"{BATCHED_WINDOWS} needs the window boundaries (cu_seq_lens_q): it serves the vision tower")
    scaling = kwargs.get("scaling")
    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    starts = cu_seq_lens_q[:-1].to(torch.long)
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    q, k, v = query[0], key[0], value[0]  # (heads, N, dim)
    by_length: dict[int, list[int]] = {}
    for window, length in enumerate(lengths):
        if length > 0:
            by_length.setdefault(length, []).append(window)
    order, outputs = [], []
    for length, windows in by_length.items():
        index = (starts[windows][:, None] + torch.arange(length, device=starts.device)).reshape(-1).to(q.device)
        gathered = [t[:, index].unflatten(1, (len(windows), length)).transpose(0, 1) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*gathered, dropout_p=dropout, scale=scaling)
        outputs.append(out.transpose(1, 2).reshape(len(windows) * length, *out.shape[1:2], out.shape[-1]))
        order.append(index)
    # Rows back to sequence order: (N, heads, dim) -> (1, N, heads, dim).
    inverse = torch.empty_like(torch.cat(order))
    inverse[torch.cat(order)] = torch.arange(inverse.numel(), device=inverse.device)
    return torch.cat(outputs)[inverse][None], None


def register_batched_windows() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(BATCHED_WINDOWS, windowed_sdpa_attention)
    return BATCHED_WINDOWS


def set_vision_attention(model, batched: bool = True) -> str:
    """Batch the vision tower's sdpa windows (``batched``) or go back to transformers' per-window loop; a tower under
    flash-attention or eager is left alone. Returns the tower's attention implementation."""
    config = inner_vlm(model).visual.config
    if batched and config._attn_implementation == "sdpa":
        config._attn_implementation = register_batched_windows()
    elif not batched and config._attn_implementation == BATCHED_WINDOWS:
        config._attn_implementation = "sdpa"
    return config._attn_implementation
