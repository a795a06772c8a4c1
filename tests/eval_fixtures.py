"""Small real inputs for evaluation tests and benches: a random-weight student checkpoint in
the ``final/`` format, and a tiny PASCAL VOC 2012 tree in the public layout."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from zeroseg.overlay import palette


def write_random_checkpoint(final_dir: str, crop_size: int = 32, seed: int = 0) -> str:
    """A ``final/`` folder (weights + config.json) of an untrained tiny student whose teacher is
    the toy CLIP with random weights: real models, no training, nothing downloaded. The teacher's
    random weights are saved too (``teacher.pt``), so every task scores with the same teacher."""
    import torch
    from safetensors.torch import save_file

    from pipeline.train import teacher_embed_dim
    from zeroseg.models import build_student
    from zeroseg.teacher import load_teacher_model

    torch.manual_seed(seed)
    dim = teacher_embed_dim("zeroseg-toyclip")
    model = build_student("student-tiny", embed_dim=dim)
    os.makedirs(final_dir, exist_ok=True)
    teacher_path = os.path.join(final_dir, "teacher.pt")
    torch.save(load_teacher_model("zeroseg-toyclip")[0].state_dict(), teacher_path)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        os.path.join(final_dir, "model.safetensors"),
    )
    with open(os.path.join(final_dir, "config.json"), "w") as f:
        json.dump(
            {
                "student": "student-tiny",
                "embed_dim": dim,
                "teacher": {"model": "zeroseg-toyclip", "pretrained": teacher_path},
                "teacher_normalize": True,
                "templates": ["a photo of a {}."],
                "views": {"levels": [1, 2, 3, 4], "crop_size": crop_size},
            },
            f,
        )
    return final_dir


def write_voc(root: str, n: int = 3, size: tuple[int, int] = (24, 32), seed: int = 0) -> list[str]:
    """``root/VOCdevkit/VOC2012`` with ``n`` val images: JPEGs, palette-PNG labels (one class
    rectangle, an ignore border) and ``ImageSets/Segmentation/val.txt``."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    h, w = size
    for i, sid in enumerate(ids):
        image = rng.integers(0, 255, (h, w, 3), np.uint8)
        Image.fromarray(image).save(os.path.join(base, "JPEGImages", f"{sid}.jpg"))
        labels = np.zeros((h, w), np.uint8)
        labels[h // 4 : 3 * h // 4, w // 4 : w // 2 + i] = 1 + (i * 7) % 20
        labels[:, -1] = 255
        im = Image.fromarray(labels, mode="P")
        im.putpalette([int(v) for v in palette(256).ravel()])
        im.save(os.path.join(base, "SegmentationClass", f"{sid}.png"))
    with open(os.path.join(base, "ImageSets/Segmentation/val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids
