"""A small CLIP the project trains itself on the shapes world and ships, so the demo needs no
downloads and every machine starts from the same teacher.

Recipe (why it looks like this):
- Image tower: a hybrid ViT (:mod:`zeroseg.toy_vit`) read out through its class token, as real
  CLIP ViTs are, so that its raw patch tokens behave like CLIP's (poorly aligned with text)
  instead of averaging to the global embedding as a pooled CNN's do.
- Labels are free in a synthetic world, so the contrastive loss is taken against the *whole*
  caption vocabulary (shape-only templates, colour + shape, background) with a multi-positive
  target: every prompt that is true of an image is a positive. Per-batch CLIP InfoNCE would
  treat the many identical captions in a batch as negatives.
- The training pool mixes single objects with the views extraction will produce: 1x1 .. 4x4
  grid cells of multi-object scenes of the domain-randomised world, each cut on integer pixel
  bounds and resized with ``zeroseg.views.resize_views`` exactly as extraction resizes them.
- Everything that decides the weights is a count or a seed: the schedule is a step count, the
  pool and batches come from seeded generators and the thread count is fixed, so the same
  settings give the same weights on the same machine (no wall-clock budget anywhere).
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from zeroseg import storage
from zeroseg.data.shapes import (
    SHAPES,
    WorldSettings,
    generalisation_world,
    render_scene,
)
from zeroseg.teacher import MODEL_CONFIG_DIR, Teacher, register_model_configs
from zeroseg.toy_assets import TOY_MODELS
from zeroseg.toy_pool import (
    Pool,
    PoolSpec,
    caption_vocabulary,
    single_world,
    to_float,
)
from zeroseg.toy_pool import build_pool as render_pool
from zeroseg.views import grid_pixel_boxes

MODEL_NAME = TOY_MODELS[0]
MODEL_CONFIG = MODEL_CONFIG_DIR / f"{MODEL_NAME}.json"
RECIPE_VERSION = 2  # bump when the recipe changes what a given set of settings trains
register_model_configs()

EVAL_SEED = 1_000_003  # held-out scenes; training seeds never use this stream


@dataclass
class ToyTeacherSettings:
    """How to pretrain the toy teacher: a step count, a seed and the world; nothing here
    depends on how fast the machine is. ``stop_at`` ends a run early *inside* the schedule of
    ``steps`` (same learning rates, same batches), so a short run reproduces the first
    ``stop_at`` steps of the full one exactly."""

    steps: int = 6000
    stop_at: int | None = None
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    aux_weight: float = 1.0  # supervised shape head on the image embedding (warm start)
    seed: int = 0
    pool_size: int = 48000
    # views per pool generator: > 0 renders seeded chunks in parallel, on ``threads`` processes,
    # to the same pool whatever the process count (the shipped teacher's recipe); 0 draws the
    # whole pool from one generator in order (the recipe of the teacher shipped before it)
    pool_chunk: int = 2000
    single_fraction: float = 0.4  # share of the pool that is single objects
    background_fraction: float = 0.06  # share of scene views that may be background-only
    level_weights: tuple[float, float, float, float] = (0.1, 0.2, 0.3, 0.4)  # 1x1 .. 4x4 views
    single_size_range: tuple[float, float] = (0.25, 0.85)
    scene_sizes: tuple[int, int] = (64, 128)  # pool scenes are drawn at sides in this range
    world: WorldSettings = field(default_factory=WorldSettings)
    eval_every: int = 250  # steps between accuracy checks logged in the curve (0 = off)
    eval_n: int = 400
    threads: int = 2  # torch threads: fixed, since the thread count can change the arithmetic
    model: str = MODEL_NAME  # the architecture, one of TOY_MODELS

    def __post_init__(self) -> None:
        if self.model not in TOY_MODELS:
            known = ", ".join(TOY_MODELS)
            raise ValueError(f"toy CLIP model {self.model!r} unknown; known: {known}")
        if isinstance(self.world, dict):
            self.world = WorldSettings.from_dict(self.world)
        self.level_weights = tuple(self.level_weights)
        self.single_size_range = tuple(self.single_size_range)
        self.scene_sizes = tuple(self.scene_sizes)
        if self.steps < 1 or (self.stop_at is not None and not 1 <= self.stop_at <= self.steps):
            raise ValueError("steps must be >= 1 and stop_at in [1, steps]")

    def recipe(self) -> dict:
        """What decides the weights (``stop_at`` and the evaluation settings do not)."""
        d = asdict(self)
        for k in ("stop_at", "eval_every", "eval_n"):
            d.pop(k)
        if not d["pool_chunk"]:  # recipes recorded before chunked pools existed
            d.pop("pool_chunk")
        if d["model"] == MODEL_NAME:  # recipes recorded before there was a choice
            d.pop("model")
        d["world"] = self.world.to_dict()
        d["recipe_version"] = RECIPE_VERSION
        return d


# ---------------------------------------------------------------------------------------------
# prompts and views


# ---------------------------------------------------------------------------------------------
# training pool


def build_pool(
    settings: ToyTeacherSettings, n: int | None = None, seed_stream: int = 0, progress: bool = False
) -> Pool:
    """Render the training pool of ``settings`` (chunked recipes on ``threads`` processes)."""
    spec = PoolSpec(
        world=settings.world,
        n=settings.pool_size if n is None else n,
        seed=settings.seed,
        single_fraction=settings.single_fraction,
        background_fraction=settings.background_fraction,
        level_weights=settings.level_weights,
        single_size_range=settings.single_size_range,
        scene_sizes=settings.scene_sizes,
        seed_stream=seed_stream,
        chunk=settings.pool_chunk,
    )
    return render_pool(spec, processes=settings.threads, progress=progress)


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

EvalSets = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# "one-object cells" in the sense of a cell that shows its object: at least half of the object's
# pixels inside, covering at least a tenth of the cell (small whole objects count)
WHOLE_CELLS = {"min_inside": 0.5, "min_cover": 0.1}


def eval_sets(
    world: WorldSettings | None = None,
    n: int = 300,
    seed: int = EVAL_SEED,
    single_size_range: tuple[float, float] = ToyTeacherSettings.single_size_range,
    min_background: float = 0.0,
    min_inside: float = 0.0,
    min_cover: float = 0.3,
) -> EvalSets:
    """Held-out (single images, labels, grid cells, labels) of ``world``: one object per image
    at the single-object sizes, and 4x4-grid cells where one object covers >= ``min_cover`` of
    the cell and no other object more than 3%. ``min_background`` > 0 keeps only cells where at
    least that share is background, i.e. cells that show part of the object's outline (a cell
    inside a large object is one flat colour and names no shape). ``min_inside`` > 0 keeps only
    cells holding at least that share of the object's own pixels: a corner of a square and a
    corner of a triangle can be the same pixels, so fragments cap the plain cell accuracy for
    any teacher, while a cell holding most of its object names the shape."""
    world = world or WorldSettings()
    size = world.image_size
    rng = np.random.default_rng([seed, 1])
    singles_of = single_world(world, _clip_range(single_size_range, world))
    singles, ys = [], []
    while len(singles) < n:
        sc = render_scene(rng, singles_of)
        if not sc.objects or sc.objects[0].pixels == 0:
            continue
        singles.append(to_float(sc.image))
        ys.append(SHAPES.index(sc.objects[0].shape))
    rng = np.random.default_rng([seed, 2])
    cells, yc = [], []
    boxes = grid_pixel_boxes(size, levels=(4,))
    while len(cells) < n:
        sc = render_scene(rng, world)
        img = to_float(sc.image)
        for (x0, y0, x1, y1), top in one_object_cells(
            sc, boxes, min_cover, min_background, min_inside
        ):
            cells.append(img[:, y0:y1, x0:x1])
            yc.append(SHAPES.index(sc.objects[top].shape))
            if len(cells) >= n:
                break
    return torch.stack(singles), torch.tensor(ys), torch.stack(cells), torch.tensor(yc)


def one_object_cells(
    scene,
    boxes: Sequence[Sequence[int]],
    min_cover: float = 0.3,
    min_background: float = 0.0,
    min_inside: float = 0.0,
) -> list[tuple[tuple[int, int, int, int], int]]:
    """The ``(box, object index)`` of every cell of ``scene`` that shows one object in the sense
    of :func:`eval_sets` (shared with the cell-ceiling bench, which must pick the same cells)."""
    out = []
    for x0, y0, x1, y1 in boxes:
        sub = scene.instances[y0:y1, x0:x1]
        counts = np.bincount(sub.ravel(), minlength=len(scene.objects) + 1)[1:] / sub.size
        if not len(counts):
            continue
        top = int(counts.argmax())
        rest = np.delete(counts, top)
        outline = min_background <= 0 or 1.0 - counts.sum() >= min_background
        inside = counts[top] * sub.size / max(scene.objects[top].pixels, 1) >= min_inside
        if counts[top] >= min_cover and rest.max(initial=0) <= 0.03 and outline and inside:
            out.append(((x0, y0, x1, y1), top))
    return out


def _clip_range(r: tuple[float, float], world: WorldSettings) -> tuple[float, float]:
    """Single-object sizes restricted to a world whose size range is narrower (a held-out
    band): the generalisation split's singles stay inside its band."""
    lo, hi = max(r[0], world.size_range[0]), min(r[1], world.size_range[1])
    return (lo, hi) if lo <= hi else tuple(world.size_range)


def zero_shot_accuracy(
    teacher: Teacher,
    world: WorldSettings | None = None,
    n: int = 300,
    seed: int = EVAL_SEED,
    templates: Sequence[str] = ("a photo of a {}.",),
    sets: EvalSets | None = None,
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


def lab_accuracy(teacher: Teacher, settings: ToyTeacherSettings, sets: dict | None = None) -> dict:
    """Zero-shot accuracy on held-out scenes of the training world (``single``, ``cell``,
    ``cell_whole``) and of the generalisation world (``gen_`` + the same)."""
    sets = sets or lab_eval_sets(settings)
    out = {}
    for prefix, world in (("", "lab"), ("gen_", "generalisation")):
        acc = zero_shot_accuracy(teacher, sets=sets[world])
        whole = zero_shot_accuracy(teacher, sets=sets[world + "_whole"])
        out.update(
            {prefix + "single": acc["single"], prefix + "cell": acc["cell"]},
        )
        out[prefix + "cell_whole"] = whole["cell"]
    return out


def lab_eval_sets(settings: ToyTeacherSettings) -> dict[str, EvalSets]:
    """The held-out sets the curve and the goals are measured on."""
    n, ssr = settings.eval_n, settings.single_size_range
    sets = {}
    for key, world in (("lab", settings.world), ("generalisation", generalisation_world(96))):
        sets[key] = eval_sets(world, n, single_size_range=ssr)
        sets[key + "_whole"] = eval_sets(world, n, single_size_range=ssr, **WHOLE_CELLS)
    return sets


# ---------------------------------------------------------------------------------------------
# training


def build_model(seed: int = 0, name: str = MODEL_NAME) -> torch.nn.Module:
    """A randomly initialised toy CLIP of architecture ``name`` (seeded)."""
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
    return model


def shipped_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights as the package ships them: float16 (half the bytes; the accuracies are
    measured after this rounding), contiguous, no shared storage."""
    return {
        k: (v.half() if v.is_floating_point() else v).contiguous().clone()
        for k, v in model.state_dict().items()
    }


def save_checkpoint(model: torch.nn.Module, out_path: str, metadata: dict | None = None) -> None:
    """Write the rounded weights as safetensors through :func:`zeroseg.storage.write_bytes`, so a
    reader never sees half a checkpoint on a local disk or an object store. ``metadata``
    (str -> str) goes into the safetensors header."""
    from safetensors.torch import save

    storage.write_bytes(out_path, save(shipped_state_dict(model), metadata=metadata))


def _round_like_shipped(model: torch.nn.Module) -> None:
    """Round the live weights to what :func:`save_checkpoint` writes, so accuracies measured
    on the live model are the shipped checkpoint's."""
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())


def lr_at(step: int, s: ToyTeacherSettings) -> float:
    """Linear warm-up, then cosine decay to zero at ``s.steps`` (a function of the step alone)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    t = (step - s.warmup_steps) / max(s.steps - s.warmup_steps, 1)
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def pretrain(
    out_path: str,
    settings: ToyTeacherSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    state_path: str | None = None,
    state_every: int = 250,
) -> dict:
    """Train the toy teacher and save it; returns the final accuracies, the step count and the
    accuracy curve (every ``eval_every`` steps, on held-out scenes of both worlds).

    ``state_path`` makes the run resumable: every ``state_every`` steps (and at the last step)
    the whole training state is written there, and a run that finds a state of the same recipe
    continues from it with the same weights an uninterrupted run would reach. A long schedule
    can so be trained in pieces (``stop_at``), and a killed run loses at most ``state_every``
    steps."""
    s = settings or ToyTeacherSettings()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _pretrain(out_path, s, progress, log, state_path, state_every)
    finally:
        torch.set_num_threads(threads_before)


class ResumeError(ValueError):
    """A saved training state that this run cannot continue from."""


def _load_state(state_path: str | None, s: ToyTeacherSettings) -> dict | None:
    if state_path is None or not storage.exists(state_path):
        return None
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(state_path)), weights_only=True)
    except Exception as exc:
        raise ResumeError(
            f"cannot read the saved teacher training state {state_path} ({exc}); remove it to "
            "train from the start"
        ) from exc
    if json.dumps(state.get("recipe"), sort_keys=True) != json.dumps(s.recipe(), sort_keys=True):
        raise ResumeError(
            f"the saved teacher training state {state_path} is of another recipe; remove it (or "
            "pass --force) to train this one from the start"
        )
    if state["step"] > (s.stop_at or s.steps):
        raise ResumeError(
            f"the saved teacher training state {state_path} is at step {state['step']}, past "
            f"this run's last step {s.stop_at or s.steps}"
        )
    return state


def _save_state(state_path: str, s: ToyTeacherSettings, **state) -> None:
    buf = io.BytesIO()
    torch.save({"recipe": s.recipe(), **state}, buf)
    storage.write_bytes(state_path, buf.getvalue())


def _pretrain(
    out_path: str,
    s: ToyTeacherSettings,
    progress: bool,
    log,
    state_path: str | None = None,
    state_every: int = 250,
) -> dict:
    saved = _load_state(state_path, s)  # refuse a state of another recipe before any work
    t0 = time.perf_counter()
    pool = build_pool(s, progress=progress)
    sets = lab_eval_sets(s)
    t_pool = time.perf_counter() - t0
    log(
        f"toy teacher: pool of {len(pool.images)} views in {t_pool:.0f}s; "
        f"{s.stop_at or s.steps} of {s.steps} steps of {s.batch}"
    )
    model = build_model(s.seed, s.model)
    model.train()
    teacher = Teacher(s.model, model=model)
    tokens = open_clip.get_tokenizer(s.model)(pool.prompts)
    # supervised warm start: one learnable prototype per shape (+ background), the image
    # embedding is classified against them from the first step, so the image tower learns shapes
    # while the text tower is still finding its way; the contrastive term aligns text to it.
    prompts, by_shape, _, background = caption_vocabulary(s.world.shapes)
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
    mean, std = teacher._mean, teacher._std
    last = s.stop_at or s.steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=last, desc="toy teacher", unit="step")

    def evaluate(step: int) -> dict:
        """Accuracies of the weights as they would ship (rounded), on a copy."""
        shipped = copy.deepcopy(model).eval()
        _round_like_shipped(shipped)
        acc = lab_accuracy(Teacher(s.model, model=shipped), s, sets)
        return {"step": step, **{k: round(v, 4) for k, v in acc.items()}}

    curve: list[dict] = []
    loss_ema = None
    n = len(pool.images)
    perm = torch.randperm(n, generator=gen)
    cursor = first = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        with torch.no_grad():
            head.copy_(saved["head"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        perm, cursor, first = saved["perm"], int(saved["cursor"]), int(saved["step"])
        loss_ema, curve = saved["loss_ema"], list(saved["curve"])
        log(f"toy teacher: resuming at step {first} from {state_path}")
        if bar is not None:
            bar.update(first)
        if s.eval_every and 0 < first < last and first % s.eval_every == 0:
            # a piece that stopped here logged this point as its final one, outside the state
            if not curve or curve[-1]["step"] != first:
                curve.append(evaluate(first))

    def save_state(done: int) -> None:
        _save_state(
            state_path,
            s,
            step=done,
            model=model.state_dict(),
            head=head.detach(),
            optimizer=opt.state_dict(),
            generator=gen.get_state(),
            perm=perm,
            cursor=cursor,
            loss_ema=loss_ema,
            curve=curve,
        )

    for step in range(first, last):
        lr = lr_at(step, s)
        for g in opt.param_groups:
            g["lr"] = lr
        if cursor + s.batch > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + s.batch]
        cursor += s.batch
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
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.1e}")
        done = step + 1
        if s.eval_every and done % s.eval_every == 0 and done < last:
            point = evaluate(done)
            curve.append(point)
            log(
                f"toy teacher: step {done} loss {loss_ema:.3f} single {point['single']:.3f} "
                f"cell {point['cell']:.3f} gen {point['gen_single']:.3f}/{point['gen_cell']:.3f}"
            )
        if state_path is not None and (done % state_every == 0 or done == last):
            save_state(done)
    if bar is not None:
        bar.close()
    final = evaluate(last)
    curve.append(final)
    save_checkpoint(model, out_path)
    log(
        f"toy teacher: {last} steps: single {final['single']:.3f} cell {final['cell']:.3f}, "
        f"generalisation single {final['gen_single']:.3f} cell {final['gen_cell']:.3f} "
        f"-> {out_path}"
    )
    acc = {k: v for k, v in final.items() if k != "step"}
    # wall-clock time is reported, never used to decide anything
    seconds = {"pool": round(t_pool, 1), "total": round(time.perf_counter() - t0, 1)}
    return {**acc, "steps": last, "curve": curve, "seconds": seconds}
