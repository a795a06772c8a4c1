"""``zeroseg segment``: label any images with free-form class names.

Inputs may be files, globs or folders / URL prefixes on any fsspec storage; each image gets an
overlay PNG with a legend and, on request, its label map. An image that cannot be read is
recorded with its reason and the batch goes on; the reasons are summarised at the end and kept
in ``failures.json`` beside the outputs.
"""

from __future__ import annotations

import io
import os
from collections import Counter

import numpy as np

from zeroseg import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def expand_inputs(items: list[str]) -> list[str]:
    """Files stay as given; globs expand; folders / prefixes list their images recursively.
    A name that matches nothing is kept, so it is reported as unreadable like any bad file."""
    out: list[str] = []
    for item in items:
        if any(c in item for c in "*?["):
            fs, path = storage.fs_and_path(item)
            matches = sorted(fs.glob(path))
            protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
            prefix = "" if storage.is_local(item) else f"{protocol}://"
            out += [prefix + m for m in matches if m.lower().endswith(IMAGE_EXTENSIONS)]
            continue
        fs, path = storage.fs_and_path(item)
        if item.endswith("/") or fs.isdir(path):
            out += storage.list_files(item, IMAGE_EXTENSIONS)
        else:
            out.append(item)
    return out


def parse_classes(classes: str | None, classes_file: str | None) -> list[str]:
    """Names from ``--classes "a,b"`` and / or a file (one per line, or comma-separated)."""
    names: list[str] = []
    if classes_file:
        text = storage.read_bytes(classes_file).decode()
        for line in text.splitlines():
            if not line.strip().startswith("#"):
                names += [c.strip() for c in line.split(",")]
    if classes:
        names += [c.strip() for c in classes.split(",")]
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        raise ValueError('no class names: give --classes "cat,sofa" or --classes-file FILE')
    if "background" in names:
        raise ValueError("'background' is implicit (label 0); leave it out of the classes")
    return names


def _label_png(labels: np.ndarray) -> bytes:
    from PIL import Image

    from zeroseg.overlay import palette

    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([int(v) for v in palette(256).ravel()])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def segment_images(
    images: list[str],
    classes: str | None,
    checkpoint: str,
    out_dir: str,
    background: str = "prompt",
    save_labels: bool = False,
    classes_file: str | None = None,
    device: str = "auto",
    readout: str = "auto",
) -> int:
    """Overlay PNG (and optionally label maps) per image; bad images are recorded and skipped,
    the batch goes on. Returns 1 when any image failed, else 0. ``readout`` "auto" reads out
    through segments and per-patch projections when the student has them."""
    from tqdm import tqdm

    from zeroseg.images import BadImage, decode_image
    from zeroseg.overlay import panel
    from zeroseg.predict import parse_rule
    from zeroseg.segmenter import load_segmenter, resolve_device

    names = parse_classes(classes, classes_file)
    if len(names) > 254:
        raise ValueError(f"{len(names)} classes: label maps hold at most 254")
    parse_rule(background)
    device = resolve_device(device)
    uris = expand_inputs(images)
    if not uris:
        raise FileNotFoundError(f"no images found in {images}")
    seg = load_segmenter(checkpoint, device=device, background=background, readout=readout)
    seg.text_embeddings(names)  # once, before the first image
    storage.makedirs(out_dir)
    failures: dict[str, str] = {}
    for uri in tqdm(uris, desc="segment", unit="img"):
        stem = os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]
        try:
            image = np.asarray(decode_image(storage.read_bytes(uri), min_side=1))
        except BadImage as exc:
            failures[uri] = exc.reason
            tqdm.write(f"zeroseg segment: skipping {uri}: {exc}")
            continue
        except OSError as exc:  # missing file, permission, network
            failures[uri] = type(exc).__name__
            tqdm.write(f"zeroseg segment: skipping {uri}: {exc}")
            continue
        labels = seg.segment(image, names)
        buf = io.BytesIO()
        scale = max(1, 256 // max(image.shape[:2]))
        panel(image, [("segments", labels)], ["background", *names], scale=scale).save(buf, "PNG")
        storage.write_bytes(storage.join(out_dir, f"{stem}.png"), buf.getvalue())
        if save_labels:
            npy = io.BytesIO()
            np.save(npy, labels.astype(np.int32))
            storage.write_bytes(storage.join(out_dir, f"{stem}.npy"), npy.getvalue())
            storage.write_bytes(storage.join(out_dir, f"{stem}_labels.png"), _label_png(labels))
    if failures:
        storage.write_json(storage.join(out_dir, "failures.json"), failures)
    summary = f"wrote {len(uris) - len(failures)} overlay(s) to {out_dir} ({device})"
    if failures:
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(failures.values()).items()))
        summary += f"; {len(failures)} image(s) could not be read ({causes}; see failures.json)"
    print(summary)
    return 1 if failures else 0
