"""The toy models the package ships: the teacher's weights and the small toy CLIP's image tower
(the default student init), the records of how they were made, and the ``"shipped"`` name every
stage uses for them. Kept apart from the training code so that finding (and checking) them
imports nothing heavy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TOY_MODEL = "zeroseg-toyclip"
# Toy CLIP architectures `teacher-pretrain` trains: the teacher's, and one whose image tower
# has 3 blocks instead of 5 (a label-free student init smaller than the teacher, as CLIP
# ViT-B/16 is under a ViT-L/14 teacher).
SMALL_TOY_MODEL = "zeroseg-toyclip-small"
TOY_MODELS = (TOY_MODEL, SMALL_TOY_MODEL)
# teacher.pretrained / student.init value naming the packaged weights, wherever installed
SHIPPED = "shipped"
ASSET_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_WEIGHTS = ASSET_DIR / f"{TOY_MODEL}.safetensors"
SHIPPED_RECORD = ASSET_DIR / f"{TOY_MODEL}.json"
# Only the small CLIP's image tower ships (`visual.*`, fp16, 1.3 MB): a student needs no more.
SHIPPED_INIT_WEIGHTS = ASSET_DIR / f"{SMALL_TOY_MODEL}-tower.safetensors"
SHIPPED_INIT_RECORD = ASSET_DIR / f"{SMALL_TOY_MODEL}-tower.json"


class ShippedAssetError(RuntimeError):
    """A packaged toy model is missing or is not the file its record describes."""


def _record(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_record() -> dict[str, Any] | None:
    """The packaged teacher's record (recipe, accuracies, curve, sha256), or None."""
    return _record(SHIPPED_RECORD)


def shipped_init_record() -> dict[str, Any] | None:
    """The packaged student init's record (the small CLIP's recipe, accuracies, sha256)."""
    return _record(SHIPPED_INIT_RECORD)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _verified(weights: Path, record: dict[str, Any] | None, what: str, rebuild: str) -> str:
    """``weights`` after checking them against ``record``: a damaged or placeholder file (e.g.
    a Git LFS pointer) must never be used in their place."""
    if record is None or not weights.is_file():
        raise ShippedAssetError(
            f"the packaged {what} ({weights} and its record) is missing; reinstall the "
            f"package or rebuild it with {rebuild}"
        )
    digest = sha256_file(weights)
    if digest != record["sha256"]:
        raise ShippedAssetError(
            f"{weights} is not the shipped {what} (sha256 {digest[:12]}..., expected "
            f"{record['sha256'][:12]}...); reinstall the package or rebuild it with {rebuild}"
        )
    return str(weights)


def verified_shipped_weights(record: dict[str, Any] | None = None) -> str:
    """Path of the packaged teacher weights, checked against their record."""
    return _verified(
        SHIPPED_WEIGHTS, record or shipped_record(), "toy teacher", "`zeroseg teacher-pretrain`"
    )


def verified_shipped_init(record: dict[str, Any] | None = None) -> str:
    """Path of the packaged student init (the small toy CLIP's image tower), checked."""
    return _verified(
        SHIPPED_INIT_WEIGHTS,
        record or shipped_init_record(),
        "student init",
        "`python -m pipeline.ship_init`",
    )
