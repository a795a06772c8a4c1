"""Which teacher checkpoint a run uses, and the once-only toy-teacher pretraining.

A user names an open_clip architecture plus a pretrained tag/path/URI. With the project's toy
architecture and no checkpoint, the toy teacher is trained once on the shapes world and cached
under ``teacher.cache_dir`` keyed by its recipe, so later runs (and other storage roots) reuse it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from zeroseg.config import Config

from . import storage
from .runner import code_version, fingerprint, now

TOY_MODEL = "zeroseg-toyclip"


def toy_teacher_dir(cfg: Config) -> str:
    from zeroseg import toy_teacher

    recipe = {
        "recipe": getattr(toy_teacher, "RECIPE_VERSION", 1),
        "seconds": cfg.teacher.pretrain_seconds,
        "seed": cfg.teacher.pretrain_seed,
        "overrides": dict(cfg.teacher.pretrain_overrides),
    }
    return storage.join(cfg.teacher.cache_dir, f"{TOY_MODEL}-{fingerprint(recipe)}")


def pretrain_toy_teacher(cfg: Config, force: bool = False, log=print) -> dict[str, Any]:
    """Train (or reuse) the cached toy teacher; returns its checkpoint URI and accuracy."""
    from zeroseg import toy_teacher

    out_dir = toy_teacher_dir(cfg)
    ckpt = storage.join(out_dir, "model.pt")
    info_uri = storage.join(out_dir, "teacher.json")
    if not force and storage.exists(info_uri) and storage.exists(ckpt):
        info = storage.read_json(info_uri)
        log(
            f"[teacher] cached toy teacher {ckpt} (single {info['accuracy']['single']:.1%}, "
            f"cell {info['accuracy']['cell']:.1%})"
        )
        return info
    storage.makedirs(out_dir)
    settings = toy_teacher.ToyTeacherSettings(
        seconds=cfg.teacher.pretrain_seconds,
        seed=cfg.teacher.pretrain_seed,
        **dict(cfg.teacher.pretrain_overrides),
    )
    log(
        f"[teacher] pretraining the toy CLIP teacher for about {settings.seconds:.0f} s "
        f"(once; cached in {out_dir})"
    )
    local_ckpt = (
        ckpt
        if storage.is_local(ckpt)
        else os.path.join(tempfile.gettempdir(), f"zeroseg-toy-{os.getpid()}.pt")
    )
    result = toy_teacher.pretrain(local_ckpt, settings, progress=True, log=log)
    if local_ckpt != ckpt:
        with open(local_ckpt, "rb") as f:
            storage.write_bytes(ckpt, f.read())
        os.remove(local_ckpt)
    info = {
        "model": TOY_MODEL,
        "pretrained": ckpt,
        "accuracy": {"single": float(result["single"]), "cell": float(result["cell"])},
        "seconds": float(result["seconds"]),
        "steps": int(result["steps"]),
        "settings": {"seconds": settings.seconds, "seed": settings.seed},
        "created_at": now(),
        "code": code_version(),
    }
    storage.write_json(info_uri, info)
    log(
        f"[teacher] zero-shot shape accuracy: single {info['accuracy']['single']:.1%}, "
        f"cell {info['accuracy']['cell']:.1%} ({info['seconds']:.0f} s)"
    )
    return info


def resolve_teacher(cfg: Config, log=print) -> dict[str, Any]:
    """``{"model", "pretrained", "accuracy"?}`` for the configured teacher (no Ray needed)."""
    if cfg.teacher.pretrained:
        return {"model": cfg.teacher.model, "pretrained": cfg.teacher.pretrained}
    if cfg.teacher.model == TOY_MODEL:
        return pretrain_toy_teacher(cfg, log=log)
    raise ValueError(
        "teacher.pretrained is empty: give an open_clip pretrained tag, a local checkpoint or an "
        f"fsspec URI for teacher.model={cfg.teacher.model!r} (random weights are never used "
        "silently)"
    )


def teacher_identity(teacher: dict[str, Any]) -> dict[str, Any]:
    """What of a teacher changes its embeddings: name, checkpoint and the file's identity."""
    ident = {"model": teacher["model"], "pretrained": teacher["pretrained"]}
    pre = teacher["pretrained"]
    if pre and ("/" in pre or pre.endswith((".pt", ".bin", ".safetensors"))):
        try:
            ident["file"] = storage.file_signature(pre)
        except FileNotFoundError:
            raise FileNotFoundError(f"teacher checkpoint not found: {pre}") from None
    return ident
