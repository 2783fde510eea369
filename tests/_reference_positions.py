"""Qwen2.5-VL's reference 3-D rope positions, written token by token for the tests (independent of open_r1).

The reference (transformers 4.49's ``get_rope_index``, which Qwen2.5-VL was released with, and vLLM's port): text
tokens advance all three axes by one; a video of ``t x h x w`` merged patches at ``second_per_grid_t`` seconds per
temporal step gives its token at (i, j, k) the positions
``(start + int(i * second_per_grid_t * tokens_per_second), start + j, start + k)``; the next token after any block
starts at the largest position used so far + 1. ``second_per_grid_t = temporal_patch_size / fps`` as a float32
tensor, as the processor returns it.
"""

import torch

TOKENS_PER_SECOND = 2  # Qwen2.5-VL-7B vision_config.tokens_per_second
TEMPORAL_PATCH = 2
MERGE = 2


def row_positions(ids, video_token_id, grids, fps_values):
    """Positions ``[(t, h, w), ...]`` of one unpadded row; ``grids``/``fps_values`` for its videos in order."""
    out = []
    start = 0
    index = 0
    video = 0
    while index < len(ids):
        if ids[index] != video_token_id:
            out.append((start, start, start))
            start += 1
            index += 1
            continue
        grid_t, grid_h, grid_w = grids[video]
        grid_h, grid_w = grid_h // MERGE, grid_w // MERGE
        second_per_grid_t = torch.tensor(TEMPORAL_PATCH / fps_values[video], dtype=torch.float32)
        block = []
        for i in range(grid_t):
            time = int(torch.tensor(float(i)) * second_per_grid_t * TOKENS_PER_SECOND)
            for j in range(grid_h):
                for k in range(grid_w):
                    block.append((start + time, start + j, start + k))
        out.extend(block)
        start = max(max(p) for p in block) + 1
        index += len(block)
        video += 1
    return out


def batch_positions(input_ids, attention_mask, video_token_id, grids, fps_values):
    """``(3, batch, length)`` positions of a padded batch with one video per row (0 on padding)."""
    batch, length = input_ids.shape
    positions = torch.zeros(3, batch, length, dtype=torch.long)
    for row in range(batch):
        keep = attention_mask[row].bool()
        ids = input_ids[row][keep].tolist()
        values = row_positions(ids, video_token_id, [grids[row]], [fps_values[row]])
        positions[:, row, keep] = torch.tensor(values, dtype=torch.long).T
    return positions
