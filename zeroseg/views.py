"""Multi-scale grid views: the regions whose teacher embeddings the student distills.

The student sees one centre crop; the 1x1, 2x2, 3x3 and 4x4 non-overlapping grids are cut from
that same crop and each cell is resized to the teacher's input size. Everything is deterministic,
so the views of an image never change and their embeddings can be cached once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 3, 4)


def num_views(levels: Sequence[int] = DEFAULT_LEVELS) -> int:
    return int(sum(n * n for n in levels))


def grid_boxes(levels: Sequence[int] = DEFAULT_LEVELS) -> np.ndarray:
    """Normalised ``(x0, y0, x1, y1)`` boxes, row-major within a level, levels in order."""
    boxes = []
    for n in levels:
        edges = np.linspace(0.0, 1.0, n + 1)
        for r in range(n):
            for c in range(n):
                boxes.append((edges[c], edges[r], edges[c + 1], edges[r + 1]))
    return np.asarray(boxes, dtype=np.float32)


def grid_pixel_boxes(size: int, levels: Sequence[int] = DEFAULT_LEVELS) -> list[tuple[int, ...]]:
    """Integer ``(x0, y0, x1, y1)`` of every view on a ``size`` square, in :func:`grid_boxes`
    order. Edges sit at ``round(k * size / n)``, so the cells of a level tile the crop exactly;
    extraction and teacher pretraining both cut with this."""
    out = []
    for n in levels:
        edges = [round(k * size / n) for k in range(n + 1)]
        for r in range(n):
            for c in range(n):
                out.append((edges[c], edges[r], edges[c + 1], edges[r + 1]))
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, EXIF orientation applied, alpha composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """RGB centre square of side ``size`` after resizing the short side to ``size``."""
    image = to_rgb(image)
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def resize_views(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """The one resize used for every view, at extraction and in teacher pretraining."""
    if x.shape[-2:] == (out_size, out_size):
        return x
    return F.interpolate(
        x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
    )


def cut_views(
    pixels: torch.Tensor, levels: Sequence[int] = DEFAULT_LEVELS, out_size: int = 64
) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 crops -> ``(B, V, 3, out, out)`` float views in ``[0, 1]``."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) pixels, got {tuple(pixels.shape)}")
    b, h, w, _ = pixels.shape
    if h != w:
        raise ValueError(f"views are cut from square crops, got {h}x{w}")
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    views = []
    for x0, y0, x1, y1 in grid_pixel_boxes(h, levels):
        views.append(resize_views(x[:, :, y0:y1, x0:x1], out_size))
    return torch.stack(views, dim=1)
