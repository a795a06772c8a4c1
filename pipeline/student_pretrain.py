"""student-pretrain: a label-free initialisation for the student's encoder (MAE on data.train).

Reads the training images (any input ``data.train`` names: a folder, tars, lists, on any fsspec
URI), centre-crops them to the student's input as extraction does, runs
:func:`zeroseg.mae_pretrain.mae_pretrain` and writes ``encoder.safetensors`` (timm / MAE names,
the recipe in its header) and ``pretrain.json`` (recipe, loss curve) to the output folder;
``student.init=<out>/encoder.safetensors`` then starts a student from it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from zeroseg import storage
from zeroseg.config import Config
from zeroseg.images import BadImage, decode_image
from zeroseg.views import center_crop

from .inputs import plan_inputs, read_input

ENCODER = "encoder.safetensors"
# The images are held in memory as uint8 for the whole run: refuse, before reading any, a
# training set that would not fit (a lab world of 1500 64-px scenes is 18 MB).
MAX_IMAGE_BYTES = 4 << 30
RECORD = "pretrain.json"


def load_training_images(
    uri: str, size: int, log=print, max_bytes: int = MAX_IMAGE_BYTES
) -> np.ndarray:
    """(N, 3, size, size) uint8 of every usable image; unusable ones are counted by reason."""
    plan = plan_inputs(uri)
    need = len(plan.keys) * 3 * size * size
    if need > max_bytes:
        raise SystemExit(
            f"data.train={uri}: {len(plan.keys)} images at {size} px are {need / 2**30:.1f} GiB "
            f"in memory, above student-pretrain's {max_bytes / 2**30:.0f} GiB; point data.train "
            "at a subset (a list file of URIs works)"
        )
    images, skipped = [], Counter()
    for key, span in zip(plan.keys, plan.spans):
        try:
            images.append(center_crop(decode_image(read_input(key, span)), size))
        except BadImage as exc:
            skipped[exc.reason] += 1
    if skipped:
        log(f"[student-pretrain] skipped {sum(skipped.values())} images: {dict(skipped)}")
    if not images:
        raise SystemExit(f"data.train={uri}: no usable images")
    return np.stack(images).transpose(0, 3, 1, 2).copy()


def pretrain_student(cfg: Config, out: str, settings: Any, log=print) -> dict[str, Any]:
    """MAE-pretrain the config's student architecture on ``data.train``; returns the record."""
    import torch
    from safetensors.torch import save

    from zeroseg.mae_pretrain import mae_pretrain, recipe_metadata

    from .run import ensure_world
    from .train import student_config

    student = student_config(cfg)
    if student.get("stem", "patch") != "patch":
        raise SystemExit(
            "student-pretrain trains a ViT patch embedding; the student's stem is "
            f"{student['stem']!r}: set student.overrides.stem.kind=patch"
        )
    ensure_world(cfg, log)
    t0 = time.perf_counter()
    size = int(student.get("image_size", 224))
    images = torch.from_numpy(load_training_images(cfg.data.train, size, log))
    log(f"[student-pretrain] {len(images)} images of {cfg.data.train} at {size} px")
    state, record = mae_pretrain(
        images, student, settings, log=lambda m: log(f"[student-pretrain] {m}")
    )
    record["data"] = cfg.data.train
    record["seconds"] = round(time.perf_counter() - t0, 1)  # reported, never used
    storage.write_bytes(storage.join(out, ENCODER), save(state, metadata=recipe_metadata(record)))
    storage.write_json(storage.join(out, RECORD), record)
    log(
        f"[student-pretrain] -> {storage.join(out, ENCODER)}; start a student from it with "
        f"student.init={storage.join(out, ENCODER)}"
    )
    return record
