"""Read a clip's frames back into what it shows: the object's colour, shape and motion.

The judge of prompt adherence: evaluation generates a video for a prompt of the synthetic world
(`videogen.tiny.world`) and compares `judge(frames)` with what the prompt asked for. It knows
the world's palette, shapes and motions, nothing of the model, and is meant for imperfect
output (noise, blur, smeared edges) of a small diffusion model.

How, in order:

1. Background: the per-pixel median over time of lightly smoothed frames (the object moves,
   so each pixel shows the backdrop in most frames), refined once with the object's pixels
   left out. If that finds no object in most frames (it barely moved, so the median holds it),
   a plain backdrop is taken from the border pixels instead.
2. Object mask: pixels far (in RGB) from the background, above a floor and above the video's
   own noise level.
3. Colour: the median of the mask's most distinct pixels, named by the nearest palette colour
   in CIELAB (closer to perceived difference than RGB).
4. Shape: on a few frames, each pixel's coverage by the object (its projection from the
   backdrop onto the object's colour) is compared with a disc, a square and an upright
   triangle of the same area and centroid, blurred as the frames were; the least squared
   misfit wins. Area and centroid survive blur and noise, where a thresholded mask's
   bounding-box fill ratio (ball ≈ 0.785, square ≈ 1, triangle ≈ 0.5; in the notes) does
   not: on small blurry triangles it read 92 % clean and 74 % noisy, the fit 100 % both.
   Objects under MIN_SHAPE_SIDE² pixels (e.g. most at 32x32) get no shape.
5. Motion: from the centroid track. Bouncing if the track both rises and falls by a fair part
   of the frame; else left/right/up/down by the larger net displacement of a straight-line fit;
   None if that is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videogen.tiny.world import PALETTE, Colour, Motion, Shape, coverage

# RGB distance from the background below which a pixel is backdrop, whatever the noise level.
MIN_CONTRAST = 40.0
# ... and above which it is object, in units of the video's median background distance.
NOISE_FACTOR = 4.0
# A frame shows the object if its mask covers this fraction of the frame (or 4 pixels).
MIN_AREA = 0.0015
# Motion thresholds, in fractions of the frame's width/height over the whole clip.
MIN_TRAVEL = 0.1
MIN_BOUNCE = 0.25
STEP_DEADZONE = 0.01
# Shape: objects of under MIN_SHAPE_SIDE² pixels of area are not judged...
MIN_SHAPE_SIDE = 5
# ... and are judged on at most this many frames.
SHAPE_FRAMES = 6

Track = tuple[tuple[float, float] | None, ...]


@dataclass(frozen=True)
class Verdict:
    """What a clip shows; None where the judge could not tell."""

    colour: Colour | None
    shape: Shape | None
    motion: Motion | None
    # The object's centroid per frame as (x, y) fractions of width and height; None where the
    # frame shows no object.
    track: Track
    # Fraction of frames that show an object (0 when none does).
    confidence: float
    notes: tuple[str, ...] = ()


def judge(frames: np.ndarray) -> Verdict:
    """Judge a clip: uint8 frames shaped (T, H, W, 3), T ≥ 2, H and W ≥ 32."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 2 or h < 32 or w < 32:
        raise ValueError(f"need at least 2 frames of 32x32, got {frames.shape}")
    raw = frames.astype(np.float32)
    smooth = _box3(raw)  # averages the noise down; the objects are many pixels wide
    min_area = max(4.0, MIN_AREA * h * w)
    notes: list[str] = []
    background = _moving_backdrop(smooth)
    mask, dist, present = _detect(smooth, background, min_area)
    if present.mean() < 0.5 and (plain := _plain_backdrop(smooth)) is not None:
        # Few frames show an object: perhaps it never moved and the median holds it.
        plain_bg = np.broadcast_to(plain, smooth.shape[1:])
        found = _detect(smooth, plain_bg, min_area)
        if found[2].mean() > present.mean():
            notes.append("static object: background from the border")
            background, (mask, dist, present) = plain_bg, found
    if not present.any():
        return Verdict(None, None, None, (None,) * t, 0.0, (*notes, "no object"))
    track = _track(mask, present)
    rgb = _object_rgb(raw, mask & present[:, None, None], dist)
    shape, shape_notes = _shape(smooth, background, rgb, mask, present)
    motion, motion_notes = _motion(track)
    notes += shape_notes + motion_notes
    return Verdict(_name_colour(rgb), shape, motion, track, float(present.mean()), tuple(notes))


def _moving_backdrop(smooth: np.ndarray) -> np.ndarray:
    """Per-pixel median over time, then again over only the frames where it is backdrop."""
    # (Sorting once and indexing beats np.median along a strided axis.)
    ranked = np.sort(smooth, axis=0)
    t = len(smooth)
    first = (ranked[(t - 1) // 2] + ranked[t // 2]) / 2
    mask = _object_mask(smooth, first)[0]
    if not mask.any():
        return first
    # The median of each pixel's backdrop samples: sorted with the object's last (as +inf),
    # then the middle of the first `count`.
    covered = _dilate(mask)[..., None]
    held = np.sort(np.where(covered, np.inf, smooth), axis=0)
    count = (~covered).sum(axis=0)[None]
    lo = np.take_along_axis(held, np.maximum(count - 1, 0) // 2, axis=0)[0]
    hi = np.take_along_axis(held, count // 2, axis=0)[0]
    return np.where(count[0] > 0, (lo + hi) / 2, first)


def _detect(
    smooth: np.ndarray, background: np.ndarray, min_area: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, distance, frames showing the object) against `background`."""
    mask, dist = _object_mask(smooth, background)
    return mask, dist, mask.sum(axis=(1, 2)) >= min_area


def _box3(frames: np.ndarray) -> np.ndarray:
    """3x3 box blur of each frame, (T, H, W, C), edges replicated; separable: rows, then columns."""
    rows = np.concatenate([frames[:, :1], frames, frames[:, -1:]], axis=1)
    rows = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    cols = np.concatenate([rows[:, :, :1], rows, rows[:, :, -1:]], axis=2)
    return (cols[:, :, :-2] + cols[:, :, 1:-1] + cols[:, :, 2:]) / 9


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of each frame's mask."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:3]
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy : dy + h, dx : dx + w]
    return out


def _object_mask(smooth: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, distance): pixels far from the background, and every pixel's RGB distance."""
    dist = np.linalg.norm(smooth - background, axis=-1)
    # The noise level, from every other pixel: plenty, and twice as fast.
    threshold = max(MIN_CONTRAST, NOISE_FACTOR * float(np.median(dist[:, ::2, ::2])))
    return dist > threshold, dist


def _plain_backdrop(smooth: np.ndarray) -> np.ndarray | None:
    """The border's median colour, if the border is plain (not a texture); else None."""
    border = np.concatenate(
        [smooth[:, 0], smooth[:, -1], smooth[:, :, 0], smooth[:, :, -1]], axis=1
    ).reshape(-1, 3)
    colour = np.median(border, axis=0)
    spread = float(np.median(np.linalg.norm(border - colour, axis=-1)))
    return colour if spread < MIN_CONTRAST / 2 else None


def _track(mask: np.ndarray, present: np.ndarray) -> Track:
    h, w = mask.shape[1:3]
    points: list[tuple[float, float] | None] = []
    for frame, shown in zip(mask, present, strict=True):
        if not shown:
            points.append(None)
            continue
        ys, xs = np.nonzero(frame)
        points.append(((float(xs.mean()) + 0.5) / w, (float(ys.mean()) + 0.5) / h))
    return tuple(points)


def _object_rgb(raw: np.ndarray, mask: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """The object's colour: the median of the mask's most distinct half (not its rim)."""
    core = mask & (dist >= np.median(dist[mask]))
    return np.median(raw[core], axis=0)


def _name_colour(rgb: np.ndarray) -> Colour:
    names = list(PALETTE)
    refs = _lab(np.array([PALETTE[c] for c in names], dtype=np.float32))
    return names[int(np.argmin(np.linalg.norm(refs - _lab(rgb[None]), axis=-1)))]


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0–255, shape (N, 3)) to CIELAB under D65."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(
        [[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]]
    )
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=-1
    )


def _shape(
    smooth: np.ndarray,
    background: np.ndarray,
    rgb: np.ndarray,
    mask: np.ndarray,
    present: np.ndarray,
) -> tuple[Shape | None, list[str]]:
    """The shape whose blurred template, of the object's area and centroid, fits it best."""
    near = _dilate(_dilate(mask))
    # Coverage of each pixel by the object: its projection from the backdrop onto the object's
    # colour; 0 on backdrop, 1 inside, and unbiased under noise (unlike a distance). Its sum
    # (the area) and centroid are unchanged by a symmetric blur.
    direction = rgb - background
    norm2 = np.maximum((direction**2).sum(axis=-1), 1.0)
    misfit = dict.fromkeys(Shape, 0.0)
    total = 0.0
    fills: list[float] = []
    h, w = mask.shape[1:3]
    shown = np.nonzero(present)[0]
    # A few frames spread over the clip are enough, and the fit is the judge's costly part.
    for i in shown[np.linspace(0, len(shown) - 1, min(len(shown), SHAPE_FRAMES)).astype(int)]:
        # Work in the object's neighbourhood only: the templates are zero elsewhere.
        rows, cols = np.nonzero(near[i].any(axis=1))[0], np.nonzero(near[i].any(axis=0))[0]
        y0, y1 = max(rows[0] - 2, 0), min(rows[-1] + 3, h)
        x0, x1 = max(cols[0] - 2, 0), min(cols[-1] + 3, w)
        window = np.s_[y0:y1, x0:x1]
        alpha = ((smooth[i][window] - background[window]) * direction[window]).sum(axis=-1)
        alpha = np.where(near[i][window], np.clip(alpha / norm2[window], -1, 2), 0.0)
        area = float(alpha.sum())
        if area < MIN_SHAPE_SIDE**2:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        cx, cy = float((alpha * xx).sum()) / area, float((alpha * yy).sum()) / area
        ys, xs = np.nonzero(alpha >= 0.5)
        if len(ys):
            fills.append(area / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
        sides = {
            Shape.BALL: np.sqrt(4 * area / np.pi),
            Shape.SQUARE: np.sqrt(area),
            Shape.TRIANGLE: np.sqrt(2 * area),
        }
        for shape, side in sides.items():
            # A triangle's centroid sits a sixth of its height below its box's centre.
            box_cy = cy - side / 6 if shape is Shape.TRIANGLE else cy
            drawn = coverage(shape, cx - x0, box_cy - y0, side, x1 - x0, y1 - y0)
            template = _box3(drawn[None, ..., None])[0, ..., 0]  # blurred as the frames were
            misfit[shape] += float(((alpha - template) ** 2).sum())
        total += float((alpha**2).sum())
    if total == 0:
        return None, ["shape: object too small"]
    best = min(misfit, key=lambda s: misfit[s])
    fits = ", ".join(f"{s} {v / total:.2f}" for s, v in misfit.items())
    fill = f"{np.median(fills):.2f}" if fills else "?"
    return best, [f"shape: misfit {fits}; box fill {fill}"]


def _motion(track: Track) -> tuple[Motion | None, list[str]]:
    points = [(i, p) for i, p in enumerate(track) if p is not None]
    if len(points) < 3:
        return None, ["motion: object in fewer than 3 frames"]
    frames = np.array([i for i, _ in points], dtype=np.float64)
    xs = np.array([p[0] for _, p in points])
    ys = np.array([p[1] for _, p in points])
    steps = np.diff(ys)
    rise = float(-steps[steps < -STEP_DEADZONE].sum())
    fall = float(steps[steps > STEP_DEADZONE].sum())
    if 2 * min(rise, fall) >= MIN_BOUNCE:
        return Motion.BOUNCING, [f"motion: rises {rise:.2f}, falls {fall:.2f}"]
    # Net displacement of a straight-line fit: steadier than first-to-last under noise.
    span = float(frames[-1] - frames[0])
    dx = float(np.polyfit(frames, xs, 1)[0]) * span
    dy = float(np.polyfit(frames, ys, 1)[0]) * span
    note = f"motion: dx {dx:+.2f}, dy {dy:+.2f}"
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None, [note + " (barely moves)"]
    if abs(dx) >= abs(dy):
        return (Motion.RIGHT if dx > 0 else Motion.LEFT), [note]
    return (Motion.DOWN if dy > 0 else Motion.UP), [note]
