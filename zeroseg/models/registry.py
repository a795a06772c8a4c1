"""Named student presets, open_clip style: JSON files in ``zeroseg/model_configs``.

A preset is a JSON dict in the four groups of :data:`STUDENT_LAYOUT` (``stem``, ``encoder``,
``decoder``, ``head``); a flat dict of :class:`StudentConfig` fields reads the same. Checkpoints
store the resolved flat dict (``final/config.json``), so ``build_student(saved_dict, embed_dim)``
rebuilds the exact net, whichever form the dict is in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .student import Student, StudentConfig, flat_student_config

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
    if not isinstance(data, dict):
        return False
    try:
        flat = flat_student_config(data)
    except (KeyError, ValueError):  # e.g. an open_clip config's embed_dim / vision_cfg
        return False
    return "patch_size" in flat and "num_groups" in flat


def list_students() -> list[str]:
    """Names of the shipped student presets."""
    return sorted(_preset_paths())


def student_config(name: str) -> dict[str, Any]:
    """The full resolved config dict of a preset (defaults filled in), flat: the form runs save
    and the train stage merges ``student.overrides`` into (``StudentConfig.to_nested_dict`` or
    :func:`nested_student_config` give the grouped view)."""
    paths = _preset_paths()
    if name not in paths:
        raise KeyError(f"unknown student preset {name!r}; known: {sorted(paths)}")
    raw = json.loads(paths[name].read_text())
    return StudentConfig.from_dict(raw).to_dict()


def build_student(
    name_or_cfg: str | dict[str, Any] | StudentConfig, embed_dim: int, **overrides: Any
) -> Student:
    """Build a student from a preset name, a config dict (flat or nested, e.g. a saved
    ``config.json``) or a :class:`StudentConfig`; ``overrides`` replace individual fields, in
    either spelling (``depth=6`` or ``encoder={"depth": 6}``)."""
    if isinstance(name_or_cfg, str):
        cfg = student_config(name_or_cfg)
    elif isinstance(name_or_cfg, StudentConfig):
        cfg = name_or_cfg.to_dict()
    else:
        cfg = flat_student_config(name_or_cfg)
    cfg.update(flat_student_config(overrides))
    return Student(StudentConfig.from_dict(cfg), embed_dim)
