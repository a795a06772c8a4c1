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

IMAGE_EXTENSIONS = storage.IMAGE_EXTENSIONS
UNSUPPORTED = "unsupported_format"


def expand_inputs(items: list[str], skipped: dict[str, str] | None = None) -> list[str]:
    """Files stay as given; globs expand; folders / prefixes list their images recursively.
    A name that matches nothing is kept, so it is reported as unreadable like any bad file.
    Files a glob or folder holds that are not images go into ``skipped`` (uri -> reason)."""
    out: list[str] = []
    skipped = {} if skipped is None else skipped

    def keep(found: list[str]) -> None:
        for uri in found:
            if uri.lower().endswith(IMAGE_EXTENSIONS):
                out.append(uri)
            else:
                skipped[uri] = f"{UNSUPPORTED} ({os.path.splitext(uri)[1] or 'no extension'})"

    for item in items:
        if any(c in item for c in "*?["):
            fs, path = storage.fs_and_path(item)
            protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
            prefix = "" if storage.is_local(item) else f"{protocol}://"
            keep([prefix + m for m in sorted(fs.glob(path)) if not fs.isdir(m)])
            continue
        fs, path = storage.fs_and_path(item)
        if item.endswith("/") or fs.isdir(path):
            keep(storage.list_files(item))
        else:
            out.append(item)
    return out


def output_names(uris: list[str]) -> dict[str, str]:
    """A distinct output stem per input: the file's stem, or, where several inputs share one
    (``a/x.png`` and ``b/x.png``, ``x.png`` and ``x.jpg``), as much of the path and extension
    as tells them apart, so no output overwrites another."""

    def parts(uri: str) -> tuple[list[str], str, str]:
        path = uri.split("://", 1)[-1].rstrip("/")
        *dirs, base = [p for p in path.split("/") if p]
        stem, ext = os.path.splitext(base)
        return dirs, stem, ext.lstrip(".")

    def candidates(uri: str) -> list[str]:
        dirs, stem, ext = parts(uri)
        out = []
        for depth in range(len(dirs) + 1):
            lead = dirs[len(dirs) - depth :]
            out += ["__".join([*lead, stem]), "__".join([*lead, f"{stem}_{ext}" if ext else stem])]
        return out

    names: dict[str, str] = {}
    by_stem: dict[str, list[str]] = {}
    for uri in dict.fromkeys(uris):
        by_stem.setdefault(parts(uri)[1], []).append(uri)
    for group in by_stem.values():
        options = {u: candidates(u) for u in group}
        for i in range(max(len(o) for o in options.values())):
            tried = {u: o[min(i, len(o) - 1)] for u, o in options.items()}
            if len(set(tried.values())) == len(group):
                break
        names.update(tried)
    taken: dict[str, int] = {}
    for uri, name in names.items():  # a disambiguated name may still meet another file's stem
        n = taken.get(name, 0)
        taken[name] = n + 1
        if n:
            names[uri] = f"{name}-{n + 1}"
    return names


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


def _is_dir(uri: str) -> bool:
    fs, path = storage.fs_and_path(uri)
    return fs.isdir(path)


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
    checkpoint: str | None,
    out_dir: str,
    background: str = "prompt",
    save_labels: bool = False,
    classes_file: str | None = None,
    device: str = "auto",
    readout: str = "auto",
    method: str | None = None,
    teacher: str | None = None,
    pretrained: str | None = None,
    sigma: float = 5.0,
    pamr: bool = False,
) -> int:
    """Overlay PNG (and optionally label maps) per image; bad images are recorded and skipped,
    the batch goes on. Returns 1 when any image failed, else 0. ``readout`` "auto" reads out
    through segments and per-patch projections when the student has them. Without a
    ``checkpoint``, a training-free ``method`` runs on ``teacher`` (``pretrained`` weights)
    alone, with the same outputs."""
    from tqdm import tqdm

    from zeroseg.images import BadImage, decode_image
    from zeroseg.overlay import panel
    from zeroseg.predict import parse_rule
    from zeroseg.segmenter import load_segmenter, resolve_device

    classes_list = parse_classes(classes, classes_file)
    # "person|man|woman": one class scored by the max over its synonyms, shown by its first name
    queries = [c.split("|") if "|" in c else c for c in classes_list]
    if any("" in q for q in queries if isinstance(q, list)):
        raise ValueError(f"an empty synonym in {classes_list}: write 'a|b', not 'a||b' or 'a|'")
    if len(classes_list) > 254:
        raise ValueError(f"{len(classes_list)} classes: label maps hold at most 254")
    parse_rule(background)
    device = resolve_device(device)
    if storage.exists(out_dir) and not _is_dir(out_dir):
        raise ValueError(f"-o {out_dir} is a file; give a folder for the outputs")
    skipped: dict[str, str] = {}
    uris = expand_inputs(images, skipped)
    for uri, reason in skipped.items():
        print(f"zeroseg segment: skipping {uri}: {reason}")
    if not uris:
        raise FileNotFoundError(f"no images found in {images}")
    names = output_names(uris)
    seg = load_segmenter(
        checkpoint,
        method=method,
        teacher=teacher,
        pretrained=pretrained,
        device=device,
        background=background,
        readout=readout,
        sigma=sigma,
        pamr=pamr,
    )
    seg.text_embeddings(queries)  # once, before the first image
    storage.makedirs(out_dir)
    failures: dict[str, str] = {}
    written = 0
    for uri in tqdm(list(names), desc="segment", unit="img"):
        stem = names[uri]
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
        labels = seg.segment(image, queries)
        buf = io.BytesIO()
        scale = max(1, 256 // max(image.shape[:2]))
        legend = ["background", *(c.split("|")[0] for c in classes_list)]
        shown = "segments" if seg.method == "student" else seg.method
        panel(image, [(shown, labels)], legend, scale=scale).save(buf, "PNG")
        storage.write_bytes(storage.join(out_dir, f"{stem}.png"), buf.getvalue())
        written += 1
        if save_labels:
            npy = io.BytesIO()
            np.save(npy, labels.astype(np.int32))
            storage.write_bytes(storage.join(out_dir, f"{stem}.npy"), npy.getvalue())
            storage.write_bytes(storage.join(out_dir, f"{stem}_labels.png"), _label_png(labels))
    if failures:
        storage.write_json(storage.join(out_dir, "failures.json"), failures)
    if skipped:
        storage.write_json(storage.join(out_dir, "skipped.json"), skipped)
    summary = f"wrote {written} overlay(s) to {out_dir} ({seg.method}, {device})"
    if failures:
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(failures.values()).items()))
        summary += f"; {len(failures)} image(s) could not be read ({causes}; see failures.json)"
    if skipped:
        summary += f"; skipped {len(skipped)} file(s) that are not images (see skipped.json)"
    print(summary)
    return 1 if failures else 0
