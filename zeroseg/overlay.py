"""Pictures people look at: label maps blended over images, with a legend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours; 0 (background) is black, 255 (ignore) is handled separately."""
    base = np.array(
        [
            [0, 0, 0],
            [230, 25, 75],
            [60, 180, 75],
            [255, 225, 25],
            [0, 130, 200],
            [245, 130, 48],
            [145, 30, 180],
            [70, 240, 240],
            [240, 50, 230],
            [210, 245, 60],
            [250, 190, 212],
            [0, 128, 128],
            [220, 190, 255],
            [170, 110, 40],
            [255, 250, 200],
            [128, 0, 0],
            [170, 255, 195],
            [128, 128, 0],
            [255, 215, 180],
            [0, 0, 128],
            [128, 128, 128],
        ],
        dtype=np.uint8,
    )
    if n <= len(base):
        return base[:n]
    rng = np.random.default_rng(0)
    extra = rng.integers(40, 256, size=(n - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Label map -> RGB; ignore (255) drawn white."""
    pal = palette(max(num_classes, 1))
    out = np.full((*labels.shape, 3), 255, dtype=np.uint8)
    known = labels < num_classes
    out[known] = pal[labels[known]]
    return out


def blend(
    image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.75
) -> np.ndarray:
    """Colour the labelled pixels over the image; background stays the image itself."""
    color = colorize(labels, num_classes).astype(np.float32)
    img = image.astype(np.float32)
    mask = (labels > 0)[..., None]
    out = np.where(mask, (1 - alpha) * img + alpha * color, img)
    return out.clip(0, 255).astype(np.uint8)


def _legend(names: Sequence[str], width: int, row_h: int = 14) -> Image.Image:
    pal = palette(len(names))
    font = ImageFont.load_default()
    cols = max(1, width // 110)
    rows = -(-len(names) // cols)
    img = Image.new("RGB", (width, rows * row_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        x, y = (i % cols) * 110 + 4, (i // cols) * row_h + 2
        draw.rectangle(
            [x, y + 2, x + 10, y + 12], fill=tuple(int(c) for c in pal[i]), outline=(0, 0, 0)
        )
        draw.text((x + 14, y), name, fill=(0, 0, 0), font=font)
    return img


def panel(
    image: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    scale: int = 1,
    legend: bool = True,
) -> Image.Image:
    """Image followed by one overlay per (title, label map), titles above, legend below."""
    h, w = image.shape[:2]
    tiles = [("image", image)] + [(t, blend(image, m, len(class_names))) for t, m in maps]
    tw, th = w * scale, h * scale
    title_h = 14
    canvas = Image.new(
        "RGB", (tw * len(tiles) + 4 * (len(tiles) - 1), th + title_h), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (title, arr) in enumerate(tiles):
        x = i * (tw + 4)
        canvas.paste(Image.fromarray(arr).resize((tw, th), Image.Resampling.NEAREST), (x, title_h))
        draw.text((x + 2, 1), title, fill=(0, 0, 0), font=font)
    if not legend:
        return canvas
    leg = _legend(class_names, canvas.width)
    out = Image.new("RGB", (canvas.width, canvas.height + leg.height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(leg, (0, canvas.height))
    return out
