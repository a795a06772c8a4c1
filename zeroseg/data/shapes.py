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
    "cyan": (40, 200, 215),
    "magenta": (215, 50, 170),
    "brown": (130, 80, 40),
    "lime": (160, 230, 50),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "pink": (245, 150, 185),
    "teal": (20, 128, 128),
    "olive": (128, 128, 20),
    "navy": (25, 35, 110),
}
"""Named object colours. Objects may also take a random RGB colour (no name in the caption)."""

HELDOUT_COLOURS: tuple[str, ...] = ("pink", "teal", "olive", "navy")
"""Colours the lab teacher never sees (random RGB colours near them are rejected too)."""
TRAIN_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c not in HELDOUT_COLOURS)

BACKGROUNDS: tuple[str, ...] = (
    "flat",
    "gradient",
    "stripes",
    "checker",
    "blobs",
    "noise",
    "waves",
    "texture",
    "dots",
    "plaid",
    "rings",
)
HELDOUT_BACKGROUNDS: tuple[str, ...] = ("dots", "plaid", "rings")
"""Background families the lab teacher never sees; the generalisation split draws from them."""
TRAIN_BACKGROUNDS: tuple[str, ...] = tuple(b for b in BACKGROUNDS if b not in HELDOUT_BACKGROUNDS)

HELDOUT_SIZES: tuple[float, float] = (0.3, 0.38)
"""Object diameters (fraction of the side) left out of training, drawn by the generalisation
split: a band inside the training range, so it measures scale interpolation, not tiny objects."""

IGNORE_INDEX = 255

Range = tuple[float, float]


@dataclass(frozen=True)
class WorldSettings:
    """Knobs of the world; the defaults are the domain-randomised training world of the lab.

    Ranges are ``(lo, hi)`` drawn uniformly per scene (or per object); a range with lo == hi
    fixes the value."""

    image_size: int = 64
    objects: tuple[int, int] = (1, 4)  # inclusive range of objects per scene
    size_range: Range = (0.12, 0.6)  # object diameter as a fraction of image_size
    size_holdout: Range | None = HELDOUT_SIZES  # diameters inside this band are never drawn
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = TRAIN_COLOURS
    random_colours: float = 0.3  # share of objects with a random RGB colour instead of a name
    avoid_colours: tuple[str, ...] = HELDOUT_COLOURS  # random colours keep away from these
    colour_jitter: float = 18.0  # per-object RGB offset, uniform +-
    min_contrast: float = 60.0  # an object's colour differs from the background under it by this
    shading: float = 0.12  # linear light gradient across an object (fraction of its colour)
    backgrounds: tuple[str, ...] = TRAIN_BACKGROUNDS
    background_saturation: Range = (0.0, 1.0)  # 0 = grey backgrounds, 1 = as saturated as objects
    background_contrast: Range = (0.1, 0.6)  # contrast of a background's texture (0..1)
    light_gradient: float = 0.3  # chance of an extra light gradient over the background
    noise_std: Range = (0.0, 16.0)  # Gaussian pixel noise over the whole image (0..255 scale)
    rotate: bool = True
    max_occlusion: float = 0.4  # largest fraction of an earlier object a later one may hide
    placement_tries: int = 20

    def __post_init__(self) -> None:
        for name in ("size_range", "background_saturation", "background_contrast", "noise_std"):
            v = getattr(self, name)
            if isinstance(v, int | float):
                object.__setattr__(self, name, (float(v), float(v)))
            elif len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"{name} must be a number or a range [lo, hi], got {v}")
        unknown = set(self.shapes) - set(SHAPES)
        if unknown:
            raise ValueError(f"unknown shapes {sorted(unknown)}; known: {SHAPES}")
        unknown = (set(self.colours) | set(self.avoid_colours)) - set(COLOURS)
        if unknown:
            raise ValueError(f"unknown colours {sorted(unknown)}; known: {tuple(COLOURS)}")
        if not self.colours and self.random_colours < 1:
            raise ValueError("colours is empty: name some or set random_colours to 1")
        if not 0 <= self.random_colours <= 1:
            raise ValueError(f"random_colours must be in [0, 1], got {self.random_colours}")
        unknown = set(self.backgrounds) - set(BACKGROUNDS)
        if unknown or not self.backgrounds:
            raise ValueError(f"unknown backgrounds {sorted(unknown)}; known: {BACKGROUNDS}")
        lo, hi = self.objects
        if not 0 <= lo <= hi:
            raise ValueError(f"objects must be a range lo <= hi, got {self.objects}")
        if not 0 < self.size_range[0] <= self.size_range[1] <= 1:
            raise ValueError(f"size_range must lie in (0, 1], got {self.size_range}")
        if self.size_holdout is not None:
            a, b = self.size_holdout
            if not a < b:
                raise ValueError(f"size_holdout must be a band lo < hi, got {self.size_holdout}")
            if a <= self.size_range[0] and b >= self.size_range[1]:
                raise ValueError(
                    f"size_holdout {self.size_holdout} covers all of size_range {self.size_range}"
                )
        if self.image_size < 8:
            raise ValueError("image_size must be at least 8")

    def to_dict(self) -> dict:
        """Plain JSON-able form, e.g. for fingerprints and manifests."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> WorldSettings:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def generalisation_world(image_size: int = 96, **changes) -> WorldSettings:
    """Scenes drawn with what the lab teacher never trained on: held-out colours (named and
    nearby random ones), held-out background families and the held-out size band."""
    base = dict(
        image_size=image_size,
        size_range=HELDOUT_SIZES,
        size_holdout=None,
        colours=HELDOUT_COLOURS,
        random_colours=0.0,
        avoid_colours=(),
        backgrounds=HELDOUT_BACKGROUNDS,
    )
    base.update(changes)
    return WorldSettings(**base)


@dataclass
class SceneObject:
    shape: str
    colour: str  # a COLOURS name, or "" for a random RGB colour
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
    c = rng.uniform(20, 235, size=3)
    grey = c.mean()
    return grey + (c - grey) * saturation


def _draw(rng: np.random.Generator, r: Range) -> float:
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(r[0], r[1]))


def _smooth_field(rng: np.random.Generator, cells: int, h: int) -> np.ndarray:
    """Random values on a ``cells`` x ``cells`` grid, bicubically upsampled to (h, h) in [0, 1]."""
    low = Image.fromarray((rng.uniform(0, 255, (cells, cells))).astype(np.uint8))
    t = np.asarray(low.resize((h, h), Image.BICUBIC), dtype=np.float32) / 255.0
    return np.clip(t, 0.0, 1.0)


def _background(rng: np.random.Generator, s: WorldSettings) -> np.ndarray:
    """(H, W, 3) float32 texture of a family drawn from ``s.backgrounds``."""
    h = s.image_size
    family = s.backgrounds[int(rng.integers(len(s.backgrounds)))]
    saturation = _draw(rng, s.background_saturation)
    contrast = _draw(rng, s.background_contrast)
    c1 = _random_colour(rng, saturation)
    c2 = c1 + (_random_colour(rng, saturation) - c1) * contrast * 2
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32) / h  # coordinates in image fractions
    theta = rng.uniform(0, np.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if family == "flat":
        t = np.zeros_like(xx)
    elif family == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif family == "stripes":
        period = rng.uniform(0.06, 0.3)
        t = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif family == "checker":
        period = rng.uniform(0.08, 0.3)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif family == "blobs":
        t = _smooth_field(rng, int(rng.integers(3, 7)), h)
    elif family == "noise":  # a fine random field: grain from a few pixels to a tenth of the side
        t = _smooth_field(rng, int(rng.integers(8, max(9, h // 3))), h)
    elif family == "waves":
        f1, f2 = rng.uniform(2, 6, size=2)
        t = 0.5 + 0.25 * (np.sin(2 * np.pi * f1 * u) + np.sin(2 * np.pi * f2 * v))
    elif family == "texture":  # oriented gratings of one random frequency, low to high
        freq = rng.uniform(3, 16)
        t = np.zeros_like(xx)
        for _ in range(3):
            phi, off = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            w = xx * math.cos(phi) + yy * math.sin(phi)
            t += np.sin(2 * np.pi * freq * w + off)
        t = 0.5 + t / 6
    elif family == "dots":
        period = rng.uniform(0.1, 0.2)
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        t = (du * du + dv * dv < 0.09).astype(np.float32)
    elif family == "plaid":  # two crossed soft gratings of different periods
        p1, p2 = rng.uniform(0.08, 0.25, size=2)
        t = 0.25 * (2 + np.sin(2 * np.pi * u / p1) + np.sin(2 * np.pi * v / p2))
    elif family == "rings":  # concentric rings around a random centre
        cx, cy = rng.uniform(0, 1, size=2)
        period = rng.uniform(0.08, 0.2)
        rad = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        t = (np.sin(2 * np.pi * rad / period) > 0).astype(np.float32)
    else:  # pragma: no cover - guarded by WorldSettings
        raise ValueError(family)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    if s.light_gradient and rng.random() < s.light_gradient:
        phi = rng.uniform(0, 2 * np.pi)
        g = (xx - 0.5) * math.cos(phi) + (yy - 0.5) * math.sin(phi)
        img = img * (1.0 + rng.uniform(0.2, 0.6) * g[..., None])
    return img.astype(np.float32)


def _object_size(rng: np.random.Generator, s: WorldSettings) -> float:
    """A diameter fraction from ``size_range`` outside the ``size_holdout`` band."""
    lo, hi = s.size_range
    if s.size_holdout is None:
        return float(rng.uniform(lo, hi))
    a, b = max(s.size_holdout[0], lo), min(s.size_holdout[1], hi)
    if a >= b:  # the band misses the range
        return float(rng.uniform(lo, hi))
    d = float(rng.uniform(lo, hi - (b - a)))  # draw on the range with the band cut out
    return d + (b - a) if d > a else d


def _object_colour(
    rng: np.random.Generator, s: WorldSettings, under: np.ndarray
) -> tuple[str, np.ndarray]:
    """(name or "", RGB) for an object whose footprint covers background pixels ``under``
    (K, 3): a name from ``colours`` or a random colour away from ``avoid_colours``, redrawn
    (a bounded number of times) until it stands out from that background."""
    mean = under.mean(0) if len(under) else np.full(3, 128.0)
    avoid = np.array([COLOURS[c] for c in s.avoid_colours], np.float32).reshape(-1, 3)
    best: tuple[float, str, np.ndarray] | None = None
    for _ in range(12):
        if not s.colours or rng.random() < s.random_colours:
            rgb = rng.uniform(0, 255, size=3).astype(np.float32)
            if len(avoid) and np.linalg.norm(avoid - rgb, axis=1).min() < 70:
                continue
            name = ""
        else:
            name = s.colours[int(rng.integers(len(s.colours)))]
            rgb = np.asarray(COLOURS[name], np.float32)
        rgb = np.clip(rgb + rng.uniform(-s.colour_jitter, s.colour_jitter, size=3), 0, 255)
        gap = float(np.linalg.norm(rgb - mean))
        if gap >= s.min_contrast:
            return name, rgb
        if best is None or gap > best[0]:
            best = (gap, name, rgb)
    if best is None:  # every draw was a random colour too close to an avoided one
        name = s.colours[0] if s.colours else ""
        return name, np.asarray(COLOURS.get(name, (128, 128, 128)), np.float32)
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# scenes


def caption_for(objects: list[tuple[str, str]]) -> str:
    """'a photo of a red circle and a blue star.' from (colour, shape) pairs; an unnamed
    (random RGB) colour is ``""`` and leaves the shape bare."""
    if not objects:
        return "a photo of the background."
    parts = [
        f"{'an' if (c or s)[0] in 'aeiou' else 'a'} {c + ' ' if c else ''}{s}" for c, s in objects
    ]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {body}."


def render_scene(rng: np.random.Generator, settings: WorldSettings | None = None) -> Scene:
    """One scene; deterministic given the generator state (which it advances)."""
    s = settings or WorldSettings()
    h = s.image_size
    img = _background(rng, s)
    background = img.copy()
    mask = np.zeros((h, h), np.uint8)
    owner = np.full((h, h), -1, np.int16)  # index of the object that owns each pixel
    n = int(rng.integers(s.objects[0], s.objects[1] + 1))
    placed: list[tuple[str, str, int]] = []  # shape, colour, full footprint area
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32)
    for _ in range(n):
        shape = s.shapes[int(rng.integers(len(s.shapes)))]
        fp = None
        for _try in range(s.placement_tries):
            diameter = _object_size(rng, s) * h
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
        colour, rgb = _object_colour(rng, s, background[fp])
        phi = rng.uniform(0, 2 * np.pi)
        light = ((xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)) / max(r, 1.0)
        shade = 1.0 + s.shading * light[fp]
        img[fp] = rgb[None, :] * shade[:, None]
        mask[fp] = SHAPES.index(shape) + 1
        owner[fp] = k
        placed.append((shape, colour, int(fp.sum())))
    noise = _draw(rng, s.noise_std)
    if noise > 0:
        img = img + rng.normal(0, noise, size=img.shape).astype(np.float32)
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
