"""A small CLIP the project trains itself on the shapes world, so the demo needs no downloads.

Recipe (why it looks like this):
- Image tower: timm's ``test_resnet`` (0.38M params) through open_clip's timm adapter. A
  from-scratch ViT learns rotated shapes far too slowly on a few CPU cores; a small CNN does not.
- Labels are free in a synthetic world, so the contrastive loss is taken against the *whole*
  caption vocabulary (a few dozen prompts: shape-only templates, colour + shape, background) with
  a multi-positive target: every prompt that is true of an image is a positive. Per-batch CLIP
  InfoNCE would treat the many identical captions in a batch as negatives.
- The training pool mixes single objects (at several scales) with the views extraction will
  produce: 1x1 .. 4x4 grid cells of multi-object scenes, each cut on integer pixel bounds and
  resized with ``zeroseg.views.resize_views`` exactly as extraction resizes them.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from zeroseg.data.shapes import COLOURS, SHAPES, WorldSettings, render_scene
from zeroseg.teacher import MODEL_CONFIG_DIR, Teacher, register_model_configs
from zeroseg.views import grid_pixel_boxes, resize_views

MODEL_NAME = "zeroseg-toyclip"
MODEL_CONFIG = MODEL_CONFIG_DIR / f"{MODEL_NAME}.json"
register_model_configs()

SHAPE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "a {}.")
COLOUR_TEMPLATE = "a photo of {} {} {}."  # article, colour, shape
BACKGROUND_PROMPTS: tuple[str, ...] = ("a photo of the background.", "a photo of nothing.")
EVAL_SEED = 1_000_003  # held-out scenes; training seeds never use this stream


@dataclass
class ToyTeacherSettings:
    """How to pretrain the toy teacher. ``seconds`` bounds training time; ``steps`` (if set)
    bounds the step count instead and makes the learning-rate schedule step-based."""

    seconds: float = 360.0
    steps: int | None = None
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    cooldown: float = 0.25  # final share of the budget over which the lr decays linearly to 0
    aux_weight: float = 1.0  # supervised shape head on the image embedding (warm start)
    seed: int = 0
    pool_size: int = 24000  # capped at 200 views per budget second for short budgets
    single_fraction: float = 0.45  # share of the pool that is single objects
    background_fraction: float = 0.06  # share of scene views that may be background-only
    level_weights: tuple[float, float, float, float] = (0.1, 0.2, 0.3, 0.4)  # 1x1 .. 4x4 views
    single_size_range: tuple[float, float] = (0.25, 0.85)
    world: WorldSettings = field(default_factory=WorldSettings)
    eval_every: float = 60.0  # seconds between accuracy checks logged in the curve (0 = off)
    eval_n: int = 300
    threads: int | None = None  # fixed torch threads; None: all CPUs, re-probed while training

    def __post_init__(self) -> None:
        if isinstance(self.world, dict):
            self.world = WorldSettings.from_dict(self.world)
        self.level_weights = tuple(self.level_weights)
        self.single_size_range = tuple(self.single_size_range)


# ---------------------------------------------------------------------------------------------
# prompts and views


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


def _to_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# training pool


@dataclass
class Pool:
    images: torch.Tensor  # (N, 3, S, S) uint8
    positives: torch.Tensor  # (N, P) bool over the caption vocabulary
    prompts: list[str]


def _view_positives(
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
            pos[by_pair[(o.colour, o.shape)]] = True
            any_obj = True
        elif cover >= 0.03:
            return None
    if not any_obj:
        pos[background] = True
    return pos


def build_pool(
    settings: ToyTeacherSettings, n: int | None = None, seed_stream: int = 0, progress: bool = False
) -> Pool:
    """Render the training pool: single objects plus labelled grid views of scenes."""
    n = settings.pool_size if n is None else n
    world = settings.world
    size = world.image_size
    prompts, by_shape, by_pair, background = caption_vocabulary(world.shapes, world.colours)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    positives = torch.zeros(n, len(prompts), dtype=torch.bool)
    rng = np.random.default_rng([settings.seed, 7919, seed_stream])
    single_world = replace(world, objects=(1, 1), size_range=settings.single_size_range)
    n_single = int(round(n * settings.single_fraction))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="toy teacher pool", unit="img", leave=False)
    for i in range(n_single):
        sc = render_scene(rng, single_world)
        o = sc.objects[0]
        images[i] = torch.from_numpy(sc.image).permute(2, 0, 1)
        positives[i, by_shape[o.shape]] = True
        positives[i, by_pair[(o.colour, o.shape)]] = True
    if bar is not None:
        bar.update(n_single)
    boxes = grid_pixel_boxes(size)
    level_of = np.concatenate([[lv] * lv * lv for lv in (1, 2, 3, 4)])
    w = np.array([settings.level_weights[lv - 1] / (lv * lv) for lv in level_of])
    w = w / w.sum()
    i = n_single
    while i < n:
        sc = render_scene(rng, world)
        img = _to_float(sc.image)
        order = rng.choice(len(boxes), size=4, replace=False, p=w)
        for v in order:
            if i >= n:
                break
            pos = _view_positives(
                sc.instances, sc.objects, boxes[v], by_shape, by_pair, background, len(prompts)
            )
            if pos is None:
                continue
            if pos[background].any() and rng.random() > settings.background_fraction * 4:
                continue  # keep background-only views rare
            images[i] = _to_uint8(cut(img, boxes[v], size))
            positives[i] = torch.from_numpy(pos)
            i += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Pool(images, positives, prompts)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rot90 and flips, per quarter of the batch (shapes are rotation-invariant classes)."""
    out = []
    for chunk in x.chunk(4):
        k = int(torch.randint(4, (1,), generator=gen))
        chunk = torch.rot90(chunk, k, dims=(2, 3))
        if torch.rand(1, generator=gen) < 0.5:
            chunk = chunk.flip(3)
        out.append(chunk)
    return torch.cat(out)


def multi_positive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every true prompt is a positive (soft uniform targets)."""
    logits = scale * image_emb @ text_emb.t()  # (B, P)
    pos = positives.float()
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    present = pos.sum(0) > 0
    lt = F.log_softmax(logits[:, present], 0)
    pt = pos[:, present]
    t2i = -(pt / pt.sum(0, keepdim=True) * lt).sum(0).mean()
    return 0.5 * (i2t + t2i)


# ---------------------------------------------------------------------------------------------
# evaluation


def eval_sets(
    world: WorldSettings | None = None, n: int = 300, seed: int = EVAL_SEED
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out (single images, labels, grid cells, labels); cells are 4x4-grid cells where one
    object covers >= 30% of the cell and no other object more than 3%."""
    world = world or WorldSettings()
    size = world.image_size
    rng = np.random.default_rng([seed, 1])
    single_world = replace(world, objects=(1, 1))
    singles, ys = [], []
    for _ in range(n):
        sc = render_scene(rng, single_world)
        singles.append(_to_float(sc.image))
        ys.append(SHAPES.index(sc.objects[0].shape))
    rng = np.random.default_rng([seed, 2])
    cells, yc = [], []
    boxes = grid_pixel_boxes(size, levels=(4,))
    while len(cells) < n:
        sc = render_scene(rng, world)
        img = _to_float(sc.image)
        for x0, y0, x1, y1 in boxes:
            sub = sc.instances[y0:y1, x0:x1]
            counts = np.bincount(sub.ravel(), minlength=len(sc.objects) + 1)[1:] / sub.size
            if not len(counts):
                continue
            top = int(counts.argmax())
            rest = np.delete(counts, top)
            if counts[top] >= 0.3 and (rest.max(initial=0) <= 0.03):
                cells.append(img[:, y0:y1, x0:x1])
                yc.append(SHAPES.index(sc.objects[top].shape))
            if len(cells) >= n:
                break
    return torch.stack(singles), torch.tensor(ys), torch.stack(cells), torch.tensor(yc)


def zero_shot_accuracy(
    teacher: Teacher,
    world: WorldSettings | None = None,
    n: int = 300,
    seed: int = EVAL_SEED,
    templates: Sequence[str] = ("a photo of a {}.",),
    sets: tuple | None = None,
) -> dict[str, float]:
    """Shape accuracy by argmax over ``templates`` x SHAPES prompts on held-out data."""
    xs, ys, xc, yc = sets if sets is not None else eval_sets(world, n, seed)
    text = teacher.encode_text(list(SHAPES), list(templates))
    out = {}
    for name, x, y in (("single", xs, ys), ("cell", xc, yc)):
        preds = []
        for b in range(0, len(x), 256):
            preds.append((teacher.encode_images(x[b : b + 256]) @ text.t()).argmax(1))
        out[name] = float((torch.cat(preds) == y).float().mean())
    return out


# ---------------------------------------------------------------------------------------------
# training


def build_model(seed: int = 0) -> torch.nn.Module:
    """Randomly initialised ``zeroseg-toyclip`` (seeded)."""
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    return model


def save_checkpoint(model: torch.nn.Module, out_path: str) -> None:
    """``torch.save(state_dict)`` to a temp file, then rename (local) or upload (fsspec URL)."""
    if "://" in out_path and not out_path.startswith("file://"):
        import fsspec

        fd, tmp = tempfile.mkstemp(suffix=".pt")
        os.close(fd)
        try:
            torch.save(model.state_dict(), tmp)
            fs, path = fsspec.core.url_to_fs(out_path)
            fs.put_file(tmp, path + ".partial")
            fs.mv(path + ".partial", path)
        finally:
            os.unlink(tmp)
        return
    path = Path(out_path.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ThreadTuner:
    """Keeps torch's thread count at whichever of {1, all CPUs} trains faster right now.

    One thread per core is fastest on an idle machine, but when other processes hold cores the
    threads wait on each other and a step becomes tens of times slower (measured: 20-30x on two
    shared cores). Every ``every`` seconds a few steps are timed with the other setting.
    """

    def __init__(self, fixed: int | None = None, every: float = 45.0, probe_steps: int = 6):
        self.max = os.cpu_count() or 1
        self.fixed = fixed
        self.current = fixed or self.max
        self.every, self.probe_steps = every, probe_steps
        self._times: list[float] = []
        self._probe: tuple[int, list[float]] | None = None
        self._last = -math.inf
        torch.set_num_threads(self.current)

    def record(self, step_seconds: float) -> None:
        if self.fixed or self.max == 1:
            return
        now = time.perf_counter()
        if self._probe is None:
            self._times = (self._times + [step_seconds])[-5:]
            if len(self._times) == 5 and now - self._last >= self.every:
                other = 1 if self.current > 1 else self.max
                self._probe = (other, [])
                torch.set_num_threads(other)
            return
        other, times = self._probe
        times.append(step_seconds)
        if len(times) >= self.probe_steps:
            if float(np.median(times[1:])) < float(np.median(self._times)):
                self.current = other
            torch.set_num_threads(self.current)
            self._probe, self._times, self._last = None, [], now


def pretrain(
    out_path: str,
    settings: ToyTeacherSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the toy teacher and save it; returns accuracies, time, steps and the accuracy curve.

    ``seconds`` covers pool rendering and training (the final evaluation is extra).
    """
    s = settings or ToyTeacherSettings()
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # rendering is single-threaded; tiny torch ops only lose to threads
    n_pool = s.pool_size
    if s.steps is None:  # a short budget must not be spent rendering (about 2000 views/s)
        n_pool = min(n_pool, max(1000, int(s.seconds * 200)))
    pool = build_pool(s, n=n_pool, progress=progress)
    tuner = ThreadTuner(s.threads)
    sets = eval_sets(s.world, s.eval_n)
    log(f"toy teacher: pool of {len(pool.images)} views in {time.perf_counter() - t0:.1f}s")
    model = build_model(s.seed)
    model.train()
    teacher = Teacher(MODEL_NAME, model=model)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    tokens = tokenizer(pool.prompts)
    # supervised warm start: one learnable prototype per shape (+ background), the image
    # embedding is classified against them from the first step, so the image tower learns shapes
    # while the text tower is still finding its way; the contrastive term aligns text to it.
    prompts, by_shape, _, background = caption_vocabulary(s.world.shapes, s.world.colours)
    shape_of = torch.zeros(len(prompts), len(by_shape) + 1)
    for j, ids in enumerate(by_shape.values()):
        shape_of[ids, j] = 1.0
    shape_of[background, -1] = 1.0
    head = torch.nn.Parameter(torch.randn(len(by_shape) + 1, teacher.embed_dim))
    decay, no_decay = [head], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=s.lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(s.seed)
    mean = teacher._mean
    std = teacher._std
    budget = s.seconds
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps or None, desc="toy teacher", unit="step")
    curve: list[dict] = []
    step, last_eval, loss_ema = 0, time.perf_counter(), None
    n = len(pool.images)
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    while True:
        elapsed = time.perf_counter() - t0
        if s.steps is not None:
            if step >= s.steps:
                break
            frac = step / max(s.steps, 1)
        else:
            if elapsed >= budget:
                break
            frac = elapsed / budget
        lr = s.lr * min(1.0, (step + 1) / s.warmup_steps, (1.0 - frac) / max(s.cooldown, 1e-6))
        for g in opt.param_groups:
            g["lr"] = lr
        if cursor + s.batch > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + s.batch]
        cursor += s.batch
        t_step = time.perf_counter()
        x = _augment(pool.images[idx].float().div_(255.0), gen)
        img = F.normalize(model.encode_image((x - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        pos = pool.positives[idx]
        loss = multi_positive_loss(img, txt, pos, model.logit_scale.exp())
        if s.aux_weight:
            protos = F.normalize(head, dim=-1)
            aux = multi_positive_loss(
                img, protos, (pos.float() @ shape_of) > 0, model.logit_scale.exp()
            )
            loss = loss + s.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        lv = float(loss.detach())
        tuner.record(time.perf_counter() - t_step)
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.1e}", threads=tuner.current)
        if s.eval_every and time.perf_counter() - last_eval >= s.eval_every:
            model.eval()
            acc = zero_shot_accuracy(teacher, sets=sets)
            model.train()
            last_eval = time.perf_counter()
            point = {"seconds": round(last_eval - t0, 1), "step": step, **acc}
            point["threads"] = tuner.current
            curve.append(point)
            log(
                f"toy teacher: {point['seconds']:.0f}s step {step} loss {loss_ema:.3f} "
                f"single {acc['single']:.3f} cell {acc['cell']:.3f} threads {tuner.current}"
            )
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    acc = zero_shot_accuracy(teacher, sets=sets)
    curve.append({"seconds": round(seconds, 1), "step": step, **acc})
    save_checkpoint(model, out_path)
    torch.set_num_threads(threads_before)
    log(
        f"toy teacher: done in {seconds:.0f}s, {step} steps: "
        f"single {acc['single']:.3f} cell {acc['cell']:.3f} -> {out_path}"
    )
    return {**acc, "seconds": seconds, "steps": step, "curve": curve}
