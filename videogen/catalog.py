"""What each model can generate: sizes, lengths, step defaults.

The API validates requests against these specs before a workflow is started, so this module
must stay light (no torch, no diffusers): the API process never loads a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TINY_MODEL = "videogen-tiny"
# Limits of every model, whatever its spec: the API's schema, the spec default and the
# pipeline's own check all read these. Seeds are signed 64-bit (JSON clients and Temporal's
# payloads carry them exactly).
MAX_STEPS = 500
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ModelSpec:
    """Limits of one model, as the API and the GPU worker both see them."""

    name: str
    fps: int
    sizes: tuple[str, ...]
    default_size: str
    seconds: tuple[int, ...]
    default_seconds: int
    default_steps: int
    max_steps: int = MAX_STEPS
    guidance_scale: float = 5.0
    # Local diffusers directory; None for the built-in tiny model.
    path: str | None = None

    def num_frames(self, seconds: int) -> int:
        """Frames for a clip of `seconds`: Wan's VAE wants 4k+1 frames, fps is a multiple of 4."""
        return seconds * self.fps + 1

    @staticmethod
    def parse_size(size: str) -> tuple[int, int]:
        """'WxH' -> (width, height)."""
        w, h = size.lower().split("x")
        return int(w), int(h)


# The built-in model: Wan architecture, tiny, random weights seeded in code. A default job
# (256x256, 2 s, 20 steps) visibly progresses for a few seconds on a 2-core CPU.
TINY_SPEC = ModelSpec(
    name=TINY_MODEL,
    fps=8,
    sizes=("64x64", "128x128", "256x256", "256x144", "144x256"),
    default_size="256x256",
    seconds=(1, 2, 3, 4),
    default_seconds=2,
    default_steps=20,
)

# Wan2.1 text-to-video in diffusers format, loaded from a local directory on a GPU host.
WAN_SIZES = ("832x480", "480x832", "1280x720", "720x1280")


def spec_for_path(path: str, name: str | None = None) -> ModelSpec:
    """Spec for a local diffusers Wan directory (e.g. Wan2.1-T2V-1.3B-Diffusers)."""
    return ModelSpec(
        name=name or os.path.basename(os.path.normpath(path)),
        fps=16,
        sizes=WAN_SIZES,
        default_size="832x480",
        seconds=(1, 2, 3, 4, 5),
        default_seconds=5,
        default_steps=50,
        path=path,
    )


def resolve(model: str | None, model_name: str | None = None) -> ModelSpec:
    """Spec for a `VIDEOGEN_MODEL` value: empty or the tiny name -> tiny, else a local directory."""
    if not model or model == TINY_MODEL:
        return TINY_SPEC
    return spec_for_path(model, model_name)
