"""Pinned evaluation protocols, one JSON file per benchmark in ``zeroseg/protocol_configs``.

A protocol fixes what the published numbers depend on: how pixels become background (the
paper's per-benchmark softmax thresholds, or a rule chosen on a validation split for worlds
without a published one), the short-side resize and the sliding window. Pinning them in files
keeps a benchmark's score comparable across runs and releases; ``metrics.json`` stores the
resolved protocol next to the numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocol_configs"
TUNE_ON_VAL = "tune_on_val"


@dataclass(frozen=True)
class Protocol:
    name: str
    background: str  # a background rule ("threshold:0.95", "prompt", ...) or "tune_on_val"
    short_side: int = 0  # resize the image's short side to this (0 = the student's input size)
    window: int = 0  # sliding-window side (0 = the short side)
    stride: int = 0  # sliding-window stride (0 = the window)
    prob_scale: float = 100.0
    description: str = ""

    @property
    def tuned_on_val(self) -> bool:
        return self.background == TUNE_ON_VAL

    def resolved(self, input_size: int) -> Protocol:
        """Fill the zero sizes from the student's input size."""
        short = self.short_side or input_size
        window = self.window or short
        return Protocol(
            self.name,
            self.background,
            short,
            window,
            self.stride or window,
            self.prob_scale,
            self.description,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json"))


def load_protocol(name: str) -> Protocol:
    """The pinned protocol ``name``; a clear error lists the known ones."""
    path = PROTOCOL_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown evaluation protocol {name!r}; known: {list_protocols()}")
    proto = Protocol(**json.loads(path.read_text()))
    if not proto.tuned_on_val:
        from .predict import parse_rule

        parse_rule(proto.background)  # fail on a malformed pinned rule
    if min(proto.short_side, proto.window, proto.stride) < 0:
        raise ValueError(f"protocol {name!r}: sizes must be >= 0")
    return proto
