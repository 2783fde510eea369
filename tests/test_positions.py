"""3-D rope positions: the Qwen2.5-VL reference layout in every forward and in generate (open_r1.positions)."""

import logging
from dataclasses import dataclass

import pytest
import torch
from _reference_positions import batch_positions, row_positions

from open_r1.modeling import build_tiny_model, encode_batch, load_model, load_processor
from open_r1.positions import position_layout, set_position_layout


@dataclass
class Clip:
    frames: torch.Tensor
    sample_fps: float


def make_clip(num_frames, height, width, fps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Clip(torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=gen), fps)


def conversation(text, video_first=False, text_after=None):
    content = [{"type": "text", "text": text}, {"type": "video"}]
    if video_first:
        content.reverse()
    if text_after:
        content.append({"type": "text", "text": text_after})
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return path, load_processor(path), load_model(path)


def test_paper_shape_text_after_the_video(tiny):
    """Grid 32x16x28 at 2 fps after 15 text tokens: the next text token is at 78 (reference), not 29 (5.x)."""
    _, _, model = tiny
    config = model.config
    text = torch.full((15,), 100)
    ids = torch.cat([text, torch.full((32 * 8 * 14,), config.video_token_id), text])[None]
    mm = (ids == config.video_token_id).long() * 2
    grid = torch.tensor([[32, 16, 28]])
    args = dict(mm_token_type_ids=mm, video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0]))
    first_after = 15 + 3584
    positions, deltas = model.model.get_rope_index(ids, **args)
    assert positions[0, 0, first_after - 1].item() == 15 + 62  # the last frame's time position: 77
    assert positions[:, 0, first_after].tolist() == [78, 78, 78]
    assert deltas.item() == 78 + 15 - (first_after + 15)
    assert positions[:, 0].T.tolist() == [
        list(p) for p in row_positions(ids[0].tolist(), config.video_token_id, [(32, 16, 28)], [2.0])
    ]

    set_position_layout(model, "transformers")
    try:
        library, _ = model.model.get_rope_index(ids, **args)
    finally:
        set_position_layout(model, "reference")
    assert library[:, 0, first_after].tolist() == [29, 29, 29]  # 15 + max(16, 28) / 2
    assert torch.equal(library[:, 0, :first_after], positions[:, 0, :first_after])  # same up to the video's end


# (frames, height, width, fps): 2 fps (1 s per grid step), 4 fps (0.5 s), fractional rates such as an ActivityNet
# video of 500 s capped at 768 frames (1.536 fps) and an NTSC-like 1.7 fps, and a slow 0.5 fps.
CASES = [
    (8, 56, 84, 2.0),
    (8, 84, 56, 4.0),
    (12, 56, 56, 768 / 500),
    (6, 112, 56, 1.7),
    (4, 56, 56, 0.5),
]


def model_and_reference_positions(model, batch, fps_values):
    """The model's (positions, offsets) for an encoded batch, and the test's reference positions."""
    positions, deltas = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )
    expected = batch_positions(
        batch["input_ids"],
        batch["attention_mask"],
        model.config.video_token_id,
        batch["video_grid_thw"].tolist(),
        fps_values,
    )
    return positions, deltas, expected


@pytest.mark.parametrize("frames, height, width, fps", CASES)
@pytest.mark.parametrize("order", ["text_video", "video_text", "text_video_text"])
def test_positions_equal_the_reference_formula(tiny, frames, height, width, fps, order):
    _, processor, model = tiny
    conv = conversation(
        "when does it happen?", video_first=order == "video_text", text_after="answer" if "_text_" in order else None
    )
    batch = encode_batch(processor, [conv], [make_clip(frames, height, width, fps)])
    positions, deltas, expected = model_and_reference_positions(model, batch, [fps])
    assert torch.equal(positions, expected)
    assert deltas.item() == expected.max().item() + 1 - batch["input_ids"].shape[1]


def test_left_padded_batch_of_different_videos(tiny):
    _, processor, model = tiny
    clips = [make_clip(8, 56, 84, 4.0, seed=1), make_clip(12, 56, 56, 768 / 500, seed=2), make_clip(4, 84, 84, 2.0)]
    convs = [
        conversation("a"),
        conversation("a much longer query about the blue circle moving left", text_after="now"),
        conversation("b", video_first=True),
    ]
    batch = encode_batch(processor, convs, clips)
    assert not batch["attention_mask"].all()  # rows of different lengths: left padding is exercised
    positions, deltas, expected = model_and_reference_positions(model, batch, [c.sample_fps for c in clips])
    assert torch.equal(positions, expected)
    real = batch["attention_mask"].sum(1)
    assert deltas.flatten().tolist() == (expected.amax(dim=(0, 2)) + 1 - real).tolist()


def test_misaligned_type_ids_fail_loudly(tiny):
    _, processor, model = tiny
    batch = encode_batch(
        processor,
        [conversation("a"), conversation("a much longer query")],
        [make_clip(4, 56, 56, 2.0), make_clip(4, 56, 56, 2.0)],
    )
    mm = batch["mm_token_type_ids"]
    shifted = torch.roll(mm, shifts=1, dims=1)  # what right- instead of left-padded type ids look like
    with pytest.raises(ValueError, match="mm_token_type_ids do not match"):
        model(**dict(batch, mm_token_type_ids=shifted))


def test_generate_uses_reference_positions_at_every_step(tiny):
    """Greedy generate (prefill + decode steps, left-padded batch) = one full forward with the reference positions."""
    path, processor, model = tiny
    clips = [make_clip(8, 56, 56, 0.5, seed=3), make_clip(4, 56, 84, 4.0, seed=4)]
    batch = encode_batch(processor, [conversation("when?"), conversation("when does the square move?")], clips)
    steps = 6
    fps_values = [c.sample_fps for c in clips]

    def full_forward_logits(m, sequences, mask):
        mm = torch.nn.functional.pad(batch["mm_token_type_ids"], (0, steps))
        positions = batch_positions(
            sequences, mask, m.config.video_token_id, batch["video_grid_thw"].tolist(), fps_values
        )
        with torch.no_grad():
            return m(
                input_ids=sequences,
                attention_mask=mask,
                position_ids=positions,
                mm_token_type_ids=mm,
                pixel_values_videos=batch["pixel_values_videos"],
                video_grid_thw=batch["video_grid_thw"],
                second_per_grid_ts=batch["second_per_grid_ts"],
            ).logits

    def generate(m):
        with torch.no_grad():
            out = m.generate(
                **batch,
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        return out.sequences, torch.stack(out.logits, dim=1)

    sequences, step_logits = generate(model)
    mask = torch.nn.functional.pad(batch["attention_mask"], (0, steps), value=1)
    width = batch["input_ids"].shape[1]
    expected = full_forward_logits(model, sequences, mask)[:, width - 1 : -1]
    torch.testing.assert_close(step_logits, expected, atol=1e-4, rtol=1e-4)

    # The installed library's layout generates from other positions: its logits differ from the reference forward.
    library = load_model(path, position_layout="transformers")
    assert position_layout(library) == "transformers"
    _, library_logits = generate(library)
    assert (library_logits - expected).abs().max() > 1e-3


def test_every_loader_logs_its_layout(tiny, caplog):
    path, _, _ = tiny
    with caplog.at_level(logging.INFO, logger="open_r1.positions"):
        model = load_model(path)
    assert position_layout(model) == "reference"
    assert "reference layout" in caplog.text
    with pytest.raises(ValueError, match="position_layout must be one of"):
        load_model(path, position_layout="vllm")


def test_time_index_is_truncated_in_float32_like_the_reference():
    """The reference computes grid step x second_per_grid_t x tokens_per_second in float32, then truncates. At a
    sampling rate of 2.4 fps (second_per_grid_t = 2 / 2.4 as float32) step 3 is 5.0 in float32 but 4.99999... in
    float64, so a float64 computation would place that step at time 4 instead of 5."""
    from open_r1.positions import reference_rope_index

    video_token = 7
    grid = torch.tensor([[6, 2, 2]])  # 6 temporal steps of one merged token each (spatial merge 2)
    ids = torch.tensor([[1] + [video_token] * 6 + [2]])
    interval = torch.tensor([2 / 2.4], dtype=torch.float32)
    positions, _ = reference_rope_index(
        ids, None, grid, interval, None,
        image_token_id=6, video_token_id=video_token, spatial_merge_size=2, tokens_per_second=2,
    )  # fmt: skip
    time = positions[0, 0, 1:7] - 1  # the video's temporal positions, from its start
    assert time.tolist() == [0, 1, 3, 5, 6, 8]  # trunc(i x 0.8333 x 2) in float32
    float64 = (torch.arange(6, dtype=torch.float64) * interval.double() * 2).long().tolist()
    assert float64 == [0, 1, 3, 4, 6, 8]  # what the float64 mutant would give: step 3 differs
