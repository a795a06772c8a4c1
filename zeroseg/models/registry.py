"""Named student presets, open_clip style: JSON files in ``zeroseg/model_configs``.

A preset is a JSON dict in the four groups of :data:`STUDENT_LAYOUT` (``stem``, ``encoder``,
``decoder``, ``head``); a flat dict of :class:`StudentConfig` fields reads the same. Checkpoints
store the resolved flat dict (``final/config.json``), so ``build_student(saved_dict, embed_dim)``
rebuilds the exact net, whichever form the dict is in.
"""

from __future__ import annotations

from typing import Any

from zeroseg.student_config import (
    StudentConfig,
    flat_student_config,
    student_config,
)

from .student import Student


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
