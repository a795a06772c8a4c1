"""The toy teacher the package ships: its weights, the record of how they were made, and the
``pretrained="shipped"`` name every stage uses for it. Kept apart from the training code so
that finding (and checking) the teacher imports nothing heavy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TOY_MODEL = "zeroseg-toyclip"
# Toy CLIP architectures `teacher-pretrain` trains: the teacher's, and one whose image tower
# has 3 blocks instead of 5 (a label-free student init smaller than the teacher, as CLIP
# ViT-B/16 is under a ViT-L/14 teacher; only the teacher's weights ship).
TOY_MODELS = (TOY_MODEL, "zeroseg-toyclip-small")
SHIPPED = "shipped"  # teacher.pretrained value naming the packaged weights, wherever installed
ASSET_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_WEIGHTS = ASSET_DIR / f"{TOY_MODEL}.safetensors"
SHIPPED_RECORD = ASSET_DIR / f"{TOY_MODEL}.json"


class ShippedTeacherError(RuntimeError):
    """The packaged toy teacher is missing or is not the file its record describes."""


def shipped_record() -> dict[str, Any] | None:
    """The packaged teacher's record (recipe, accuracies, curve, sha256), or None."""
    if not SHIPPED_RECORD.is_file():
        return None
    return json.loads(SHIPPED_RECORD.read_text())


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verified_shipped_weights(record: dict[str, Any] | None = None) -> str:
    """Path of the packaged weights after checking them against their record: a damaged or
    placeholder file (e.g. a Git LFS pointer) must never be used as the teacher."""
    record = record or shipped_record()
    if record is None or not SHIPPED_WEIGHTS.is_file():
        raise ShippedTeacherError(
            f"the packaged toy teacher ({SHIPPED_WEIGHTS} and its record) is missing; "
            "reinstall the package or rebuild it with `zeroseg teacher-pretrain`"
        )
    digest = sha256_file(SHIPPED_WEIGHTS)
    if digest != record["sha256"]:
        raise ShippedTeacherError(
            f"{SHIPPED_WEIGHTS} is not the shipped toy teacher (sha256 {digest[:12]}..., "
            f"expected {record['sha256'][:12]}...); reinstall the package or rebuild it with "
            "`zeroseg teacher-pretrain`"
        )
    return str(SHIPPED_WEIGHTS)
