"""The 3-D (time, height, width) rope positions of Qwen2.5-VL, laid out as the model was pretrained.

Qwen2.5-VL gives every token three position ids. Text advances all three together; a video block of
``t x h x w`` merged patches gets ``time = int(i * second_per_grid_t * tokens_per_second)`` for temporal grid step
``i`` and row/column indices for height/width, all offset by the position where the block starts. The reference
implementation (the code the model was pretrained and TimeZero was trained with; vLLM follows it) then starts the
text *after* a vision block at **the largest position of that block + 1**, over all three axes. For a video the
temporal axis dominates: at 2 fps and grid 32x16x28 (the paper's shape) the video's time positions reach 77 after
its start, so the answer text continues at 78.

transformers 5.x's ``get_rope_index`` advances by ``max(h, w) / spatial_merge`` only and ignores the temporal
extent: the same text lands at 29, among the positions of the late frames. This module puts the reference layout
back, in one place, for every model the project loads (policy, reference model, evaluation, demo), in a plain
forward and in ``generate`` (the prefill computes the positions here; every decode step adds the offset returned
here). ``position_layout="transformers"`` keeps the installed library's layout for comparison.
"""

from __future__ import annotations

import logging
import types

import torch

logger = logging.getLogger(__name__)

POSITION_LAYOUTS = ("reference", "transformers")
DEFAULT_POSITION_LAYOUT = "reference"

# Token type ids in transformers' ``mm_token_type_ids``: 0 text, 1 image, 2 video.
IMAGE_TYPE, VIDEO_TYPE = 1, 2


def placeholder_type_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """``mm_token_type_ids`` as the placeholder tokens of ``input_ids`` give them: 1 on image, 2 on video, 0 elsewhere."""
    kinds = torch.zeros_like(input_ids)
    kinds[input_ids == image_token_id] = IMAGE_TYPE
    kinds[input_ids == video_token_id] = VIDEO_TYPE
    return kinds


def _vision_runs(ids: torch.Tensor, image_token_id: int, video_token_id: int) -> list[tuple[int, int, int]]:
    """``(kind, start, end)`` for every maximal run of image (1) or video (2) placeholder tokens in ``ids``."""
    kinds = placeholder_type_ids(ids, image_token_id, video_token_id)
    if not kinds.any():
        return []
    change = torch.nonzero(kinds[1:] != kinds[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), len(ids)]
    return [(int(kinds[s]), s, e) for s, e in zip(bounds[:-1], bounds[1:]) if kinds[s] != 0]


def reference_rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    tokens_per_second: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D positions of a left- or right-padded batch, laid out as Qwen2.5-VL's reference implementation does.

    Vision blocks are found from the placeholder tokens themselves (as the reference does), and consumed in order
    from ``image_grid_thw`` / ``video_grid_thw`` / ``second_per_grid_ts`` across the batch. A video whose temporal
    patches are separated by text (``--timestamps interleaved``, :mod:`open_r1.timestamps`) spans several blocks
    that consume its grid in order; each block is laid out by the rule on its own (temporal index from 0 at the
    block's start, text after it at its largest position + 1).

    Returns:
        ``position_ids`` of shape ``(3, batch, length)`` (0 on padding) and ``deltas`` of shape ``(batch, 1)``:
        ``max position + 1 - number of real tokens``, what a decode step adds to its 1-D text position.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    position_ids = torch.zeros(3, batch, length, dtype=torch.long, device=device)
    deltas = []
    images = iter(image_grid_thw.tolist()) if image_grid_thw is not None else iter(())
    videos = iter(video_grid_thw.tolist()) if video_grid_thw is not None else iter(())
    if second_per_grid_ts is None:
        intervals = None
    else:
        # float32 arithmetic, as the reference processor's tensor is float32.
        intervals = iter(torch.as_tensor(second_per_grid_ts, dtype=torch.float32).reshape(-1).cpu())
    for row in range(batch):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones(length, dtype=torch.bool)
        ids = input_ids[row][keep.to(device)].cpu()
        pieces = []
        next_pos = 0  # the reference's st_idx: 0, then (largest position so far) + 1
        done = 0
        # A video whose temporal patches are split by text (interleaved timestamps) spans several runs: the grid
        # not yet consumed, its interval and the temporal patches left.
        video_left = None
        for kind, start, end in _vision_runs(ids, image_token_id, video_token_id):
            if start > done:
                pieces.append(torch.arange(start - done).expand(3, -1) + next_pos)
                next_pos += start - done
            if kind == VIDEO_TYPE and video_left is not None:
                grid, interval, patches_left = video_left
            else:
                grid = next(images if kind == IMAGE_TYPE else videos, None)
                if grid is None:
                    raise ValueError(
                        f"row {row} has more {'image' if kind == IMAGE_TYPE else 'video'} blocks than grids"
                    )
                patches_left = grid[0]
                if kind == VIDEO_TYPE:
                    interval = next(intervals) if intervals is not None else torch.tensor(1.0)
                else:
                    interval = torch.tensor(0.0)  # a still image has one temporal step
            grid_h, grid_w = grid[1] // spatial_merge_size, grid[2] // spatial_merge_size
            # Every run is a block of its own; a video run may hold some of its grid's temporal patches.
            grid_t = (end - start) // (grid_h * grid_w)
            if grid_t * grid_h * grid_w != end - start or not 0 < grid_t <= patches_left:
                raise ValueError(
                    f"row {row}: a block of {end - start} vision tokens does not match its grid {tuple(grid)} "
                    f"(spatial merge {spatial_merge_size}, {patches_left} temporal patches left)"
                )
            if kind == IMAGE_TYPE and grid_t != patches_left:
                raise ValueError(f"row {row}: an image block of {end - start} tokens, its grid {tuple(grid)}")
            video_left = (grid, interval, patches_left - grid_t) if patches_left > grid_t else None
            # Reference: (grid index x second_per_grid_t) x tokens_per_second, then truncation to an integer.
            time = (torch.arange(grid_t, dtype=torch.float32) * interval * tokens_per_second).long()
            t_index = time.view(-1, 1, 1).expand(grid_t, grid_h, grid_w).flatten()
            h_index = torch.arange(grid_h).view(1, -1, 1).expand(grid_t, grid_h, grid_w).flatten()
            w_index = torch.arange(grid_w).view(1, 1, -1).expand(grid_t, grid_h, grid_w).flatten()
            block = torch.stack([t_index, h_index, w_index]) + next_pos
            pieces.append(block)
            next_pos = int(block.max()) + 1
            done = end
        if video_left is not None:
            raise ValueError(f"row {row}: its last video block leaves {video_left[2]} temporal patches of its grid")
        if done < len(ids):
            pieces.append(torch.arange(len(ids) - done).expand(3, -1) + next_pos)
        positions = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
        position_ids[:, row, keep.to(device)] = positions.to(device)
        deltas.append((int(positions.max()) + 1 if positions.numel() else 0) - len(ids))
    return position_ids, torch.tensor(deltas, dtype=torch.long, device=device).unsqueeze(1)


def _check_type_ids(input_ids, mm_token_type_ids, attention_mask, image_token_id, video_token_id) -> None:
    """Fail loudly when the video/image type ids are not exactly on the placeholder tokens (e.g. padded wrongly)."""
    if mm_token_type_ids is None:
        return
    expected = placeholder_type_ids(input_ids, image_token_id, video_token_id)
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    if not torch.equal(mm_token_type_ids.to(expected.device)[real], expected[real]):
        raise ValueError(
            "mm_token_type_ids do not match the vision placeholder tokens (left/right padding mixed up?): "
            "type 2 must mark exactly the <|video_pad|> tokens and type 1 the <|image_pad|> tokens"
        )


def _get_rope_index(
    self,
    input_ids,
    mm_token_type_ids=None,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    attention_mask=None,
    **kwargs,
):
    """Drop-in for ``Qwen2_5_VLModel.get_rope_index`` with the reference layout (bound by :func:`set_position_layout`)."""
    config = self.config
    _check_type_ids(input_ids, mm_token_type_ids, attention_mask, config.image_token_id, config.video_token_id)
    return reference_rope_index(
        input_ids,
        image_grid_thw,
        video_grid_thw,
        second_per_grid_ts,
        attention_mask,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        tokens_per_second=config.vision_config.tokens_per_second,
    )


def inner_vlm(model) -> torch.nn.Module:
    """The ``Qwen2_5_VLModel`` inside a model, unwrapped from DDP/DeepSpeed engines, PEFT and the LM-head wrapper."""
    inner = model
    for _ in range(8):
        if hasattr(inner, "get_rope_index") and hasattr(inner, "visual"):
            return inner
        if hasattr(inner, "module"):
            inner = inner.module
        elif hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "model"):
            inner = inner.model
        else:
            break
    raise TypeError(f"no Qwen2.5-VL model (with get_rope_index) inside {type(model).__name__}")


def set_position_layout(model, layout: str = DEFAULT_POSITION_LAYOUT) -> torch.nn.Module:
    """Make ``model`` place its 3-D rope positions by ``layout`` ("reference" or "transformers"); returns ``model``.

    The choice is bound to this model instance (its inner ``get_rope_index``), so a reference model or an evaluation
    model needs its own call. Every later forward and ``generate`` call of the instance uses it.
    """
    if layout not in POSITION_LAYOUTS:
        raise ValueError(f"position_layout must be one of {', '.join(POSITION_LAYOUTS)}, got {layout!r}")
    inner = inner_vlm(model)
    if layout == "reference":
        inner.get_rope_index = types.MethodType(_get_rope_index, inner)
    else:
        inner.__dict__.pop("get_rope_index", None)
    inner.rope_deltas = None  # offsets cached by an earlier generate belong to the old layout
    previous = getattr(inner, "position_layout", None)
    inner.position_layout = layout
    if previous != layout:
        logger.info(
            "3-D rope positions: %s layout%s",
            layout,
            " (Qwen2.5-VL reference: text after a video starts at its largest position + 1)"
            if layout == "reference"
            else " (installed transformers; differs from the pretrained model after a video)",
        )
    return model


def position_layout(model) -> str:
    """The layout ``model`` uses now."""
    return getattr(inner_vlm(model), "position_layout", "transformers")
