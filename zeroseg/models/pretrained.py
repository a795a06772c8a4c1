"""Trained students on any storage: :func:`create_student` reads a run's ``final/`` folder
(layout in :mod:`zeroseg.checkpoint`) from a local path or any fsspec URI."""

from __future__ import annotations

from typing import Any

from zeroseg import storage
from zeroseg.checkpoint import CONFIG, WEIGHTS, check_weight_bytes, final_folder
from zeroseg.student_config import StudentConfig

from .registry import build_student
from .student import Student


def create_student(
    name_or_config: str | dict[str, Any] | StudentConfig | None = None,
    *,
    pretrained: str | None = None,
    embed_dim: int | None = None,
    **overrides: Any,
) -> Student:
    """A student from a preset name, a config dict or a :class:`StudentConfig`, optionally with
    a trained run's weights.

    ``pretrained`` is a ``final/`` folder or its ``model.safetensors`` on any fsspec URI. Its
    ``config.json`` supplies the architecture and ``embed_dim`` when they are not given, so
    ``create_student(pretrained=uri)`` rebuilds exactly the trained net, its target centre
    included; a weights file without a ``config.json`` beside it needs both. A pretrained
    student comes back in eval mode, a fresh one as built (train mode).
    """
    return load_pretrained(name_or_config, pretrained, embed_dim, **overrides)[0]


def load_pretrained(
    name_or_config: str | dict[str, Any] | StudentConfig | None,
    pretrained: str | None,
    embed_dim: int | None = None,
    **overrides: Any,
) -> tuple[Student, dict[str, Any] | None]:
    """:func:`create_student` plus the run's ``config.json`` (None without one), read once:
    readers such as the segmenter need the run's teacher and views as well as its weights."""
    if pretrained is None:
        if name_or_config is None or embed_dim is None:
            raise ValueError("create_student: give a preset name or config and embed_dim")
        return build_student(name_or_config, embed_dim, **overrides), None

    import torch
    from safetensors.torch import load as st_load

    folder = final_folder(pretrained)
    config_uri = storage.join(folder, CONFIG)
    saved = storage.read_json(config_uri) if storage.exists(config_uri) else None
    if saved is None and (name_or_config is None or embed_dim is None):
        raise FileNotFoundError(
            f"no {CONFIG} beside the weights in {folder}: give the student's config and "
            "embed_dim, or point at a finished run's final/ folder"
        )
    arch = name_or_config if name_or_config is not None else saved["student"]
    dim = embed_dim if embed_dim is not None else int(saved["embed_dim"])
    model = build_student(arch, dim, **overrides)
    weights = storage.join(folder, WEIGHTS)
    data = storage.read_bytes(weights)
    check_weight_bytes(data, weights)  # a damaged file is named with its reason, not a traceback
    model.load_state_dict(st_load(data))
    center = saved.get("target_center") if saved else None
    if center is not None:
        model.set_target_center(torch.tensor(center))
    model.eval()
    return model, saved
