"""activities.media: real MP4/PNG/JPEG files, decoded back with PyAV and Pillow."""

from __future__ import annotations

import io
import itertools
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activities.media import (
    SpriteLayout,
    decode_mp4,
    encode_mp4,
    frames_from_bytes,
    frames_to_bytes,
    make_spritesheet,
    make_thumbnail,
    probe_mp4,
    spritesheet_layout,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FPS = 8


def noise_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def grey_noise_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    # Independent per-channel RGB noise can't survive 4:2:0 chroma subsampling (mean error ~45
    # before x264 even starts); luma-only noise measures the encoder itself (~3 at CRF 18).
    grey = np.random.default_rng(seed).integers(0, 256, (t, h, w, 1), dtype=np.uint8)
    return np.repeat(grey, 3, axis=3)


def smooth_frames(t: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        out[i, ..., 0] = 127.5 + 100 * np.sin(2 * np.pi * (xx / w + i / t))
        out[i, ..., 1] = 127.5 + 100 * np.cos(2 * np.pi * (yy / h - i / t))
        out[i, ..., 2] = 127.5 + 100 * np.sin(2 * np.pi * (xx + yy) / (w + h))
    return out


def solid_frames(colours: list[tuple[int, int, int]], h: int, w: int) -> np.ndarray:
    arr = np.array(colours, dtype=np.uint8)
    return np.broadcast_to(arr[:, None, None, :], (len(colours), h, w, 3)).copy()


def top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of each top-level ISO-BMFF box."""
    boxes, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        assert size >= 8, f"corrupt box at {offset}"
        boxes.append((kind.decode("latin-1"), offset, size))
        offset += size
    assert offset == len(data), "boxes do not tile the file"
    return boxes


@pytest.fixture(scope="module")
def noise_mp4_64() -> tuple[np.ndarray, bytes]:
    frames = noise_frames(17, 64, 64)
    return frames, encode_mp4(frames, FPS)


# --------------------------------------------------------------------------------------------
# MP4


@pytest.mark.parametrize(("h", "w"), [(64, 64), (144, 256)])
def test_encode_decodes_with_expected_stream_properties(h: int, w: int) -> None:
    frames = grey_noise_frames(17, h, w)
    data = encode_mp4(frames, FPS)

    info = probe_mp4(data)
    assert info.frames == 17
    assert (info.width, info.height) == (w, h)
    assert info.codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert info.fps == pytest.approx(FPS)
    assert info.duration_s == pytest.approx(17 / FPS, abs=1e-3)

    decoded = decode_mp4(data)
    assert decoded.shape == frames.shape
    assert decoded.dtype == np.uint8
    # Measured ~3.0 for both sizes at CRF 18; noise is the worst case for the encoder.
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 10


def test_smooth_video_is_close() -> None:
    frames = smooth_frames(17, 144, 256)
    decoded = decode_mp4(encode_mp4(frames, FPS))
    err = np.abs(decoded.astype(np.int16) - frames)
    # Measured: mean ~1.7, max ~14.
    assert err.mean() < 3
    assert err.max() < 40


def test_colours_match_bt709_tags() -> None:
    # Saturated colours would be off by tens of levels if the RGB->YUV matrix/range we encode
    # with disagreed with the colour tags a player reads (e.g. BT.601 vs BT.709).
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128)]
    frames = solid_frames(colours, 32, 32)
    decoded = decode_mp4(encode_mp4(frames, 24))
    centres = decoded[:, 16, 16].astype(np.int16)
    assert np.abs(centres - np.array(colours)).max() <= 4


@pytest.mark.parametrize("fps", [7, 24, 30])
def test_frame_count_and_duration_for_fps(fps: int) -> None:
    frames = smooth_frames(10, 32, 48)
    info = probe_mp4(encode_mp4(frames, fps))
    assert info.frames == 10
    assert info.fps == pytest.approx(fps)
    assert info.duration_s == pytest.approx(10 / fps, abs=1e-3)


def test_single_frame_video() -> None:
    info = probe_mp4(encode_mp4(smooth_frames(1, 32, 32), FPS))
    assert info.frames == 1
    assert info.duration_s == pytest.approx(1 / FPS, abs=1e-3)


def test_faststart_moov_before_mdat(noise_mp4_64: tuple[np.ndarray, bytes]) -> None:
    _, data = noise_mp4_64
    kinds = [kind for kind, _, _ in top_level_boxes(data)]
    assert kinds[0] == "ftyp"
    assert "moov" in kinds and "mdat" in kinds
    assert kinds.index("moov") < kinds.index("mdat")


def test_no_varying_metadata(noise_mp4_64: tuple[np.ndarray, bytes]) -> None:
    _, data = noise_mp4_64
    assert b"Lavf" not in data  # muxer version tag, dropped by +bitexact
    moov = next((off, size) for kind, off, size in top_level_boxes(data) if kind == "moov")
    mvhd = data.index(b"mvhd", moov[0], moov[0] + moov[1]) - 4
    version = data[mvhd + 8]
    width = 8 if version == 1 else 4
    creation_time = int.from_bytes(data[mvhd + 12 : mvhd + 12 + width], "big")
    assert creation_time == 0


def test_encode_is_deterministic_in_process(noise_mp4_64: tuple[np.ndarray, bytes]) -> None:
    frames, data = noise_mp4_64
    assert encode_mp4(frames.copy(), FPS) == data


def test_encode_is_deterministic_across_processes(
    tmp_path: Path, noise_mp4_64: tuple[np.ndarray, bytes]
) -> None:
    frames, data = noise_mp4_64
    src, dst = tmp_path / "frames.npy", tmp_path / "out.mp4"
    src.write_bytes(frames_to_bytes(frames))
    code = (
        "import sys, pathlib\n"
        "from activities.media import encode_mp4, frames_from_bytes\n"
        "frames = frames_from_bytes(pathlib.Path(sys.argv[1]).read_bytes())\n"
        f"pathlib.Path(sys.argv[2]).write_bytes(encode_mp4(frames, {FPS}))\n"
    )
    pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    subprocess.run(
        [sys.executable, "-c", code, str(src), str(dst)],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    assert dst.read_bytes() == data


@pytest.mark.parametrize(("h", "w"), [(63, 64), (64, 63), (1, 2)])
def test_odd_dimensions_rejected(h: int, w: int) -> None:
    with pytest.raises(ValueError, match="must be even"):
        encode_mp4(np.zeros((2, h, w, 3), dtype=np.uint8), FPS)


@pytest.mark.parametrize("fps", [0, -1, 2.5, True])
def test_bad_fps_rejected(fps: object) -> None:
    with pytest.raises(ValueError, match="fps"):
        encode_mp4(np.zeros((2, 16, 16, 3), dtype=np.uint8), fps)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Thumbnail and spritesheet


def test_thumbnail_is_middle_frame_png() -> None:
    frames = noise_frames(16, 64, 96)
    png = make_thumbnail(frames)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        assert img.size == (96, 64)
        assert np.array_equal(np.asarray(img.convert("RGB")), frames[8])
    assert make_thumbnail(frames.copy()) == png


def test_thumbnail_scaled_down_keeping_aspect() -> None:
    frames = smooth_frames(5, 144, 256)
    png = make_thumbnail(frames, max_side=128)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (128, 72)
        small = np.asarray(img.convert("RGB")).astype(np.int16)
    expected = np.asarray(Image.fromarray(frames[2]).resize((128, 72))).astype(np.int16)
    assert np.abs(small - expected).mean() < 3
    assert make_thumbnail(frames, max_side=128) == png


def test_spritesheet_layout_default() -> None:
    layout = spritesheet_layout(17, 256, 144)
    assert layout == SpriteLayout(
        columns=5,
        rows=4,
        count=17,
        tile_width=160,
        tile_height=90,
        width=800,
        height=360,
        frame_indices=tuple(range(17)),
    )


def test_spritesheet_layout_sampling() -> None:
    assert spritesheet_layout(17, 256, 144, max_tiles=5).frame_indices == (0, 4, 8, 12, 16)
    single = spritesheet_layout(1, 256, 144)
    assert (single.count, single.columns, single.rows, single.frame_indices) == (1, 1, 1, (0,))
    narrow = spritesheet_layout(3, 256, 144)
    assert (narrow.columns, narrow.rows, narrow.width) == (3, 1, 480)
    for t in range(1, 130):
        for max_tiles in (1, 2, 7, 25):
            idx = spritesheet_layout(t, 64, 64, max_tiles=max_tiles).frame_indices
            assert len(idx) == min(t, max_tiles)
            assert idx[0] == 0
            assert idx[-1] == (t - 1 if len(idx) > 1 else 0)
            assert all(a < b for a, b in itertools.pairwise(idx))


def test_spritesheet_tiles_in_order() -> None:
    rng = np.random.default_rng(1)
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(12)]
    frames = solid_frames(colours, 144, 256)
    jpeg = make_spritesheet(frames, columns=5, tile_width=80, max_tiles=7)
    layout = spritesheet_layout(12, 256, 144, columns=5, tile_width=80, max_tiles=7)
    with Image.open(io.BytesIO(jpeg)) as img:
        assert img.format == "JPEG"
        assert img.size == (layout.width, layout.height) == (400, 90)
        sheet = np.asarray(img.convert("RGB")).astype(np.int16)
    for i, index in enumerate(layout.frame_indices):
        x = (i % layout.columns) * layout.tile_width + layout.tile_width // 2
        y = (i // layout.columns) * layout.tile_height + layout.tile_height // 2
        assert np.abs(sheet[y, x] - np.array(colours[index])).max() <= 12, (i, index)
    # Unused cells stay black.
    assert np.abs(sheet[-5, -5]).max() <= 12
    assert make_spritesheet(frames.copy(), columns=5, tile_width=80, max_tiles=7) == jpeg


def test_spritesheet_default_dimensions_and_determinism() -> None:
    frames = noise_frames(17, 144, 256, seed=2)
    jpeg = make_spritesheet(frames)
    with Image.open(io.BytesIO(jpeg)) as img:
        assert img.size == (800, 360)
    assert make_spritesheet(frames) == jpeg


# --------------------------------------------------------------------------------------------
# Frames serialisation


def test_frames_bytes_roundtrip() -> None:
    frames = noise_frames(3, 16, 32)
    data = frames_to_bytes(frames)
    assert data.startswith(b"\x93NUMPY")
    back = frames_from_bytes(data)
    assert back.dtype == np.uint8
    assert np.array_equal(back, frames)
    # Non-contiguous views serialise to the same content.
    view = noise_frames(3, 16, 64)[:, :, ::2]
    assert np.array_equal(frames_from_bytes(frames_to_bytes(view)), view)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 8, 3), dtype=np.float32),
        np.zeros((2, 8, 8, 3), dtype=np.uint16),
        np.zeros((8, 8, 3), dtype=np.uint8),
        np.zeros((2, 8, 8, 4), dtype=np.uint8),
        np.zeros((0, 8, 8, 3), dtype=np.uint8),
    ],
    ids=["float32", "uint16", "3d", "rgba", "empty"],
)
def test_bad_frames_rejected(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="frames"):
        frames_to_bytes(bad)
    buf = io.BytesIO()
    np.save(buf, bad, allow_pickle=False)
    with pytest.raises(ValueError, match="frames blob"):
        frames_from_bytes(buf.getvalue())


def test_non_npy_blobs_rejected() -> None:
    with pytest.raises(ValueError, match="frames blob"):
        frames_from_bytes(b"definitely not numpy")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="frames blob"):
        frames_from_bytes(buf.getvalue())
    with pytest.raises(TypeError):
        frames_to_bytes([[1, 2, 3]])  # type: ignore[arg-type]
