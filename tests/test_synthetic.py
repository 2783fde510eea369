"""Synthetic grounding videos: real encoded files whose shapes appear exactly when the annotation says."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from open_r1.data import load_annotations
from open_r1.synthetic import COLORS, make_grounding_dataset, write_video


def decode_all(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    return frames, rate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_grounding_dataset(tmp_path_factory.mktemp("synth"), num_videos=3, seed=7, events_per_video=2)


def test_annotation_is_timezero_json_that_the_loader_reads(dataset):
    annotation, video_dir = dataset
    records = json.loads(annotation.read_text())
    assert sorted(records) == ["synth_000", "synth_001", "synth_002"]
    for video_id, record in records.items():
        assert set(record) == {"duration", "timestamps", "sentences"}
        assert record["duration"] == 8.0
        assert len(record["timestamps"]) == len(record["sentences"]) == 2
        assert len(set(record["sentences"])) == 2  # each query has one answer
        for (start, end), sentence in zip(record["timestamps"], record["sentences"]):
            assert 0 <= start < end <= 8.0 and end - start >= 1.0
            assert sentence.startswith("the ") and sentence.endswith(" appears.")
        assert (video_dir / f"{video_id}.mp4").stat().st_size > 0
    rows = load_annotations(annotation)
    assert len(rows) == 6
    assert rows[0]["video_id"] == "synth_000" and rows[0]["query"].endswith("appears")


def test_shapes_are_visible_exactly_inside_their_windows(dataset):
    annotation, video_dir = dataset
    for video_id, record in json.loads(annotation.read_text()).items():
        frames, rate = decode_all(video_dir / f"{video_id}.mp4")
        assert rate == 4 and frames.shape == (32, 48, 64, 3)
        times = np.arange(len(frames)) / 4.0
        for (start, end), sentence in zip(record["timestamps"], record["sentences"]):
            color = np.array(COLORS[sentence.split()[1]], dtype=float)
            # A pixel "shows" the colour when it is within 40 levels of it on every channel (codec noise is smaller).
            shown = (np.abs(frames.astype(float) - color).max(axis=-1) < 40).sum(axis=(1, 2)) > 20
            inside = (times >= start) & (times < end)
            assert shown[inside].all() and not shown[~inside].any(), (video_id, sentence)


def test_same_seed_same_dataset(tmp_path):
    first, _ = make_grounding_dataset(tmp_path / "a", num_videos=2, seed=5)
    second, _ = make_grounding_dataset(tmp_path / "b", num_videos=2, seed=5)
    third, _ = make_grounding_dataset(tmp_path / "c", num_videos=2, seed=6)
    assert first.read_text() == second.read_text() != third.read_text()


def test_write_video_keeps_odd_sizes_and_fractional_rates(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (7, 33, 47, 3), dtype=np.uint8)
    decoded, rate = decode_all(write_video(tmp_path / "odd.mp4", frames, fps=29.97))
    assert decoded.shape == frames.shape
    assert rate == Fraction(30000, 1001)


def test_write_video_vp9_webm(tmp_path):
    frames = np.zeros((5, 32, 64, 3), dtype=np.uint8)
    frames[:, :, :32] = 200
    path = write_video(tmp_path / "clip.webm", frames, fps=5, codec="libvpx-vp9")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
    decoded, _ = decode_all(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 4


@pytest.mark.parametrize(
    "frames",
    [np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.float32)],
    ids=["no_frames", "grey", "float"],
)
def test_write_video_rejects_bad_input(tmp_path, frames):
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", frames, fps=4)


def test_shape_size_sets_the_share_of_the_frame_an_event_covers(tmp_path):
    """The demo's events fill the frame (shape_size 1 on square frames); the default shape is a third of the side."""
    covered = {}
    for size in (1 / 3, 1.0):
        annotation, video_dir = make_grounding_dataset(tmp_path / str(size), num_videos=1, seed=2, size=(56, 56),
                                                       fps=2.0, shape_size=size)  # fmt: skip
        record = json.loads(annotation.read_text())["synth_000"]
        frames, _ = decode_all(video_dir / "synth_000.mp4")
        color = np.array(COLORS[record["sentences"][0].split()[1]], dtype=float)
        start = int(record["timestamps"][0][0] * 2)
        covered[size] = (np.abs(frames[start].astype(float) - color).max(axis=-1) < 40).mean()
    assert 0.05 < covered[1 / 3] < 0.15  # an 18 px square (or disk) of 56 x 56
    assert covered[1.0] > 0.75  # the whole frame (a square) or the inscribed disk (pi / 4)
    with pytest.raises(ValueError, match="shape_size"):
        make_grounding_dataset(tmp_path / "bad", num_videos=1, shape_size=0.0, write_videos=False)
