"""``zeroseg segment``: label any images with free-form class names."""

from __future__ import annotations

import io
import os

import numpy as np


def segment_images(
    images: list[str],
    classes: str,
    checkpoint: str,
    out_dir: str,
    background: str = "prompt",
    save_labels: bool = False,
) -> int:
    """Overlay PNG (and optionally an int label map) per image; bad images are reported and
    skipped, the batch goes on. Returns 1 when any image failed, else 0."""
    from tqdm import tqdm

    from zeroseg.images import BadImage, decode_image
    from zeroseg.overlay import panel
    from zeroseg.predict import apply_rule, parse_rule, student_cosines, text_embeddings
    from zeroseg.teacher import Teacher

    from . import storage
    from .train import load_student

    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise ValueError("--classes is empty: give comma-separated class names")
    parse_rule(background)
    student, info = load_student(checkpoint)
    t = info["teacher"]
    teacher = Teacher(
        t["model"], t["pretrained"] or None, normalize=info.get("teacher_normalize", True)
    )
    text = text_embeddings(teacher, names, info.get("templates") or ["a photo of a {}."])
    size = int(info["views"]["crop_size"])
    storage.makedirs(out_dir)
    failures = 0
    for uri in tqdm(images, desc="segment", unit="img"):
        stem = os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]
        try:
            image = np.asarray(decode_image(storage.read_bytes(uri), min_side=1))
        except (BadImage, OSError) as exc:
            print(f"zeroseg segment: skipping {uri}: {exc}")
            failures += 1
            continue
        cos = student_cosines(student, image, text, size)
        labels = apply_rule(cos, background, image.shape[:2])
        buf = io.BytesIO()
        scale = max(1, 256 // max(image.shape[:2]))
        panel(image, [("segments", labels)], ["background", *names], scale=scale).save(buf, "PNG")
        storage.write_bytes(storage.join(out_dir, f"{stem}.png"), buf.getvalue())
        if save_labels:
            npy = io.BytesIO()
            np.save(npy, labels.astype(np.int32))
            storage.write_bytes(storage.join(out_dir, f"{stem}.npy"), npy.getvalue())
    print(
        f"wrote {len(images) - failures} overlay(s) to {out_dir}"
        + (f"; {failures} image(s) could not be read" if failures else "")
    )
    return 1 if failures else 0
