"""A small procedural world for the built-in model to learn from, rendered with numpy only.

Each clip shows one flat-coloured object on a backdrop, moving the whole length of the clip:

- colours: red, green, blue, yellow, purple, orange (`PALETTE`; far apart in RGB and from
  every backdrop, so a judge can tell them apart even in a blurry, noisy video);
- shapes: ball (a disc), square, triangle (upright);
- motions: left, right, up, down, bouncing (parabolic hops along the floor while drifting
  sideways, so the object never sits still on one spot);
- backgrounds: plain grey, plain dark, a grey checkerboard, wooden planks.

A `ClipSpec` carries its own seed, from which the object's size, path, exact shade and the
texture's jitter are drawn: `render` is a pure function of (spec, width, height, frames).
Positions are fractions of the frame, so one spec renders the same scene at any size.

The split, for measuring generalisation rather than recall:

- `HELD_OUT_COMBOS`: 12 fixed (colour, shape, motion) combinations, two per colour, spread so
  every colour, shape, motion and every pair of them still appears in training. The other 78
  combinations are `TRAIN_COMBOS`. ("a red square moving right" and "a red ball bouncing" are
  training combinations: the end-to-end test and the demo use them.)
- `TRAIN_TEMPLATES` and `HELD_OUT_TEMPLATES`: disjoint sentence frames. Both use the same
  words (`COLOUR_WORDS`, `SHAPE_WORDS`, `MOTION_PHRASES`, `BACKGROUND_PHRASES`): a model
  trained from scratch cannot know a word it never saw, so held-out phrasing means new
  sentence structure over the training vocabulary.

`training_clips` draws only training combinations and prompts them with training templates;
`held_out_clips` only held-out ones, with held-out templates (`ClipSpec.split` says which).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"
    YELLOW = "yellow"
    PURPLE = "purple"
    ORANGE = "orange"


class Shape(StrEnum):
    BALL = "ball"
    SQUARE = "square"
    TRIANGLE = "triangle"


class Motion(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"
    BOUNCING = "bouncing"


class Background(StrEnum):
    GREY = "grey"
    DARK = "dark"
    CHECKER = "checker"
    WOOD = "wood"


class Split(StrEnum):
    TRAIN = "train"
    HELD_OUT = "held_out"


RGB = tuple[int, int, int]
Combo = tuple[Colour, Shape, Motion]

# Nominal object colours; a clip jitters each channel by at most COLOUR_JITTER.
PALETTE: dict[Colour, RGB] = {
    Colour.RED: (215, 40, 40),
    Colour.GREEN: (40, 175, 70),
    Colour.BLUE: (40, 90, 225),
    Colour.YELLOW: (235, 215, 40),
    Colour.PURPLE: (150, 60, 200),
    Colour.ORANGE: (245, 140, 30),
}
COLOUR_JITTER = 12

ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(Colour, Shape, Motion))
HELD_OUT_COMBOS: tuple[Combo, ...] = (
    (Colour.RED, Shape.BALL, Motion.LEFT),
    (Colour.RED, Shape.SQUARE, Motion.DOWN),
    (Colour.GREEN, Shape.SQUARE, Motion.RIGHT),
    (Colour.GREEN, Shape.TRIANGLE, Motion.BOUNCING),
    (Colour.BLUE, Shape.TRIANGLE, Motion.UP),
    (Colour.BLUE, Shape.BALL, Motion.LEFT),
    (Colour.YELLOW, Shape.BALL, Motion.DOWN),
    (Colour.YELLOW, Shape.SQUARE, Motion.RIGHT),
    (Colour.PURPLE, Shape.SQUARE, Motion.BOUNCING),
    (Colour.PURPLE, Shape.TRIANGLE, Motion.UP),
    (Colour.ORANGE, Shape.TRIANGLE, Motion.LEFT),
    (Colour.ORANGE, Shape.BALL, Motion.DOWN),
)
TRAIN_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if c not in HELD_OUT_COMBOS)


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the world; `seed` fixes everything `render` randomises."""

    colour: Colour
    shape: Shape
    motion: Motion
    background: Background
    seed: int
    split: Split = Split.TRAIN

    @property
    def combo(self) -> Combo:
        return (self.colour, self.shape, self.motion)


# --- prompts -------------------------------------------------------------------------------

COLOUR_WORDS: dict[Colour, tuple[str, ...]] = {
    Colour.RED: ("red", "crimson", "scarlet"),
    Colour.GREEN: ("green", "emerald"),
    Colour.BLUE: ("blue", "cobalt"),
    Colour.YELLOW: ("yellow", "golden"),
    Colour.PURPLE: ("purple", "violet"),
    Colour.ORANGE: ("orange", "tangerine"),
}
SHAPE_WORDS: dict[Shape, tuple[str, ...]] = {
    Shape.BALL: ("ball", "circle", "sphere", "disc", "dot"),
    Shape.SQUARE: ("square", "box", "cube", "block"),
    Shape.TRIANGLE: ("triangle", "pyramid", "wedge"),
}
MOTION_PHRASES: dict[Motion, tuple[str, ...]] = {
    Motion.LEFT: (
        "moving left",
        "rolling to the left",
        "drifting leftwards",
        "sliding to the left",
        "heading left",
        "travelling from right to left",
    ),
    Motion.RIGHT: (
        "moving right",
        "rolling to the right",
        "drifting rightwards",
        "sliding to the right",
        "heading right",
        "travelling from left to right",
    ),
    Motion.UP: (
        "moving up",
        "rising",
        "floating upwards",
        "drifting up",
        "climbing to the top",
        "travelling from bottom to top",
    ),
    Motion.DOWN: (
        "moving down",
        "falling",
        "sinking",
        "dropping downwards",
        "sliding down",
        "travelling from top to bottom",
    ),
    Motion.BOUNCING: (
        "bouncing",
        "bouncing up and down",
        "hopping",
        "bouncing along",
        "jumping",
        "bouncing across the floor",
    ),
}
BACKGROUND_PHRASES: dict[Background, tuple[str, ...]] = {
    Background.GREY: (
        "on a grey floor",
        "against a grey background",
        "on a plain grey backdrop",
        "over a gray surface",
    ),
    Background.DARK: (
        "in the dark",
        "on a black background",
        "against a dark backdrop",
        "on a dark floor",
    ),
    Background.CHECKER: (
        "on a checkered floor",
        "on a chessboard",
        "over a checkerboard",
        "on a tiled chequered floor",
    ),
    Background.WOOD: (
        "on a wooden floor",
        "on wooden planks",
        "over a parquet floor",
        "on a wood surface",
    ),
}
# Fields: {a} (an article, fixed to "an" before a vowel), {colour}, {shape}, {motion},
# {bg} (" on a grey floor" or "") and {bg_lead} ("on a grey floor, " or "").
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{a} {colour} {shape} {motion}{bg}",
    "{colour} {shape} {motion}{bg}",
    "{a} {colour} {shape}{bg}, {motion}",
    "{a} {shape}, {colour}, {motion}{bg}",
    "{a} {colour} {shape} that is {motion}{bg}",
    "{a} {colour} {shape} is {motion}{bg}",
)
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "{bg_lead}{a} {colour} {shape} {motion}",
    "there is {a} {colour} {shape} {motion}{bg}",
    "video of {a} {colour} {shape} {motion}{bg}",
    "{motion}{bg}: {a} {colour} {shape}",
    "watch {a} {colour} {shape} {motion}{bg}",
)
# Some prompts name no backdrop: the model should then pick any.
P_NO_BACKGROUND = 0.2


def prompt_for(clip: ClipSpec, rng: np.random.Generator) -> str:
    """A paraphrased prompt for `clip`, from its split's templates; `rng` picks the wording."""
    templates = TRAIN_TEMPLATES if clip.split is Split.TRAIN else HELD_OUT_TEMPLATES
    template = templates[rng.integers(len(templates))]
    bg = ""
    if rng.random() >= P_NO_BACKGROUND:
        bg = _pick(BACKGROUND_PHRASES[clip.background], rng)
    text = template.format(
        a="a",
        colour=_pick(COLOUR_WORDS[clip.colour], rng),
        shape=_pick(SHAPE_WORDS[clip.shape], rng),
        motion=_pick(MOTION_PHRASES[clip.motion], rng),
        bg=f" {bg}" if bg else "",
        bg_lead=f"{bg}, " if bg else "",
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[rng.integers(len(options))]


# --- the split -----------------------------------------------------------------------------


def training_clips(n: int, seed: int) -> list[ClipSpec]:
    """`n` clips of training combinations, each combination equally often; deterministic."""
    return _clips(n, np.random.default_rng([seed, 0]), TRAIN_COMBOS, Split.TRAIN)


def held_out_clips(n: int, seed: int) -> list[ClipSpec]:
    """`n` clips of held-out combinations only, prompted with held-out templates."""
    return _clips(n, np.random.default_rng([seed, 1]), HELD_OUT_COMBOS, Split.HELD_OUT)


def _clips(
    n: int, rng: np.random.Generator, combos: tuple[Combo, ...], split: Split
) -> list[ClipSpec]:
    # Shuffled passes over the combinations: balanced coverage, even for small n.
    order: list[Combo] = []
    while len(order) < n:
        order.extend(combos[i] for i in rng.permutation(len(combos)))
    backgrounds = list(Background)
    return [
        ClipSpec(
            colour=colour,
            shape=shape,
            motion=motion,
            background=backgrounds[rng.integers(len(backgrounds))],
            seed=int(rng.integers(2**31)),
            split=split,
        )
        for colour, shape, motion in order[:n]
    ]


# --- rendering -----------------------------------------------------------------------------

# Object size (side or diameter) as a fraction of the frame's shorter side.
SIZE_RANGE = (0.12, 0.20)
# Straight motions cover this fraction of the free range: at least ~2.5 object sizes, so each
# pixel shows the backdrop in most frames and a per-pixel median over time recovers it.
TRAVEL_RANGE = (0.7, 1.0)
BOUNCE_HOPS = (1.5, 2.5)
BOUNCE_HEIGHT = (0.55, 0.9)
BOUNCE_DRIFT = (0.4, 0.7)
# Gap kept between the object and the frame's edge, as a fraction of the shorter side.
MARGIN = 0.04
# Anti-aliasing: samples per pixel along each axis.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class _Path:
    """The object's size and centre per frame, in pixels."""

    size: float
    xs: np.ndarray
    ys: np.ndarray


def render(clip: ClipSpec, *, width: int, height: int, num_frames: int) -> np.ndarray:
    """The clip's frames, uint8 shaped (num_frames, height, width, 3); a pure function."""
    rng = np.random.default_rng(clip.seed)
    # Object draws first, in a fixed number, so the backdrop's draws never shift the path.
    path = _path(clip.motion, rng, width, height, num_frames)
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    colour = np.clip(np.array(PALETTE[clip.colour]) + jitter, 0, 255).astype(np.float32)
    background = _background(clip.background, rng, width, height)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        alpha = coverage(clip.shape, path.xs[i], path.ys[i], path.size, width, height)
        frame = background * (1 - alpha[..., None]) + colour * alpha[..., None]
        frames[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames


def _path(
    motion: Motion, rng: np.random.Generator, width: int, height: int, num_frames: int
) -> _Path:
    u = rng.random(8)  # always eight draws, whatever the motion: see `render`
    short = min(width, height)
    size = short * _lerp(SIZE_RANGE, u[0])
    margin = short * MARGIN
    # Centre positions that keep the whole object (and the margin) inside the frame.
    x_lo, x_hi = margin + size / 2, width - margin - size / 2
    y_lo, y_hi = margin + size / 2, height - margin - size / 2
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    if motion is Motion.BOUNCING:
        drift = (x_hi - x_lo) * _lerp(BOUNCE_DRIFT, u[1])
        x0 = x_lo + u[2] * (x_hi - x_lo - drift)
        xs = x0 + drift * t if u[3] < 0.5 else x0 + drift * (1 - t)
        hops = _lerp(BOUNCE_HOPS, u[4])
        phase = np.mod(u[5] + hops * t, 1.0)
        # Parabolic hops from the floor (the bottom of the free range), as a thrown ball.
        lift = (y_hi - y_lo) * _lerp(BOUNCE_HEIGHT, u[6]) * 4 * phase * (1 - phase)
        return _Path(size, xs, y_hi - lift)
    horizontal = motion in (Motion.LEFT, Motion.RIGHT)
    lo, hi = (x_lo, x_hi) if horizontal else (y_lo, y_hi)
    travel = (hi - lo) * _lerp(TRAVEL_RANGE, u[1])
    start = lo + u[2] * (hi - lo - travel)
    along = start + travel * t
    if motion in (Motion.LEFT, Motion.UP):  # towards smaller x or y
        along = along[::-1]
    cross_lo, cross_hi = (y_lo, y_hi) if horizontal else (x_lo, x_hi)
    across = np.full(num_frames, cross_lo + u[3] * (cross_hi - cross_lo))
    return _Path(size, along, across) if horizontal else _Path(size, across, along)


def _lerp(bounds: tuple[float, float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * float(u)


def coverage(
    shape: Shape, cx: float, cy: float, size: float, width: int, height: int
) -> np.ndarray:
    """Fraction of each pixel that `shape` covers (float32, (height, width)): its bounding box
    of side `size` centred on (cx, cy), in pixels. Supersampled within that box only."""
    alpha = np.zeros((height, width), dtype=np.float32)
    r = size / 2
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, width)
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, height)
    if x1 <= x0 or y1 <= y0:  # wholly outside the frame (the judge may ask)
        return alpha
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = (np.arange(x0, x1)[:, None] + offsets).ravel() - cx
    ys = (np.arange(y0, y1)[:, None] + offsets).ravel() - cy
    dx, dy = np.meshgrid(xs, ys)
    if shape is Shape.BALL:
        inside = dx**2 + dy**2 <= r**2
    elif shape is Shape.SQUARE:
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    else:  # upright triangle: apex at the top centre, base along the bottom
        inside = (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)
    cells = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE)
    alpha[y0:y1, x0:x1] = cells.mean(axis=(1, 3))
    return alpha


def _background(kind: Background, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The static backdrop, float32 (height, width, 3)."""
    u = rng.random(4)
    short = min(width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind is Background.GREY:
        level = 128 + 16 * (u[0] - 0.5)
        return np.full((height, width, 3), level, dtype=np.float32)
    if kind is Background.DARK:
        level = 26 + 10 * (u[0] - 0.5)
        return np.broadcast_to(
            np.array([level, level, level + 6], dtype=np.float32), (height, width, 3)
        ).copy()
    if kind is Background.CHECKER:
        tile = short * (0.08 + 0.06 * u[0])
        parity = (np.floor(xx / tile + u[1]) + np.floor(yy / tile + u[2])) % 2
        level = np.where(parity == 0, 100.0, 156.0) + 10 * (u[3] - 0.5)
        return np.repeat(level[..., None], 3, axis=2).astype(np.float32)
    # Wooden planks: horizontal boards in slightly different browns, dark seams between them,
    # and a faint grain along each board.
    plank = short * (0.12 + 0.08 * u[0])
    index = np.floor(yy / plank + u[1]).astype(np.int64)
    shades = 0.85 + 0.25 * rng.random(int(height / plank) + 3)
    brightness = shades[index - index.min()]
    grain = 1 + 0.05 * np.sin(xx * (0.35 + 0.3 * u[2]) / short * 64 + index * 1.7)
    seam = np.where(np.mod(yy / plank + u[1], 1.0) * plank < max(1.0, short / 64), 0.6, 1.0)
    wood = np.array([150.0, 104.0, 64.0], dtype=np.float32)
    return (wood * (brightness * grain * seam)[..., None]).astype(np.float32)
