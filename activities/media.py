"""Turning generated frames into the files a user downloads: MP4, thumbnail, spritesheet.

The GPU worker produces raw RGB frames; a CPU worker turns them into deliverables. Everything
here is a pure function of its inputs (no Temporal, no object store) so that activities can call
it, tests can check it with real files, and -- most importantly -- a retried activity produces
*byte-identical* output. Identical bytes give identical content hashes, so a retry after a
crash overwrites an object with the same content instead of publishing a second, different
video for the same job.

Determinism is why this module does things a plain "write an MP4" helper would not:

* RGB -> YUV 4:2:0 is done here in integer numpy arithmetic instead of by swscale, whose SIMD
  paths and slice threading are not guaranteed bit-exact across CPUs and builds.
* The encoder's input frames are fully written, padding included: no byte the encoder could
  read comes from uninitialised memory.
* libx264 runs single-threaded (thread count 1, no slice threads, no lookahead threads) with a
  fixed preset/CRF, and with one pinned set of SIMD functions (`videogen.hostcpu.x264_asm`):
  x264's floating-point MB-tree functions round differently per instruction set.
* The muxer runs with ``+bitexact`` so no library version string is written, and no
  creation_time is ever set (the muxer writes 0).
* Pillow encoders get fixed settings and no metadata (no EXIF, no timestamps).

Same frames + same PyAV/FFmpeg build -> same bytes, in any process, under any load; the pinned
x264 functions are meant to extend that across x86-64-v3 CPUs (docs/checkpoints.md,
"Determinism: what gives the same bytes", says what was measured).

Frames everywhere are ``numpy.uint8`` arrays of shape ``(T, H, W, 3)``, RGB.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.container import InputContainer
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from av.video.stream import VideoStream
from PIL import Image

from videogen.hostcpu import x264_asm

__all__ = [
    "MP4_CODEC",
    "MP4_CRF",
    "MP4_PIX_FMT",
    "MP4_PRESET",
    "SPRITESHEET_JPEG_QUALITY",
    "SpriteLayout",
    "VideoInfo",
    "decode_mp4",
    "encode_mp4",
    "frames_from_bytes",
    "frames_sha256",
    "frames_to_bytes",
    "make_spritesheet",
    "make_thumbnail",
    "probe_mp4",
    "spritesheet_layout",
    "thumbnail_size",
]

# "medium" is x264's own default speed/size balance; our clips are a few seconds long, so the
# encode costs well under the GPU time that produced the frames, and slower presets buy little.
MP4_PRESET = "medium"
# CRF 18 is roughly visually transparent for 8-bit H.264: the output is a generated master that
# users may re-edit or re-encode, so we spend bytes to avoid adding visible artefacts.
MP4_CRF = 18
MP4_CODEC = "libx264"
# yuv420p (8-bit 4:2:0) is the only H.264 flavour every browser and phone plays back.
MP4_PIX_FMT = "yuv420p"
# JPEG rather than PNG: spritesheets are photographic tiles viewed small while scrubbing, where
# PNG would be ~10x bigger for no visible gain. Quality is fixed so the bytes are reproducible.
SPRITESHEET_JPEG_QUALITY = 85
# Lanczos for downscaling: sharp, no aliasing; Pillow's implementation is fixed-point integer
# code for 8-bit images, so it is reproducible.
_RESAMPLE = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder sees in an MP4 (from :func:`probe_mp4`)."""

    frames: int
    width: int
    height: int
    fps: float
    codec: str
    pix_fmt: str
    duration_s: float


@dataclass(frozen=True)
class SpriteLayout:
    """Geometry of a spritesheet, so an API can tell a player which tile shows which frame.

    Tile ``i`` sits at column ``i % columns``, row ``i // columns``, i.e. its top-left pixel is
    ``((i % columns) * tile_width, (i // columns) * tile_height)``, and shows frame
    ``frame_indices[i]`` (time ``frame_indices[i] / fps``). Unused cells are black.
    """

    columns: int
    rows: int
    count: int
    tile_width: int
    tile_height: int
    width: int
    height: int
    frame_indices: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Validation and serialisation


def _check_frames(frames: np.ndarray, *, name: str = "frames") -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"{name} must have shape (T, H, W, 3) (RGB), got {frames.shape}")
    if 0 in frames.shape:
        raise ValueError(f"{name} must be non-empty, got shape {frames.shape}")
    return frames


def frames_to_bytes(frames: np.ndarray) -> bytes:
    """Serialise frames as a ``.npy`` blob for the object store (GPU worker -> CPU worker).

    ``.npy`` rather than pickle: it is a plain header plus raw pixels, safe to load from an
    untrusted bucket and readable by any numpy version.
    """
    _check_frames(frames)
    buf = io.BytesIO()
    np.save(buf, frames, allow_pickle=False)
    return buf.getvalue()


def frames_sha256(frames: np.ndarray) -> str:
    """sha256 of the frames' raw RGB bytes: frame after frame, row after row, ``T*H*W*3`` bytes.

    The identity of a generation's output, independent of any container or encoder: two runs
    (one resumed, say) made the same video exactly when these are equal.
    """
    _check_frames(frames)
    return hashlib.sha256(np.ascontiguousarray(frames).data).hexdigest()


def frames_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of :func:`frames_to_bytes`; rejects anything that is not uint8 ``(T, H, W, 3)``."""
    try:
        frames = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # Wrap so callers (and Temporal's non-retryable error list) see one error type for
        # "this blob is not frames" regardless of how numpy failed to parse it.
        raise ValueError(f"frames blob is not a valid .npy array: {exc}") from exc
    if not isinstance(frames, np.ndarray):
        # np.load returns an NpzFile for .npz archives.
        raise ValueError("frames blob is not a single .npy array")
    return _check_frames(frames, name="frames blob")


# --------------------------------------------------------------------------------------------
# MP4


def scale_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames scaled to `width` x `height` (bicubic, Pillow's integer arithmetic: the same bytes
    on every CPU); the frames themselves if they have that size already. A model that draws
    smaller than the size asked for (the built-in one) is shown at that size this way."""
    frames = _check_frames(frames)
    if width <= 0 or height <= 0:
        raise ValueError(f"need width and height > 0, got {width}x{height}")
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack(
        [
            np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
            for frame in frames
        ]
    )


def _bt709_limited_coefficients() -> tuple[np.ndarray, np.ndarray]:
    # BT.709 is what browsers assume for untagged HD video, and we also tag the stream with it,
    # so decoders that honour tags and those that guess both get the colours right.
    kr, kb = 0.2126, 0.0722
    one = 1 << 16
    y_scale = 219 / 255  # limited ("TV") range: Y in 16..235
    c_scale = 224 / 255  # Cb/Cr in 16..240
    y_total = round(y_scale * one)
    y_r, y_b = round(kr * y_scale * one), round(kb * y_scale * one)
    # Derive the green weights from the rounded others so white maps exactly to Y=235 and every
    # grey maps exactly to Cb=Cr=128 (no colour cast on neutral pixels from rounding).
    y = (y_r, y_total - y_r - y_b, y_b)
    cb_r = round(-kr / (2 * (1 - kb)) * c_scale * one)
    cb_b = round(0.5 * c_scale * one)
    cr_r = round(0.5 * c_scale * one)
    cr_b = round(-kb / (2 * (1 - kr)) * c_scale * one)
    chroma = ((cb_r, -cb_r - cb_b, cb_b), (cr_r, -cr_r - cr_b, cr_b))
    return np.array(y, dtype=np.int32), np.array(chroma, dtype=np.int32)


_Y_COEF, _C_COEF = _bt709_limited_coefficients()


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """One RGB frame -> the (H*3/2, W) planar layout that PyAV's yuv420p frames use.

    Integer arithmetic only, so the result is the same on every CPU.
    """
    h, w, _ = rgb.shape
    px = rgb.astype(np.int32)
    y = (px @ _Y_COEF + ((16 << 16) + (1 << 15))) >> 16
    # Chroma: weighted sum per pixel, then a 2x2 box sum (centre-sited subsampling), rounded once.
    c = px @ _C_COEF.T  # (H, W, 2)
    c = c.reshape(h // 2, 2, w // 2, 2, 2).sum(axis=(1, 3), dtype=np.int64)
    c = (c + ((128 << 18) + (1 << 17))) >> 18
    y8 = np.clip(y, 0, 255).astype(np.uint8)
    c8 = np.clip(c, 0, 255).astype(np.uint8)
    planes = (y8.ravel(), c8[..., 0].ravel(), c8[..., 1].ravel())
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def _x264_options() -> dict[str, str]:
    params = "threads=1:lookahead-threads=1:sliced-threads=0"
    asm = x264_asm()
    if asm is not None:
        params += f":asm={asm}"
    return {"preset": MP4_PRESET, "crf": str(MP4_CRF), "x264-params": params}


def _yuv420p_frame(yuv: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame from :func:`_rgb_to_yuv420p`'s layout, every buffer byte written.

    PyAV's ``from_ndarray`` leaves the bytes between a row's end and the next line (alignment
    padding, e.g. 8 of every 80 chroma bytes at 144 pixels wide) as whatever the allocator
    returned. SIMD code may read whole vectors past a row's end; zeroed, those bytes are the
    same in every process.
    """
    rows, w = yuv.shape
    h = rows * 2 // 3
    frame = av.VideoFrame(w, h, MP4_PIX_FMT)
    flat = yuv.reshape(-1)
    start = 0
    for plane in frame.planes:
        size = plane.width * plane.height
        padded = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        padded[:, : plane.width] = flat[start : start + size].reshape(plane.height, plane.width)
        plane.update(padded.tobytes())
        start += size
    return frame


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Encode RGB frames as an H.264/yuv420p MP4 with the moov atom first (``+faststart``).

    Byte-for-byte deterministic: the same frames and fps give the same bytes in any process
    running the same PyAV/FFmpeg build (module docstring). Height and width must be even (4:2:0
    chroma). The result decodes to exactly ``T`` frames lasting ``T / fps`` seconds.
    """
    _check_frames(frames)
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"frame height and width must be even for {MP4_PIX_FMT} H.264, got {h}x{w} (HxW)"
        )

    time_base = Fraction(1, fps)
    # A real file, not BytesIO: faststart rewrites the file after encoding by re-opening it *by
    # name* to move the moov atom forward, which fails for file-like outputs in PyAV.
    with tempfile.TemporaryDirectory(prefix="videogen-mp4-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        container = av.open(
            path,
            mode="w",
            format="mp4",
            # bitexact: omit the "Lavf<version>" encoder tag, so bytes don't depend on it.
            options={"movflags": "+faststart", "fflags": "+bitexact"},
        )
        try:
            stream = container.add_stream(MP4_CODEC, rate=fps, options=_x264_options())
            assert isinstance(stream, VideoStream)  # libx264 is a video codec
            stream.width = w
            stream.height = h
            stream.pix_fmt = MP4_PIX_FMT
            stream.time_base = time_base
            cc = stream.codec_context
            cc.time_base = time_base
            # PyAV defaults to "as many threads as CPUs, slice threading"; x264's output
            # depends on both, so say one thread here as well as in x264's own parameters.
            cc.thread_count = 1
            cc.thread_type = "NONE"
            cc.colorspace = Colorspace.ITU709
            cc.color_range = ColorRange.MPEG
            cc.color_primaries = ColorPrimaries.BT709
            cc.color_trc = ColorTrc.BT709
            for i in range(t):
                frame = _yuv420p_frame(_rgb_to_yuv420p(np.ascontiguousarray(frames[i])))
                frame.colorspace = Colorspace.ITU709
                frame.color_range = ColorRange.MPEG
                frame.pts = i
                frame.duration = 1  # lets the muxer give the last frame a full 1/fps
                frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        finally:
            container.close()
        with open(path, "rb") as f:
            return f.read()


def _rgb_frames(container: InputContainer) -> Iterator[np.ndarray]:
    for frame in container.decode(video=0):
        # Honour the stream's colour tags, like a player would. (Not ACCURATE_RND: in this
        # FFmpeg build it shifts limited-range YUV -> RGB down by ~2 levels, white -> 253.)
        yield frame.to_ndarray(
            format="rgb24",
            src_colorspace=frame.colorspace,
            src_color_range=frame.color_range,
        )


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode an MP4's first video stream to uint8 RGB frames ``(T, H, W, 3)``."""
    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack(list(_rgb_frames(container)))


def probe_mp4(data: bytes) -> VideoInfo:
    """Describe an MP4's first video stream; the frame count comes from actually decoding."""
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise ValueError("MP4 has no video stream")
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        return VideoInfo(
            frames=count,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else 0.0,
            codec=stream.codec_context.name,
            pix_fmt=str(stream.codec_context.pix_fmt),
            duration_s=duration,
        )


# --------------------------------------------------------------------------------------------
# Images


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Explicit settings so a Pillow default change can't silently change the bytes.
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def thumbnail_size(width: int, height: int, max_side: int = 512) -> tuple[int, int]:
    """(width, height) of the thumbnail: fit within ``max_side``, never upscaled."""
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(frames: np.ndarray, max_side: int = 512) -> bytes:
    """The middle frame (index ``T // 2``) as PNG, scaled down to fit ``max_side`` if larger."""
    _check_frames(frames)
    t, h, w, _ = frames.shape
    size = thumbnail_size(w, h, max_side)
    image = Image.fromarray(np.ascontiguousarray(frames[t // 2]))
    if size != (w, h):
        image = image.resize(size, resample=_RESAMPLE)
    return _png_bytes(image)


def spritesheet_layout(
    num_frames: int,
    width: int,
    height: int,
    columns: int = 5,
    tile_width: int = 160,
    max_tiles: int = 25,
) -> SpriteLayout:
    """Which frames go into the spritesheet and where; :func:`make_spritesheet` follows this.

    Up to ``max_tiles`` frames, evenly spaced and always including the first and last. Every
    tile is exactly ``tile_width`` wide (scaled up or down) so clients can rely on the size.
    """
    if num_frames <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"need num_frames, width, height > 0, got {num_frames}, {width}, {height}")
    if columns <= 0 or tile_width <= 0 or max_tiles <= 0:
        raise ValueError(
            f"need columns, tile_width, max_tiles > 0, got {columns}, {tile_width}, {max_tiles}"
        )
    count = min(num_frames, max_tiles)
    if count == 1:
        indices: tuple[int, ...] = (0,)
    else:
        # Integer rounding of i*(T-1)/(count-1): exact, and strictly increasing because the
        # step is >= 1 (count <= T), so no frame appears twice.
        step_den = count - 1
        indices = tuple((i * (num_frames - 1) + step_den // 2) // step_den for i in range(count))
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    tile_height = max(1, round(height * tile_width / width))
    return SpriteLayout(
        columns=cols,
        rows=rows,
        count=count,
        tile_width=tile_width,
        tile_height=tile_height,
        width=cols * tile_width,
        height=rows * tile_height,
        frame_indices=indices,
    )


def make_spritesheet(
    frames: np.ndarray,
    columns: int = 5,
    tile_width: int = 160,
    max_tiles: int = 25,
) -> bytes:
    """Evenly sampled frames tiled left-to-right, top-to-bottom, as one JPEG.

    The geometry is :func:`spritesheet_layout` called with the same arguments.
    """
    _check_frames(frames)
    t, h, w, _ = frames.shape
    layout = spritesheet_layout(t, w, h, columns, tile_width, max_tiles)
    sheet = Image.new("RGB", (layout.width, layout.height), (0, 0, 0))
    tile_size = (layout.tile_width, layout.tile_height)
    for i, index in enumerate(layout.frame_indices):
        tile = Image.fromarray(np.ascontiguousarray(frames[index]))
        if tile.size != tile_size:
            tile = tile.resize(tile_size, resample=_RESAMPLE)
        col, row = i % layout.columns, i // layout.columns
        sheet.paste(tile, (col * layout.tile_width, row * layout.tile_height))
    buf = io.BytesIO()
    # Fixed quality and 4:2:0 subsampling; no optimize/progressive passes, no EXIF.
    sheet.save(
        buf,
        format="JPEG",
        quality=SPRITESHEET_JPEG_QUALITY,
        subsampling="4:2:0",
        optimize=False,
        progressive=False,
    )
    return buf.getvalue()
