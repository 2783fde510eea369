"""--timestamps interleaved: the token layout written out by hand, the 3-D positions against the reference rule, one
vision pass, and packed = per-row (log-probs, loss, gradients), the static decode, and the recorded format."""

import json

import pytest
import torch
from datasets import Dataset
from test_shared_work import perturbed_trainer, rollout_and_grads

from open_r1.modeling import build_tiny_model, encode_batch, inner_vlm, load_model, load_processor
from open_r1.prompts import build_conversation, build_question
from open_r1.timestamps import (
    PROMPT_FORMAT_FILE,
    TIMESTAMP_SENTENCE,
    check_prompt_format,
    patch_times,
    read_prompt_format,
    write_prompt_format,
)
from open_r1.video.clip import VideoClip

PAD, START, END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"


@pytest.fixture(scope="module")
def processor():
    return load_processor()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_timestamps"))


def source_clip(num_frames=6, height=56, width=56, source_fps=30.0, step=15, seed=0):
    """Frames sampled every ``step`` source frames of a ``source_fps`` video (2 fps at the defaults)."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=gen)
    return VideoClip(frames=frames, sample_fps=source_fps / step, frame_indices=[i * step for i in range(num_frames)],
                     duration=num_frames * step / source_fps, source_fps=source_fps, source_size=(height, width),
                     decoder="test")  # fmt: skip


def test_patch_times_are_the_mean_of_each_patch_frames():
    # Frames at 0, 0.5, ..., 2.5 s: patches (0, 0.5), (1, 1.5), (2, 2.5).
    assert patch_times(source_clip(6)) == [0.25, 1.25, 2.25]
    # An odd count: the processor repeats the last frame (2.0 s), so the last patch is at 2.0 s.
    assert patch_times(source_clip(5)) == [0.25, 1.25, 2.0]
    # Real source times, not index / sample rate: frames 0, 7, 20, 33 of a 10 fps file.
    clip = source_clip(4, source_fps=10.0, step=5)
    clip.frame_indices = [0, 7, 20, 33]
    assert patch_times(clip) == pytest.approx([0.35, 2.65])


def test_three_patch_clip_token_layout_written_out(processor):
    clip = source_clip(6)  # 3 temporal patches of 2x2 merged tokens (56x56 frames, 14-pixel patches, merge 2)
    conversation = build_conversation("A cup is taken.", think=False, timestamps="interleaved")
    encoded = encode_batch(processor, [conversation], [clip])
    plain = encode_batch(processor, [build_conversation("A cup is taken.", think=False)], [clip])
    question = TIMESTAMP_SENTENCE + " " + build_question("A cup is taken.", think=False)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + question
        + "<0.2 seconds>" + START + PAD * 4 + END
        + "<1.2 seconds>" + START + PAD * 4 + END
        + "<2.2 seconds>" + START + PAD * 4 + END
        + "<|im_end|>\n<|im_start|>assistant\n"
    )  # fmt: skip
    ids = encoded["input_ids"][0]
    assert processor.tokenizer.decode(ids) == expected
    # Tokenized as one text, as the processor tokenizes a prompt.
    assert ids.tolist() == processor.tokenizer(expected)["input_ids"]
    video_id = processor.tokenizer.convert_tokens_to_ids(PAD)
    assert torch.equal(encoded["mm_token_type_ids"][0], (ids == video_id).long() * 2)
    assert int((ids == video_id).sum()) == 12
    # The vision side is the processor's: one (T, H, W) grid per video, the same pixels and interval.
    assert encoded["video_grid_thw"].tolist() == [[3, 4, 4]]
    assert torch.equal(encoded["pixel_values_videos"], plain["pixel_values_videos"])
    assert torch.equal(encoded["second_per_grid_ts"], plain["second_per_grid_ts"])
    # The paper's layout is untouched by default: one block, no sentence.
    text = processor.tokenizer.decode(plain["input_ids"][0])
    assert START + PAD * 12 + END in text and TIMESTAMP_SENTENCE not in text and "seconds>" not in text


def test_a_batch_is_left_padded_and_cannot_mix_layouts(processor):
    clips = [source_clip(6), source_clip(2, seed=1)]
    conversations = [build_conversation(q, timestamps="interleaved") for q in ("a", "a much longer query here")]
    encoded = encode_batch(processor, conversations, clips)
    mask = encoded["attention_mask"]
    assert mask[1].all() or mask[0].all()
    assert (mask[:, -1] == 1).all()  # left padding: every row ends with real tokens
    video_id = processor.tokenizer.convert_tokens_to_ids(PAD)
    assert ((encoded["input_ids"] == video_id).sum(-1)).tolist() == [12, 4]
    with pytest.raises(ValueError, match="mixes prompt layouts"):
        encode_batch(processor, [conversations[0], build_conversation("a")], clips)


def rule_positions(ids: list[int], grids: list[list[int]], video_id: int, merge: int = 2) -> list[list[int]]:
    """The reference rule over an interleaved prompt, written here: text advances all three axes by one; a run of
    video tokens is one temporal patch of ``h x w`` merged tokens at (s, s + row, s + column); the text after it
    starts at s + max(h, w)."""
    out, nxt, i, grid_rows = [], 0, 0, iter(grid for grid in grids for _ in range(grid[0]))
    while i < len(ids):
        if ids[i] != video_id:
            out.append([nxt] * 3)
            nxt, i = nxt + 1, i + 1
            continue
        _, height, width = next(grid_rows)
        h, w = height // merge, width // merge
        out += [[nxt, nxt + r, nxt + c] for r in range(h) for c in range(w)]
        nxt, i = nxt + max(h, w), i + h * w
    return out


def test_positions_follow_the_reference_rule_over_the_interleaved_sequence(tiny_path):
    model, processor = load_model(tiny_path), load_processor(tiny_path)
    video_id = processor.tokenizer.convert_tokens_to_ids(PAD)
    # A 3-patch 56x112 clip (2x4 merged tokens a patch) and a 1-patch 84x84 clip, left-padded together.
    clips = [source_clip(6, 56, 112), source_clip(2, 84, 84, seed=1)]
    conversations = [build_conversation(q, timestamps="interleaved") for q in ("a person sits down", "b")]
    encoded = encode_batch(processor, conversations, clips)
    positions, deltas = inner_vlm(model).get_rope_index(
        encoded["input_ids"], mm_token_type_ids=encoded["mm_token_type_ids"],
        video_grid_thw=encoded["video_grid_thw"], second_per_grid_ts=encoded["second_per_grid_ts"],
        attention_mask=encoded["attention_mask"],
    )  # fmt: skip
    for row, grid in enumerate(encoded["video_grid_thw"].tolist()):
        keep = encoded["attention_mask"][row].bool()
        expected = torch.tensor(rule_positions(encoded["input_ids"][row][keep].tolist(), [grid], video_id)).T
        assert torch.equal(positions[:, row, keep], expected)
        assert int(deltas[row]) == int(expected.max()) + 1 - int(keep.sum())
    # The same as laying out T separate one-patch videos (what Qwen3-VL's processor does with its frames).
    split = encoded["video_grid_thw"].repeat_interleave(encoded["video_grid_thw"][:, 0], dim=0)
    split[:, 0] = 1
    again, _ = inner_vlm(model).get_rope_index(
        encoded["input_ids"], mm_token_type_ids=encoded["mm_token_type_ids"], video_grid_thw=split,
        second_per_grid_ts=torch.ones(len(split)), attention_mask=encoded["attention_mask"],
    )  # fmt: skip
    assert torch.equal(again, positions)
    # A block that does not fit the grid is refused, not laid out silently.
    broken = encoded["input_ids"].clone()
    first = int((broken[0] == video_id).nonzero()[0])
    broken[0, first] = processor.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(ValueError, match="does not match its grid"):
        inner_vlm(model).get_rope_index(
            broken, video_grid_thw=encoded["video_grid_thw"], second_per_grid_ts=encoded["second_per_grid_ts"],
            attention_mask=encoded["attention_mask"],
        )  # fmt: skip


def test_one_tower_pass_gives_each_patch_its_own_features(tiny_path):
    # 224x112 frames: 16x8 patches of 14 pixels, two 8x8 windows of the tower's window attention per patch.
    model, processor = load_model(tiny_path), load_processor(tiny_path)
    clip = source_clip(6, 224, 112)
    encoded = encode_batch(processor, [build_conversation("a", timestamps="interleaved")], [clip])
    grid = encoded["video_grid_thw"]
    with torch.no_grad():
        whole = inner_vlm(model).get_video_features(encoded["pixel_values_videos"], grid, return_dict=True)
        per_patch = [
            inner_vlm(model).get_video_features(patch, torch.tensor([[1, 16, 8]]), return_dict=True).pooler_output[0]
            for patch in encoded["pixel_values_videos"].split(16 * 8)
        ]
    torch.testing.assert_close(whole.pooler_output[0], torch.cat(per_patch), atol=1e-5, rtol=1e-5)


def interleaved_rows(num_rows=2, videos=("v0", "v1"), copies=4):
    rows = [
        {
            "prompt": build_conversation(f"the event number {i} happens", think=False, timestamps="interleaved"),
            "video_id": videos[i % len(videos)],
            "solution": [1.0, 2.0],
            "duration": 2.0,
        }
        for i in range(num_rows)
    ]
    return [dict(row) for row in Dataset.from_list(rows) for _ in range(copies)]


@pytest.mark.slow
def test_packed_equals_per_row_with_interleaved_timestamps(tiny_path, tmp_path):
    rows = interleaved_rows()
    results = {shared: rollout_and_grads(perturbed_trainer(tiny_path, tmp_path, shared, num_iterations=2), rows)
               for shared in (False, True)}  # fmt: skip
    (old, old_loss, old_grads, *_), (new, new_loss, new_grads, *_) = results[False], results[True]
    assert torch.equal(old["completion_ids"], new["completion_ids"])
    mask = old["completion_mask"].bool()
    for key in ("ref_per_token_logps", "old_per_token_logps"):
        torch.testing.assert_close(new[key][mask], old[key][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(new_loss, old_loss, atol=1e-6, rtol=1e-5)
    assert new_grads.keys() == old_grads.keys() and new_grads
    for name, grad in old_grads.items():
        torch.testing.assert_close(new_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    # The rollout really was interleaved: more prompt tokens than the same rows in the paper's layout.
    assert old["prompt_ids"].shape[1] > 0 and "seconds" in perturbed_trainer(
        tiny_path, tmp_path / "t", True
    ).processing_class.tokenizer.decode(old["prompt_ids"][0])


@pytest.mark.slow
def test_static_decode_samples_what_eager_samples_with_interleaved_timestamps(tiny_path, tmp_path):
    rows = interleaved_rows()
    outs = {}
    for decode in ("eager", "static"):
        trainer = perturbed_trainer(tiny_path, tmp_path / decode, True, max_completion_length=10, top_k=50)
        trainer.decode = decode
        trainer.decode_compile_backend = "eager"
        torch.manual_seed(3)
        outs[decode] = trainer._generate_and_score_completions(rows)
    assert torch.equal(outs["static"]["completion_ids"], outs["eager"]["completion_ids"])
    mask = outs["eager"]["completion_mask"].bool()
    torch.testing.assert_close(outs["static"]["ref_per_token_logps"][mask], outs["eager"]["ref_per_token_logps"][mask])


def test_a_checkpoint_refuses_another_timestamps_mode_unless_allowed(tmp_path):
    check_prompt_format(tmp_path, "interleaved")  # nothing recorded (a base model): any mode
    write_prompt_format(tmp_path, "interleaved", no_think=True, video_first=False)
    assert json.loads((tmp_path / PROMPT_FORMAT_FILE).read_text()) == {
        "timestamps": "interleaved", "no_think": True, "video_first": False,
    }  # fmt: skip
    assert read_prompt_format(tmp_path)["timestamps"] == "interleaved"
    check_prompt_format(tmp_path, "interleaved")
    with pytest.raises(ValueError, match="trained with --timestamps interleaved.*--allow_format_mismatch"):
        check_prompt_format(tmp_path, "mrope")
    check_prompt_format(tmp_path, "mrope", allow=True)
    (tmp_path / PROMPT_FORMAT_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        check_prompt_format(tmp_path, "mrope")


def test_interleaved_needs_the_reference_position_layout():
    from open_r1.configs import VideoDataArguments

    with pytest.raises(ValueError, match="needs --position_layout reference"):
        VideoDataArguments(timestamps="interleaved", position_layout="transformers")
    with pytest.raises(ValueError, match="timestamps must be one of"):
        VideoDataArguments(timestamps="text")


@pytest.mark.slow
def test_a_run_records_its_layout_and_evaluation_and_grpo_hold_to_it(tmp_path_factory, tmp_path):
    from _entry_points import common_args, tiny_setup

    from open_r1.evaluation import run_evaluation
    from open_r1.grpo_video import cli as grpo_cli
    from open_r1.sft_video import cli as sft_cli

    setup = tiny_setup(tmp_path_factory, "timestamps_run")
    _, annotations, video_dir, _ = setup
    out = tmp_path / "sft"
    sft_cli(common_args(setup, out, "--max_steps", "2", "--timestamps", "interleaved", "--save_strategy", "steps",
                        "--save_steps", "1"))  # fmt: skip
    record = {"timestamps": "interleaved", "no_think": False, "video_first": False}
    assert read_prompt_format(out) == record
    assert read_prompt_format(out / "checkpoint-1") == record and read_prompt_format(out / "checkpoint-2") == record

    # GRPO from it with the paper's layout is refused before anything loads; with the layout it was trained on, runs.
    grpo = ["--model_name_or_path", str(out), "--num_generations", "4", "--max_completion_length", "4"]
    with pytest.raises(ValueError, match="trained with --timestamps interleaved"):
        grpo_cli(common_args(setup, tmp_path / "grpo_refused", "--max_steps", "1", *grpo))
    grpo_cli(common_args(setup, tmp_path / "grpo", "--max_steps", "1", "--timestamps", "interleaved", *grpo))
    assert read_prompt_format(tmp_path / "grpo")["timestamps"] == "interleaved"

    flags = dict(annotation_file=str(annotations), video_dir=str(video_dir), max_new_tokens=4, batch_size=2,
                 video_min_pixels=3136, video_total_pixels=3136 * 16)  # fmt: skip
    with pytest.raises(ValueError, match="trained with --timestamps interleaved"):
        run_evaluation(dict(model_base=str(out), output_dir=str(tmp_path / "eval_refused"), **flags))
    metrics = run_evaluation(dict(model_base=str(out), output_dir=str(tmp_path / "eval"), timestamps="interleaved",
                                  **flags))  # fmt: skip
    assert metrics["num_queries"] > 0
    config = json.loads((tmp_path / "eval" / "eval_config.json").read_text())
    assert config["timestamps"] == "interleaved"
    # The paper's layout writes the settings it wrote before the option existed (old runs resume, same run id).
    run_evaluation(dict(model_base=str(out), output_dir=str(tmp_path / "eval_mrope"), allow_format_mismatch=True,
                        **flags))  # fmt: skip
    assert "timestamps" not in json.loads((tmp_path / "eval_mrope" / "eval_config.json").read_text())
    # A resume asking for the other layout is another run (refused), the recorded one continues.
    with pytest.raises(ValueError, match="timestamps"):
        run_evaluation(dict(model_base=str(out), output_dir=str(tmp_path / "eval"), timestamps="mrope",
                            allow_format_mismatch=True, **flags))  # fmt: skip
