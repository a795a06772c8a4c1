"""Pinned evaluation protocols, one JSON file per benchmark in ``zeroseg/protocol_configs``.

A protocol fixes what the published numbers depend on: how pixels become background (the
paper's per-benchmark softmax thresholds, or a rule chosen on a validation split for worlds
without a published one), the short-side resize and the sliding window. Pinning them in files
keeps a benchmark's score comparable across runs and releases; ``metrics.json`` stores the
resolved protocol next to the numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocol_configs"
TUNE_ON_VAL = "tune_on_val"
# ``eval.protocol`` may name a family instead of a file: each benchmark then takes its own file
# of that family (``voc`` / ``voc_sclip`` ...). "paper" is ZeroSeg's (GroupViT's) protocol;
# "sclip" the training-free segmenters' (SCLIP, ClearCLIP, NACLIP).
FAMILIES = ("paper", "sclip")
# named prompt-template sets a protocol may ask for ("" = the job's teacher.templates)
TEMPLATE_SETS = ("openai_imagenet",)


@dataclass(frozen=True)
class Protocol:
    name: str
    background: str  # a background rule ("threshold:0.95", "prompt", ...) or "tune_on_val"
    short_side: int = 0  # resize the image's short side to this (0 = the student's input size)
    window: int = 0  # sliding-window side (0 = the short side)
    stride: int = 0  # sliding-window stride (0 = the window)
    prob_scale: float = 100.0
    description: str = ""
    family: str = "paper"
    # class names with synonyms (zeroseg/protocol_configs/classes/<name>.txt); "" = the
    # benchmark's own names, one each
    class_file: str = ""
    templates: str = ""  # one of TEMPLATE_SETS, or "" for the job's teacher.templates
    # the teacher's dense read-outs slide the same windows over the same short side as the
    # student (else they see the whole image at the teacher's input size)
    teacher_windows: bool = False

    @property
    def tuned_on_val(self) -> bool:
        return self.background == TUNE_ON_VAL

    def resolved(self, input_size: int) -> Protocol:
        """Fill the zero sizes from the student's input size."""
        short = self.short_side or input_size
        window = self.window or short
        return replace(self, short_side=short, window=window, stride=self.stride or window)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json"))


def protocol_file(setting: str, benchmark: str) -> str:
    """The pinned file a benchmark uses under ``eval.protocol = setting``: a family's file for
    the benchmark (``""`` = "paper": the benchmark's own name), or the file ``setting`` names."""
    if setting in ("", "paper"):
        return benchmark
    if setting in FAMILIES:
        return f"{benchmark}_{setting}"
    return setting


def template_set(name: str) -> list[str]:
    """A named prompt-template set as ``{}`` format strings. ``openai_imagenet``: the 80
    ImageNet templates of CLIP's zero-shot evaluation, as open_clip ships them."""
    if name == "openai_imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    raise KeyError(f"unknown template set {name!r}; known: {list(TEMPLATE_SETS)}")


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
    if proto.family not in FAMILIES:
        raise ValueError(f"protocol {name!r}: family {proto.family!r} not in {FAMILIES}")
    if proto.templates and proto.templates not in TEMPLATE_SETS:
        raise ValueError(f"protocol {name!r}: unknown template set {proto.templates!r}")
    if proto.class_file:
        from .class_files import list_class_files

        if proto.class_file not in list_class_files():
            raise ValueError(f"protocol {name!r}: no class file {proto.class_file!r}")
    return proto
