"""The toy teacher's training pool: single objects plus labelled 1x1 .. 4x4 grid views of
scenes of the shapes world, every view cut on integer pixel bounds and resized exactly as
extraction resizes views.

Kept apart from the training code so that the processes rendering chunks of a pool import
numpy, torch and the shapes world only (not open_clip). A pool is a function of its
:class:`PoolSpec`: with ``chunk == 0`` one generator draws the whole pool in order (the recipe
of teachers trained before chunks existed); with ``chunk > 0`` every ``chunk`` views come from a
generator of their own, so chunks render in parallel and the pool does not depend on how many
processes rendered it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch

from zeroseg.data.shapes import COLOURS, SHAPES, WorldSettings, render_scene
from zeroseg.views import grid_pixel_boxes, resize_views

SHAPE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "a {}.")
COLOUR_TEMPLATE = "a photo of {} {} {}."  # article, colour, shape
BACKGROUND_PROMPTS: tuple[str, ...] = ("a photo of the background.", "a photo of nothing.")
POOL_SEED_TAG = 7919  # separates pool generators from every other seeded stream


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def colour_prompt(colour: str, shape: str) -> str:
    return COLOUR_TEMPLATE.format(article(colour), colour, shape)


def caption_vocabulary(
    shapes: Sequence[str] = SHAPES, colours: Sequence[str] = tuple(COLOURS)
) -> tuple[list[str], dict[str, list[int]], dict[tuple[str, str], int], list[int]]:
    """Training prompts plus maps: shape -> prompt ids, (colour, shape) -> id, background ids."""
    prompts: list[str] = []
    by_shape: dict[str, list[int]] = {}
    by_pair: dict[tuple[str, str], int] = {}
    for s in shapes:
        by_shape[s] = []
        for t in SHAPE_TEMPLATES:
            by_shape[s].append(len(prompts))
            prompts.append(t.format(s))
        for c in colours:
            by_pair[(c, s)] = len(prompts)
            prompts.append(colour_prompt(c, s))
    background = list(range(len(prompts), len(prompts) + len(BACKGROUND_PROMPTS)))
    prompts.extend(BACKGROUND_PROMPTS)
    return prompts, by_shape, by_pair, background


def cut(image: torch.Tensor, box: Sequence[int], size: int) -> torch.Tensor:
    """(3, H, W) float -> (3, size, size): integer crop then the shared resize."""
    x0, y0, x1, y1 = box
    return resize_views(image[None, :, y0:y1, x0:x1], size)[0]


def to_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class Pool:
    images: torch.Tensor  # (N, 3, S, S) uint8
    positives: torch.Tensor  # (N, P) bool over the caption vocabulary
    prompts: list[str]


@dataclass(frozen=True)
class PoolSpec:
    """Everything that decides a pool's contents."""

    world: WorldSettings
    n: int
    seed: int
    single_fraction: float  # share of the pool that is single objects
    background_fraction: float  # share of scene views that may be background-only
    level_weights: tuple[float, float, float, float]  # 1x1 .. 4x4 views
    single_size_range: tuple[float, float]
    scene_sizes: tuple[int, int]  # scenes are drawn at sides in this range
    seed_stream: int = 0
    chunk: int = 0  # views per generator; 0 = one generator for the whole pool, in order

    @property
    def n_single(self) -> int:
        return int(round(self.n * self.single_fraction))

    def chunks(self) -> list[tuple[int, int]]:
        step = self.chunk or self.n
        return [(a, min(a + step, self.n)) for a in range(0, self.n, step)]


def view_positives(
    inst: np.ndarray,
    objects: list,
    box: Sequence[int],
    by_shape: dict,
    by_pair: dict,
    background: list[int],
    n_prompts: int,
) -> np.ndarray | None:
    """Prompts true of a view, or None when the view is ambiguous (a sliver of an object)."""
    x0, y0, x1, y1 = box
    sub = inst[y0:y1, x0:x1]
    area = sub.size
    counts = np.bincount(sub.ravel(), minlength=len(objects) + 1)
    pos = np.zeros(n_prompts, bool)
    any_obj = False
    for i, o in enumerate(objects):
        k = counts[i + 1]
        if k == 0:
            continue
        cover, inside = k / area, k / max(o.pixels, 1)
        if cover >= 0.15 or inside >= 0.6:
            pos[by_shape[o.shape]] = True
            if o.colour:
                pos[by_pair[(o.colour, o.shape)]] = True
            any_obj = True
        elif cover >= 0.03:
            return None
    if not any_obj:
        pos[background] = True
    return pos


def single_world(world: WorldSettings, size_range: tuple[float, float]) -> WorldSettings:
    """One object per scene, at the single-object sizes (minus the world's held-out band)."""
    return replace(world, objects=(1, 1), size_range=size_range)


def render_range(
    spec: PoolSpec,
    rng: np.random.Generator,
    start: int,
    stop: int,
    advance: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``start .. stop`` of the pool drawn from ``rng``: the single objects that fall in
    the range first, then grid views of scenes (a scene's views left over at ``stop`` are
    dropped)."""
    world, size = spec.world, spec.world.image_size
    prompts, by_shape, by_pair, background = caption_vocabulary(world.shapes)
    images = torch.empty(stop - start, 3, size, size, dtype=torch.uint8)
    positives = torch.zeros(stop - start, len(prompts), dtype=torch.bool)
    lo, hi = spec.scene_sizes
    single = single_world(world, spec.single_size_range)
    singles_end = min(stop, max(start, spec.n_single))
    for i in range(start, singles_end):
        side = int(rng.integers(lo, hi + 1))
        sc = render_scene(rng, replace(single, image_size=side))
        o = sc.objects[0] if sc.objects else None
        images[i - start] = to_uint8(cut(to_float(sc.image), (0, 0, side, side), size))
        if o is None or o.pixels == 0:
            positives[i - start, background] = True
            continue
        positives[i - start, by_shape[o.shape]] = True
        if o.colour:
            positives[i - start, by_pair[(o.colour, o.shape)]] = True
    if advance is not None:
        advance(singles_end - start)
    level_of = np.concatenate([[lv] * lv * lv for lv in (1, 2, 3, 4)])
    w = np.array([spec.level_weights[lv - 1] / (lv * lv) for lv in level_of])
    w = w / w.sum()
    i = singles_end
    while i < stop:
        side = int(rng.integers(lo, hi + 1))
        sc = render_scene(rng, replace(world, image_size=side))
        boxes = grid_pixel_boxes(side)
        img = to_float(sc.image)
        for v in rng.choice(len(boxes), size=4, replace=False, p=w):
            if i >= stop:
                break
            pos = view_positives(
                sc.instances, sc.objects, boxes[v], by_shape, by_pair, background, len(prompts)
            )
            if pos is None:
                continue
            if pos[background].any() and rng.random() > spec.background_fraction * 4:
                continue  # keep background-only views rare
            images[i - start] = to_uint8(cut(img, boxes[v], size))
            positives[i - start] = torch.from_numpy(pos)
            i += 1
            if advance is not None:
                advance(1)
    return images, positives


def chunk_rng(spec: PoolSpec, index: int) -> np.random.Generator:
    if spec.chunk == 0:
        return np.random.default_rng([spec.seed, POOL_SEED_TAG, spec.seed_stream])
    return np.random.default_rng([spec.seed, POOL_SEED_TAG, spec.seed_stream, index])


def _render_chunk(spec: PoolSpec, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    start, stop = spec.chunks()[index]
    return render_range(spec, chunk_rng(spec, index), start, stop)


def _one_thread() -> None:
    torch.set_num_threads(1)


def build_pool(spec: PoolSpec, processes: int = 1, progress: bool = False) -> Pool:
    """Render the pool; with ``chunk > 0`` on up to ``processes`` processes (same result)."""
    prompts = caption_vocabulary(spec.world.shapes)[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.n, desc="toy teacher pool", unit="img", leave=False)
    spans = spec.chunks()
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    if len(spans) == 1 or processes <= 1:
        for index, _ in enumerate(spans):
            parts.append(
                render_range(spec, chunk_rng(spec, index), *spans[index], bar and bar.update)
            )
    else:
        # fork: children need no importable main module and start at once; each sets one torch
        # thread before any torch work, so the parent's OpenMP pool is never used in a child
        ctx = multiprocessing.get_context("fork")
        workers = min(processes, len(spans))
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as ex:
            chunks = ex.map(_render_chunk, [spec] * len(spans), range(len(spans)))
            for (a, b), part in zip(spans, chunks):
                parts.append(part)
                if bar is not None:
                    bar.update(b - a)
    if bar is not None:
        bar.close()
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    positives = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return Pool(images, positives, prompts)
