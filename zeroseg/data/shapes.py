"""The synthetic "shapes world": multi-object scenes with exact masks and captions.

It gives the embedded default a dataset that needs no download and whose ground truth is exact:
every object is rasterised once (no antialiasing) and that one boolean footprint paints both the
image and the mask, so image and mask can never disagree. Every knob that a generalisation test
may want to move (resolution, object count and size, background family, noise) lives in
``WorldSettings``; a scene is a pure function of ``(rng state, settings)``.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
"""Class vocabulary; shape ``SHAPES[k]`` has mask value ``k + 1`` (0 = background)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 220),
    "yellow": (235, 205, 35),
    "purple": (145, 55, 195),
    "orange": (245, 135, 25),
}

BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "stripes", "checker", "blobs", "dots", "waves")
TRAIN_BACKGROUNDS: tuple[str, ...] = ("gradient", "stripes", "checker", "blobs")
"""Default families; ``flat``, ``dots`` and ``waves`` are left out so a test split can hold them."""

IGNORE_INDEX = 255


@dataclass(frozen=True)
class WorldSettings:
    """Knobs of the world; the defaults are the training distribution of the embedded demo."""

    image_size: int = 64
    objects: tuple[int, int] = (1, 4)  # inclusive range of objects per scene
    size_range: tuple[float, float] = (0.28, 0.5)  # object diameter as a fraction of image_size
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    colour_jitter: float = 18.0  # per-object RGB offset, uniform +-
    shading: float = 0.12  # linear light gradient across an object (fraction of its colour)
    backgrounds: tuple[str, ...] = TRAIN_BACKGROUNDS
    background_saturation: float = 0.45  # 0 = grey backgrounds, 1 = as saturated as objects
    background_contrast: float = 0.35  # contrast of a background's texture (0..1)
    noise_std: float = 5.0  # Gaussian pixel noise over the whole image (0..255 scale)
    rotate: bool = True
    max_occlusion: float = 0.4  # largest fraction of an earlier object a later one may hide
    placement_tries: int = 20

    def __post_init__(self) -> None:
        unknown = set(self.shapes) - set(SHAPES)
        if unknown:
            raise ValueError(f"unknown shapes {sorted(unknown)}; known: {SHAPES}")
        unknown = set(self.colours) - set(COLOURS)
        if unknown:
            raise ValueError(f"unknown colours {sorted(unknown)}; known: {tuple(COLOURS)}")
        unknown = set(self.backgrounds) - set(BACKGROUNDS)
        if unknown:
            raise ValueError(f"unknown backgrounds {sorted(unknown)}; known: {BACKGROUNDS}")
        lo, hi = self.objects
        if not 0 <= lo <= hi:
            raise ValueError(f"objects must be a range lo <= hi, got {self.objects}")
        if not 0 < self.size_range[0] <= self.size_range[1] <= 1:
            raise ValueError(f"size_range must lie in (0, 1], got {self.size_range}")
        if self.image_size < 8:
            raise ValueError("image_size must be at least 8")

    def to_dict(self) -> dict:
        """Plain JSON-able form, e.g. for fingerprints and manifests."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> WorldSettings:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class SceneObject:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # visible-pixel bounds x0, y0, x1, y1 (exclusive); 0s if hidden
    pixels: int  # visible pixel count

    @property
    def label(self) -> int:
        return SHAPES.index(self.shape) + 1


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 0 = background, k + 1 = SHAPES[k]
    objects: list[SceneObject] = field(default_factory=list)
    caption: str = ""
    instances: np.ndarray | None = None  # (H, W) uint8, 0 = background, i + 1 = objects[i]


# ---------------------------------------------------------------------------------------------
# geometry


def _polygon(shape: str, n_circle: int = 40) -> np.ndarray:
    """Unit-radius outline (N, 2) of a shape centred at the origin."""
    if shape == "square":
        a = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "triangle":
        a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1) * 1.1
    if shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        t = 0.34
        pts = [(t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1)]
        pts += [(-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t), (-t, -1)]
        return np.array(pts, dtype=np.float64)
    a = np.arange(n_circle) * 2 * np.pi / n_circle
    return np.stack([np.cos(a), np.sin(a)], 1)


def _footprint(
    shape: str, cx: float, cy: float, radius: float, angle: float, size: int
) -> np.ndarray:
    """Boolean (size, size) footprint, rasterised without antialiasing."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    n = max(16, min(96, int(radius * 2)))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outer = _polygon("circle" if shape == "ring" else shape, n) @ rot.T * radius + (cx, cy)
    draw.polygon([tuple(p) for p in outer], fill=1)
    if shape == "ring":
        inner = _polygon("circle", n) * radius * 0.5 + (cx, cy)
        draw.polygon([tuple(p) for p in inner], fill=0)
    return np.asarray(canvas, dtype=bool)


# ---------------------------------------------------------------------------------------------
# backgrounds


def _random_colour(rng: np.random.Generator, saturation: float) -> np.ndarray:
    c = rng.uniform(40, 220, size=3)
    grey = c.mean()
    return grey + (c - grey) * saturation


def _background(rng: np.random.Generator, s: WorldSettings) -> np.ndarray:
    """(H, W, 3) float32 texture of a family drawn from ``s.backgrounds``."""
    h = s.image_size
    family = s.backgrounds[int(rng.integers(len(s.backgrounds)))]
    c1 = _random_colour(rng, s.background_saturation)
    c2 = c1 + (_random_colour(rng, s.background_saturation) - c1) * s.background_contrast * 2
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32) / h  # coordinates in image fractions
    theta = rng.uniform(0, np.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if family == "flat":
        t = np.zeros_like(xx)
    elif family == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif family == "stripes":
        period = rng.uniform(0.08, 0.25)
        t = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif family == "checker":
        period = rng.uniform(0.1, 0.3)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif family == "blobs":
        g = int(rng.integers(3, 7))
        low = Image.fromarray((rng.uniform(0, 255, (g, g))).astype(np.uint8))
        t = np.asarray(low.resize((h, h), Image.BICUBIC), dtype=np.float32) / 255.0
    elif family == "dots":
        period = rng.uniform(0.1, 0.2)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        t = (du * du + dv * dv < 0.09).astype(np.float32)
    elif family == "waves":
        f1, f2 = rng.uniform(2, 6, size=2)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        t = 0.5 + 0.25 * (np.sin(2 * np.pi * f1 * u) + np.sin(2 * np.pi * f2 * v))
    else:  # pragma: no cover - guarded by WorldSettings
        raise ValueError(family)
    return c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]


# ---------------------------------------------------------------------------------------------
# scenes


def caption_for(objects: list[tuple[str, str]]) -> str:
    """'a photo of a red circle and a blue star.' from (colour, shape) pairs."""
    if not objects:
        return "a photo of the background."
    parts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in objects]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {body}."


def render_scene(rng: np.random.Generator, settings: WorldSettings | None = None) -> Scene:
    """One scene; deterministic given the generator state (which it advances)."""
    s = settings or WorldSettings()
    h = s.image_size
    img = _background(rng, s)
    mask = np.zeros((h, h), np.uint8)
    owner = np.full((h, h), -1, np.int16)  # index of the object that owns each pixel
    n = int(rng.integers(s.objects[0], s.objects[1] + 1))
    placed: list[tuple[str, str, int]] = []  # shape, colour, full footprint area
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32)
    for _ in range(n):
        shape = s.shapes[int(rng.integers(len(s.shapes)))]
        colour = s.colours[int(rng.integers(len(s.colours)))]
        fp = None
        for _try in range(s.placement_tries):
            diameter = rng.uniform(*s.size_range) * h
            r = diameter / 2
            cx, cy = rng.uniform(r, h - r, size=2)
            angle = rng.uniform(0, 2 * np.pi) if s.rotate else 0.0
            cand = _footprint(shape, cx, cy, r, angle, h)
            if not cand.any():
                continue
            ok = True
            for j, (_, _, area) in enumerate(placed):
                hidden = np.count_nonzero(cand & (owner == j))
                remaining = np.count_nonzero(owner == j)
                if hidden > s.max_occlusion * area or remaining - hidden < 0.5 * remaining:
                    ok = False
                    break
            if ok:
                fp = cand
                break
        if fp is None:
            continue
        k = len(placed)
        rgb = np.asarray(COLOURS[colour], np.float32) + rng.uniform(
            -s.colour_jitter, s.colour_jitter, size=3
        )
        phi = rng.uniform(0, 2 * np.pi)
        light = ((xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)) / max(r, 1.0)
        shade = 1.0 + s.shading * light[fp]
        img[fp] = rgb[None, :] * shade[:, None]
        mask[fp] = SHAPES.index(shape) + 1
        owner[fp] = k
        placed.append((shape, colour, int(fp.sum())))
    if s.noise_std > 0:
        img = img + rng.normal(0, s.noise_std, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    objects: list[SceneObject] = []
    for k, (shape, colour, _) in enumerate(placed):
        ys, xs = np.nonzero(owner == k)
        if len(xs):
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        else:
            box = (0, 0, 0, 0)
        objects.append(SceneObject(shape, colour, box, len(xs)))
    visible = [(o.colour, o.shape) for o in objects if o.pixels > 0]
    instances = (owner + 1).astype(np.uint8)
    return Scene(image, mask, objects, caption_for(visible), instances)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Generator for scene ``index`` of split ``seed``; splits are reproducible piecewise."""
    return np.random.default_rng([int(seed), int(index)])


# ---------------------------------------------------------------------------------------------
# storage


def palette() -> list[int]:
    """Flat 768-entry palette: distinct colours per class, white for ignore (255)."""
    base = [(0, 0, 0)] + [COLOURS[c] for c in COLOURS]
    pal = [0] * 768
    rng = np.random.default_rng(0)
    for i in range(256):
        if i < len(base):
            rgb = base[i]
        elif i == IGNORE_INDEX:
            rgb = (255, 255, 255)
        else:
            rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
        pal[3 * i : 3 * i + 3] = rgb
    return pal


def _mask_png(mask: np.ndarray) -> bytes:
    im = Image.new("P", (mask.shape[1], mask.shape[0]))
    im.putpalette(palette())
    im.frombytes(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_split(
    out_uri: str,
    n: int,
    seed: int,
    labeled: bool = True,
    settings: WorldSettings | None = None,
    progress: bool | Callable[[int, int], None] = False,
    storage_options: dict | None = None,
) -> dict:
    """Write ``n`` scenes under any fsspec URL; returns the split's metadata.

    Scene ``i`` comes from ``scene_rng(seed, i)``, so the bytes depend only on (seed, i, settings).
    An unlabeled split holds images only, like a real unlabeled dataset.
    """
    s = settings or WorldSettings()
    fs, root = fsspec.core.url_to_fs(out_uri, **(storage_options or {}))
    root = root.rstrip("/")
    # Folders exist only on local disks; on object stores makedirs could create a bucket.
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        fs.makedirs(posixpath.join(root, "images"), exist_ok=True)
        if labeled:
            fs.makedirs(posixpath.join(root, "masks"), exist_ok=True)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"shapes {out_uri}", unit="img")
    captions: list[str] = []
    for i in range(n):
        scene = render_scene(scene_rng(seed, i), s)
        key = f"{i:06d}"
        fs.pipe_file(posixpath.join(root, "images", f"{key}.png"), _png(scene.image))
        if labeled:
            fs.pipe_file(posixpath.join(root, "masks", f"{key}.png"), _mask_png(scene.mask))
            captions.append(json.dumps({"key": key, "caption": scene.caption}))
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(i + 1, n)
    if bar is not None:
        bar.close()
    meta = {"n": n, "seed": seed, "labeled": labeled, "settings": s.to_dict()}
    if labeled:
        classes = ["background", *SHAPES]
        fs.pipe_file(posixpath.join(root, "classes.json"), json.dumps(classes).encode())
        fs.pipe_file(posixpath.join(root, "captions.jsonl"), ("\n".join(captions) + "\n").encode())
    fs.pipe_file(posixpath.join(root, "world.json"), json.dumps(meta, indent=1).encode())
    return meta


class BenchmarkLayoutError(ValueError):
    """The URI does not hold ``images/``, ``masks/`` and ``classes.json`` as expected."""


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _decode_mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("P", "L"):
            raise BenchmarkLayoutError(f"mask PNGs must be palette or L mode, got {im.mode}")
        return np.asarray(im, dtype=np.uint8).copy()


def read_benchmark(
    uri: str, storage_options: dict | None = None
) -> tuple[list[str], Iterator[tuple[str, np.ndarray, np.ndarray]]]:
    """Class names plus a lazy iterator of (key, image uint8 HxWx3, mask uint8 HxW).

    Checks the layout up front (so a wrong URI fails before any work) and decodes lazily.
    """
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    root = root.rstrip("/")
    classes_path = posixpath.join(root, "classes.json")
    if not fs.exists(classes_path):
        raise BenchmarkLayoutError(
            f"{uri}: no classes.json; a labeled split needs images/, masks/ and classes.json "
            "(was it written with labeled=False?)"
        )
    classes = json.loads(fs.cat_file(classes_path))
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise BenchmarkLayoutError(f"{classes_path}: expected a JSON list of class names")

    def _keys(sub: str) -> dict[str, str]:
        d = posixpath.join(root, sub)
        if not fs.isdir(d):
            raise BenchmarkLayoutError(f"{uri}: missing {sub}/ directory")
        out = {}
        for p in fs.ls(d, detail=False):
            name = posixpath.basename(p.rstrip("/"))
            if name.lower().endswith(".png"):
                out[name[:-4]] = p
        return out

    images, masks = _keys("images"), _keys("masks")
    if not images:
        raise BenchmarkLayoutError(f"{uri}: images/ holds no PNG files")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise BenchmarkLayoutError(
            f"{uri}: {len(missing)} images have no mask (first: masks/{missing[0]}.png)"
        )
    keys = sorted(images)

    def _iter() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for k in keys:
            image = _decode_rgb(fs.cat_file(images[k]))
            mask = _decode_mask(fs.cat_file(masks[k]))
            if mask.shape != image.shape[:2]:
                raise BenchmarkLayoutError(
                    f"{uri}: {k}: mask {mask.shape} does not match image {image.shape[:2]}"
                )
            yield k, image, mask

    return classes, _iter()
