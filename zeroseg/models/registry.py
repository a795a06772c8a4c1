"""Named student presets, open_clip style: JSON files in ``zeroseg/model_configs``.

A preset is a plain JSON dict of :class:`StudentConfig` fields. Checkpoints store the resolved
dict (``final/config.json``), so ``build_student(saved_dict, embed_dim)`` rebuilds the exact net.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .student import Student, StudentConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_PREFIXES = ("student-", "zeroseg-")


def _preset_paths() -> dict[str, Path]:
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.stem.startswith(_PREFIXES) and _is_student_json(path):
            out[path.stem] = path
    return out


def _is_student_json(path: Path) -> bool:
    # The same folder holds open_clip architectures (teacher configs); keep only ours.
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "patch_size" in data and "num_groups" in data


def list_students() -> list[str]:
    """Names of the shipped student presets."""
    return sorted(_preset_paths())


def student_config(name: str) -> dict[str, Any]:
    """The full resolved config dict of a preset (defaults filled in)."""
    paths = _preset_paths()
    if name not in paths:
        raise KeyError(f"unknown student preset {name!r}; known: {sorted(paths)}")
    raw = json.loads(paths[name].read_text())
    return StudentConfig.from_dict(raw).to_dict()


def build_student(
    name_or_cfg: str | dict[str, Any] | StudentConfig, embed_dim: int, **overrides: Any
) -> Student:
    """Build a student from a preset name, a config dict (e.g. a saved ``config.json``) or a
    :class:`StudentConfig`; ``overrides`` replace individual fields."""
    if isinstance(name_or_cfg, str):
        cfg = student_config(name_or_cfg)
    elif isinstance(name_or_cfg, StudentConfig):
        cfg = name_or_cfg.to_dict()
    else:
        cfg = dict(name_or_cfg)
    cfg.update(overrides)
    return Student(StudentConfig.from_dict(cfg), embed_dim)
