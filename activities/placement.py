"""Where a loaded model's parts live: on the accelerator, in host memory, or moved in for use.

A GPU worker that is short of memory keeps the parts it needs least often in host RAM:

- the text encoder (UMT5-XXL, about 11 GB in bfloat16) runs once per job, in `prepare`. It may
  stay on the accelerator (`DEVICE`), live in host memory and move in only to encode
  (`OFFLOAD`), or run on the CPU (`CPU`, which frees the accelerator of it altogether);
- of a two-expert model (Wan2.2 A14B, two 14B transformers) only one expert runs at a time. With
  `offload_experts` the other waits in host memory and the two swap at the boundary step (and
  back at the next job's first step).

Moves copy tensors exactly, so `DEVICE`, `OFFLOAD` and `offload_experts` compute the same bits
(they trade transfer time for memory). `CPU` runs the encoder's kernels on another device, so its
prompt embeddings differ in the last bits from the accelerator's: a fleet serving one model
should use one text-encoder placement, as it uses one GPU type. Resumes are exact either way,
since checkpoints carry the prompt embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from videogen.settings import TextEncoderPlacement

HOST = "cpu"


class Movable(Protocol):
    """What placement needs of a module (torch.nn.Module has it)."""

    def to(self, device: str) -> object: ...


@dataclass(frozen=True)
class Placement:
    """A worker's memory plan for its model; the default keeps everything on the device."""

    text_encoder: TextEncoderPlacement = TextEncoderPlacement.DEVICE
    offload_experts: bool = False

    def describe(self) -> str:
        experts = ", inactive expert in host memory" if self.offload_experts else ""
        return f"text encoder {self.text_encoder.value}{experts}"

    def text_encoder_home(self, device: str) -> str:
        """Where the text encoder stays between jobs."""
        return device if self.text_encoder is TextEncoderPlacement.DEVICE else HOST

    def text_encoder_runs_on(self, device: str) -> str:
        """Where the text encoder computes."""
        return HOST if self.text_encoder is TextEncoderPlacement.CPU else device


class Placed:
    """A loaded model's parts and where each one is now, moved only through this object."""

    def __init__(self, parts: dict[str, Movable | None], device: str, plan: Placement) -> None:
        """Move freshly loaded parts (named as WanPipeline names them) to where they stay
        between jobs. The low-noise expert starts in host memory when experts are offloaded,
        since every job starts with the high-noise one."""
        self.device = device
        self.plan = plan
        self._parts = {name: part for name, part in parts.items() if part is not None}
        self.where: dict[str, str] = {}
        self.rehome(plan)

    def rehome(self, plan: Placement) -> None:
        """Follow `plan` from now on, every part moved to where it keeps it between jobs."""
        self.plan = plan
        for name in self._parts:
            self._move(name, self._home(name))

    def park(self) -> None:
        """Every part to host memory: the model stays loaded but leaves the device to another
        (a GPU worker switching models); `rehome` brings it back."""
        for name in self._parts:
            self._move(name, HOST)

    def _home(self, name: str) -> str:
        if name == "text_encoder":
            return self.plan.text_encoder_home(self.device)
        if name == "transformer_2" and self.plan.offload_experts:
            return HOST
        return self.device

    def _move(self, name: str, to: str) -> None:
        if self.where.get(name) != to:
            self._parts[name].to(to)
            self.where[name] = to

    @contextmanager
    def text_encoder_in_use(self) -> Iterator[torch.device]:
        """The device to encode on, with the encoder there for the duration (moved in, and
        back out when it is offloaded, also when encoding fails)."""
        runs_on = self.plan.text_encoder_runs_on(self.device)
        self._move("text_encoder", runs_on)
        try:
            yield torch.device(runs_on)
        finally:
            self._move("text_encoder", self.plan.text_encoder_home(self.device))

    def activate_expert(self, active: str) -> bool:
        """Have expert `active` ('transformer' or 'transformer_2') on the device, the other in
        host memory when experts are offloaded; True if anything moved. The inactive one leaves
        first, so the device never holds both."""
        if not self.plan.offload_experts:
            return False
        before = dict(self.where)
        for name in ("transformer", "transformer_2"):
            if name != active and name in self._parts:
                self._move(name, HOST)
        self._move(active, self.device)
        return self.where != before
