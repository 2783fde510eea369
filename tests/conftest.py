import pytest
import torch
from _video_utils import make_clip


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests on machines without CUDA instead of failing them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Shared by the decode and source tests (open_r1.video), built once per run.
@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Synthetic files covering frame rates, odd sizes, a portrait frame and a VP9 webm."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "ntsc_odd": make_clip(root / "ntsc_odd.mp4", 45, size=(33, 47), fps=30000 / 1001),
        "portrait": make_clip(root / "portrait.mp4", 24, size=(96, 54), fps=12),
        "low_fps": make_clip(root / "low_fps.mp4", 9, size=(48, 96), fps=3),
        "vp9": make_clip(root / "vp9.webm", 20, size=(48, 64), fps=10, codec="libvpx-vp9"),
        "one_frame": make_clip(root / "one_frame.mp4", 1, size=(48, 64), fps=25),
        # 42.5 s -> 84 sampled frames: read and resized in several chunks, unlike qwen-vl-utils' single batch.
        "long": make_clip(root / "long.mp4", 170, size=(48, 64), fps=4),
        # decord 0.6 mis-sizes the rows of some narrow frames (48 or 72 pixels wide) and refuses to read them.
        "narrow": make_clip(root / "narrow.mp4", 20, size=(32, 48), fps=10),
    }


@pytest.fixture
def flash_attn(monkeypatch):
    """The CPU stand-in for flash-attn 2's kernels (tests/flash_attn_stand_in.py); yields the kernel-call counter."""
    import flash_attn_stand_in

    return flash_attn_stand_in.install(monkeypatch)


@pytest.fixture
def flash_attn_fp32(monkeypatch):
    """The same stand-in accepting fp32 inputs, for equality tests against fp32 paths."""
    import flash_attn_stand_in

    return flash_attn_stand_in.install(monkeypatch, fp32=True)
