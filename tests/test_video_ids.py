"""open_r1.video.ids: the one video-id rule and the lookup of a video's file."""

import pytest

from open_r1.video import (
    InvalidVideoId,
    VideoCache,
    find_video,
    video_id_problem,
)


def test_find_video(tmp_path):
    (tmp_path / "AO8RW.mp4").touch()
    (tmp_path / "uqiMw7tQ1Cc.webm").touch()  # ActivityNet download named without the v_ prefix
    (tmp_path / "v_abc.mkv").touch()
    (tmp_path / "both.avi").touch()
    (tmp_path / "both.mp4").touch()
    assert find_video(tmp_path, "AO8RW") == tmp_path / "AO8RW.mp4"
    assert find_video(tmp_path, "v_uqiMw7tQ1Cc") == tmp_path / "uqiMw7tQ1Cc.webm"
    assert find_video(str(tmp_path), "abc") == tmp_path / "v_abc.mkv"
    assert find_video(tmp_path, "both") == tmp_path / "both.mp4"  # .mp4 preferred
    assert find_video(tmp_path, "missing") is None
    assert find_video(tmp_path / "no_such_dir", "AO8RW") is None


BAD_IDS = ["../outside", "/etc/passwd", "", "x" * 300, "._x", "..", "a\nb"]


@pytest.mark.parametrize("video_id", BAD_IDS)
def test_bad_ids_are_refused_in_one_place(video_id):
    assert video_id_problem(video_id) is not None
    with pytest.raises(InvalidVideoId):
        VideoCache("/tmp").path(video_id)
    with pytest.raises(InvalidVideoId):
        find_video("/tmp", video_id)
