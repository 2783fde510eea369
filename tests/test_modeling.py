"""encode_batch and the tiny model: the video tensors and time positions the model sees."""

from dataclasses import dataclass

import pytest
import torch

from open_r1.modeling import ASSETS_DIR, build_tiny_model, encode_batch, load_model, load_processor, video_metadata


@dataclass
class Clip:
    """Stand-in with the two VideoClip fields encode_batch reads."""

    frames: torch.Tensor
    sample_fps: float = 2.0


def make_clip(num_frames, height, width, fps=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Clip(torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=gen), fps)


def conversation(text="when does the red square appear?"):
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return load_processor(path), load_model(path)


def test_second_per_grid_ts_is_one_second_at_2fps(tiny):
    processor, _ = tiny
    batch = encode_batch(processor, [conversation()], [make_clip(8, 56, 56, fps=2.0)])
    # temporal_patch_size (2 frames) / 2 fps = 1 s per temporal grid step, as in the paper.
    assert batch["second_per_grid_ts"].tolist() == [1.0]
    batch = encode_batch(processor, [conversation()], [make_clip(8, 56, 56, fps=1.0)])
    assert batch["second_per_grid_ts"].tolist() == [2.0]


def test_video_tokens_and_type_ids(tiny):
    processor, model = tiny
    clip = make_clip(8, 56, 84)  # grid (4, 4, 6) -> 96 patches -> 24 tokens after the 2x2 merge
    batch = encode_batch(processor, [conversation()], [clip])
    for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert key in batch
    assert batch["video_grid_thw"].tolist() == [[4, 4, 6]]
    assert batch["pixel_values_videos"].shape == (96, 3 * 2 * 14 * 14)
    is_video = batch["input_ids"] == model.config.video_token_id
    assert int(is_video.sum()) == 96 // 4
    # mm_token_type_ids marks exactly the video placeholder tokens (2 = video); without it the model silently
    # falls back to 1-D positions.
    assert torch.equal(batch["mm_token_type_ids"] != 0, is_video)
    assert set(batch["mm_token_type_ids"][is_video].tolist()) == {2}


def test_frames_are_not_resized_or_resampled(tiny):
    processor, _ = tiny
    clip = make_clip(6, 112, 28)
    batch = encode_batch(processor, [conversation()], [clip])
    assert batch["video_grid_thw"].tolist() == [[3, 8, 2]]
    assert video_metadata(clip)["total_num_frames"] == 6


def test_batch_of_two_sizes_is_left_padded(tiny):
    processor, model = tiny
    clips = [make_clip(8, 56, 56, seed=1), make_clip(4, 112, 84, seed=2)]  # 16 and 24 video tokens
    batch = encode_batch(processor, [conversation(), conversation("a much longer query about the blue circle")], clips)
    assert batch["video_grid_thw"].tolist() == [[4, 4, 4], [2, 8, 6]]
    assert batch["pixel_values_videos"].shape[0] == 64 + 96
    tokens = (batch["input_ids"] == model.config.video_token_id).sum(1).tolist()
    assert tokens == [16, 24]
    mask = batch["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1]  # both rows end at the generation prompt
    assert mask[0].sum() != mask[1].sum()
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0
    # Padded rows produce the same logits on their real tokens as when encoded alone.
    for row in range(2):
        alone = encode_batch(
            processor, [[conversation(), conversation("a much longer query about the blue circle")][row]], [clips[row]]
        )
        with torch.no_grad():
            batched = model(**batch).logits[row, -1]
            single = model(**alone).logits[0, -1]
        torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_second_per_grid_ts_changes_positions(tiny):
    processor, model = tiny
    batch = encode_batch(processor, [conversation()], [make_clip(8, 56, 56)])
    args = {k: batch[k] for k in ("input_ids", "mm_token_type_ids", "video_grid_thw", "attention_mask")}
    pos_1s, _ = model.model.get_rope_index(second_per_grid_ts=batch["second_per_grid_ts"], **args)
    pos_24, _ = model.model.get_rope_index(second_per_grid_ts=torch.tensor([2 / 24]), **args)
    is_video = batch["input_ids"][0] == model.config.video_token_id
    time_pos = pos_1s[0, 0, is_video]
    # 4 temporal grid steps of 1 s at tokens_per_second=2 -> time positions advance by 2 per step.
    steps = sorted(set((time_pos - time_pos.min()).tolist()))
    assert steps == [0, 2, 4, 6]
    assert not torch.equal(pos_1s, pos_24)
    with torch.no_grad():
        logits_1s = model(**batch).logits
        batch_24 = dict(batch, second_per_grid_ts=torch.tensor([2 / 24]))
        logits_24 = model(**batch_24).logits
    assert not torch.allclose(logits_1s[0, -1], logits_24[0, -1])


def test_tiny_model_mirrors_real_config(tiny):
    processor, model = tiny
    vision = model.config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert text.vocab_size >= len(processor.tokenizer) and len(processor.tokenizer) < 3000
    # The small vocabulary still encodes the answer format and round-trips it.
    answer = "<think>the red square</think> <answer>1.50 to 3.00</answer>"
    assert processor.tokenizer.decode(processor.tokenizer.encode(answer)) == answer
    assert len(processor.tokenizer.encode("<|im_end|>")) == 1


def test_real_tokenizer_encodes_like_small_one(tmp_path):
    real = load_processor(ASSETS_DIR)
    assert len(real.tokenizer) == 151665
    clip = make_clip(4, 56, 56)
    batch = encode_batch(real, [conversation()], [clip])
    assert int((batch["input_ids"] == 151656).sum()) == 2 * 4 * 4 // 4
    assert batch["second_per_grid_ts"].tolist() == [1.0]
    assert real.tokenizer.decode(batch["input_ids"][0]).startswith("<|im_start|>system")


def test_rejects_unresized_frames(tiny):
    processor, _ = tiny
    with pytest.raises(ValueError, match="multiples of 28"):
        encode_batch(processor, [conversation()], [make_clip(4, 50, 56)])


@pytest.mark.parametrize("name", ["missing_run", "./missing_run", "a/b/c", "~/surely/not/here"])
def test_a_missing_local_model_folder_fails_at_once_naming_it(tmp_path, monkeypatch, name):
    """No Hub lookup (a repo-id error or minutes of retries) for a path that looks local; the message names it."""
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    path = f"outputs/{name}" if name == "missing_run" else name  # 'outputs' exists here, so outputs/x is local
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="model folder not found: .*missing_run|not/here|a/b/c"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_processor(path)
    assert time.perf_counter() - started < 5


def test_hub_ids_and_existing_folders_pass_the_local_check(tiny):
    from open_r1.modeling import ASSETS_DIR, check_model_path

    check_model_path("Qwen/Qwen2.5-VL-7B-Instruct")  # org/name: left to the Hub, not refused here
    check_model_path(ASSETS_DIR)
