"""Where the package keeps the toy teacher it ships (weights and the record of how they were
made). Kept apart from the training code so that finding the teacher imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

TOY_MODEL = "zeroseg-toyclip"
ASSET_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_WEIGHTS = ASSET_DIR / f"{TOY_MODEL}.safetensors"
SHIPPED_RECORD = ASSET_DIR / f"{TOY_MODEL}.json"
