"""Typed configuration: dataclass schema -> YAML files -> ``key=value`` overrides.

One schema serves every stage so that a single YAML describes a whole run and each stage reads
the sections it needs. A YAML file may build on others through a top-level ``defaults:`` list
(``defaults: [paper_exact]``), so a job is a small overlay on the paper's recipe instead of a
copy of it. Validation happens here, before any cluster work: an unknown key or a value of the
wrong type raises :class:`ConfigError` naming the dotted key (and the file it came from).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .toy_assets import SHIPPED

# How the student's pixels get class scores (zeroseg.predict.student_cosines): "segments" (the
# paper: pixel -> its group -> the group's segment token) or "segments+patches" (beyond the
# paper: averaged with the student's per-patch projections; needs patch_proj) or "patches" (the
# per-patch projections alone, to see which half carries a result). Kept here, with no
# torch import, so the config check and the CLI's choices read the same list.
STUDENT_READOUTS = ("segments", "segments+patches", "patches")
# What eval scores next to the student. The teacher's dense read-outs (what its last block
# computes, zeroseg.last_block); the last three change a ViT's attention and need a ViT teacher.
TEACHER_DENSE_METHODS = ("maskclip_dense", "dense_raw", "sclip", "clearclip", "naclip")
VIT_ONLY_METHODS = ("sclip", "clearclip", "naclip")
# train.augment's choices (their poses: zeroseg.augment.AUGMENT_POSES, which imports torch).
AUGMENT_MODES = ("none", "hflip", "dihedral")
# train.affinity_stride's choices: each keeps some of the colour prior's neighbour distances
# (1, 2 and 4 px; zeroseg.losses.color_affinity), so the prior still ties one colour together.
AFFINITY_STRIDES = (1, 2, 4)
BASELINE_METHODS = ("grid_crop", "multigrid_crop", *TEACHER_DENSE_METHODS, "all_background")

__all__ = [
    "MISSING",
    "Config",
    "actor_range",
    "ConfigError",
    "load_config",
    "config_files",
    "config_to_dict",
    "paper_deviations",
    "PAPER_RECIPE",
]

# The top-level key of a YAML file that names the files it builds on.
DEFAULTS_KEY = "defaults"
# Where a job changes its student preset's fields.
STUDENT_OVERRIDES = "student.overrides"
ConfigPaths = str | Path | Sequence[str | Path] | None


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the offending key."""


@dataclass
class StorageConfig:
    # Every output (caches, checkpoints, metrics) goes below this fsspec URL.
    root: str = "runs/demo"


@dataclass
class DataConfig:
    # Unlabeled training images on any fsspec URL: a folder / prefix (recursive), a list file
    # (.txt / .lst one URI per line, .parquet with a `uri` column) or .tar shards of images.
    train: str = "${storage.root}/data/train"
    # Labeled benchmark split (images/ + masks/ + classes.json) used by eval.
    bench: str = "${storage.root}/data/bench"
    # Labeled validation split used only to tune the background threshold.
    val: str = "${storage.root}/data/val"
    # Optional labeled generalisation split drawn with what the lab teacher never trained on
    # (zeroseg.data.shapes.generalisation_world: held-out colours, background families and
    # object sizes, another resolution); eval scores the student and every baseline on it with
    # the rules chosen on val when the split exists, to measure how far they generalise.
    generalisation: str = "${storage.root}/data/generalisation"


@dataclass
class WorldConfig:
    """The synthetic shapes world that `zeroseg run` generates when the splits are missing."""

    generate: bool = True
    image_size: int = 64
    n_train: int = 1500
    n_val: int = 60
    n_bench: int = 200
    seed: int = 0
    # The generalisation split (0 = none): scenes of zeroseg.data.shapes.generalisation_world
    # (the held-out settings are defined there, once) at this resolution.
    n_generalisation: int = 0
    generalisation_image_size: int = 96
    # Object diameters [lo, hi] as fractions of image_size for the train, val and bench splits
    # (empty: the world's own range, zeroseg.data.shapes.WorldSettings.size_range). Larger
    # objects fill more of each grid cell the teacher embeds.
    object_sizes: list[float] = field(default_factory=list)


@dataclass
class TeacherConfig:
    # open_clip architecture name; `zeroseg-toyclip` is the project's own toy CLIP
    # (`zeroseg-toyclip-small`: the same with a 3-block image tower, which `teacher-pretrain`
    # trains as a student init).
    model: str = "zeroseg-toyclip"
    # open_clip pretrained tag, local path or fsspec URI. Empty with the toy model: the toy
    # teacher the package ships when the recipe below is the shipped one, else the one
    # `teacher-pretrain` trains (once) for that recipe.
    pretrained: str = ""
    normalize: bool = True
    # Where `teacher-pretrain` caches toy teachers of other recipes (keyed by the recipe).
    cache_dir: str = "~/.cache/zeroseg/teachers"
    # Toy-teacher recipe: a step count and a seed (the shipped teacher's by default).
    pretrain_steps: int = 6000
    pretrain_seed: int = 0
    # Extra toy-teacher recipe fields (see zeroseg.toy_teacher.ToyTeacherSettings).
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    templates: list[str] = field(
        default_factory=lambda: ["a photo of a {}.", "a {}.", "a picture of a {}."]
    )


@dataclass
class ViewsConfig:
    # Grid levels: 1 -> whole crop, n -> n x n non-overlapping cells.
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    # Side of the student's centre crop (views are cut from it).
    crop_size: int = 64


@dataclass
class ExtractConfig:
    images_per_shard: int = 128
    batch_size: int = 64
    # Teacher actor pool: a fixed pool of num_actors, or an autoscaling one between
    # min_actors and max_actors (0 = num_actors). None of these change the cache.
    num_actors: int = 1
    min_actors: int = 0
    max_actors: int = 0
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    # Custom Ray resource every actor asks for (a tiny amount), so the pool runs only on nodes
    # that offer it, e.g. an extraction worker group started with --resources.
    resource_label: str = ""
    # Where an actor runs its teacher: auto = the GPU Ray gave it, else the CPU. The stage never
    # depends on it (a cache made on a GPU equals one made on CPUs up to float rounding).
    device: str = "auto"  # auto | cpu | cuda
    # Autocast of the teacher forward. Half precision halves GPU time but changes the
    # embeddings, so a non-fp32 setting is part of the cache's fingerprint.
    precision: str = "fp32"  # fp32 | bf16 | fp16
    max_retries: int = 2
    mode: str = "resume"  # resume | overwrite
    # How a rerun checks the finished shards before trusting them: "sizes" (every object present
    # with its size: one listing) or "full" (also every checksum: reads the whole cache).
    verify: str = "sizes"
    redo_shards: list[int] = field(default_factory=list)


@dataclass
class StudentConfig:
    preset: str = "student-tiny"
    # Preset fields to override, grouped ({"encoder": {"depth": 6}}) or flat ({"depth": 6}).
    # Held flat (zeroseg.student_config.flat_student_config): either spelling resolves, and so
    # fingerprints, the same.
    overrides: dict[str, Any] = field(default_factory=dict)
    # A pretrained ViT encoder to start from (zeroseg.models.encoder_init): a timm, MAE or
    # open_clip checkpoint, or the output of `zeroseg student-pretrain`, on any fsspec URI;
    # "shipped": the packaged small toy CLIP's image tower (needs stem.kind=hybrid,
    # stem.pos_embed=learned, encoder.depth=3, encoder.mlp_ratio=3). Empty: random weights.
    init: str = ""

    def __post_init__(self) -> None:
        if self.overrides:
            from .student_config import flat_student_config

            self.overrides = flat_student_config(self.overrides, STUDENT_OVERRIDES)


@dataclass
class TrainConfig:
    # --- the paper's recipe: schedule, masking and the three losses (defaults = the paper) ---
    name: str = "demo"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    # Share of the patches the encoder does not see (the paper: 0.6). The student's one mask
    # ratio: the architecture has none of its own.
    mask_ratio: float = 0.6
    num_workers: int = 1
    cpus_per_worker: float = 2.0
    use_gpu: bool = False
    checkpoint_every_steps: int = 100
    seed: int = 0
    # `zeroseg run` only: train and score one student per seed on the one cache and report
    # their mean and spread (the first seed's student is the run's checkpoint and overlays).
    # Empty: train.seed alone. Each seed's run is the single-seed run of train.seed=<seed>.
    seeds: list[int] = field(default_factory=list)
    w_multiscale: float = 1.0
    w_matching: float = 1.0
    w_recon: float = 1.0
    # Grid levels of the cache that training uses (empty = every cached level): the grid
    # ablation trains on a subset of one cache. Must include 1. The per-patch terms use the
    # finest level in use.
    view_levels: list[int] = field(default_factory=list)
    # Grid levels whose cells are the per-patch terms' targets, each patch scored against the
    # cell of every listed level that contains it (empty = the finest level in use). On the lab,
    # the 3x3 and 4x4 cells together name shapes better than either alone (docs/results.md).
    dense_levels: list[int] = field(default_factory=list)
    # "all": z is distilled to every view (the paper); "global": to the whole image v1 only.
    multiscale_views: str = "all"
    # Beyond the paper (which takes a centre crop only, so the cached views stay valid): each
    # training image in a random pose that keeps them valid, its views permuted to follow
    # (zeroseg.augment). "hflip": mirrored or not (right for CLIP on photos); "dihedral": any of
    # the 8 flips and quarter turns (for worlds without an up, such as the shapes world).
    augment: str = "none"
    # --- beyond the paper: every term is off at its default, the paper's value; the shapes
    # world's recipe turns them on in jobs/recipes/beyond_paper.yaml (docs/student_research.md)
    # Per-patch terms against the teacher embedding of the 4x4 cell each patch lies in; they
    # keep the grouping from collapsing on the shapes world.
    w_dense: float = 0.0
    w_patch: float = 0.0
    # A pairwise colour prior on the grouping (neighbouring pixels of one colour share a group,
    # of clearly different colours do not).
    w_affinity: float = 0.0
    # The colour prior on every s-th row and column (the blurred image averaged over s x s
    # blocks, the assignment upsampled to that grid): its pixel pairs cost s*s times less, and
    # distances that are not a multiple of s are left out. 1 = every pixel.
    affinity_stride: int = 1
    # Each view's embedding against the mean of the per-patch projections over the patches its
    # box holds (every level in use): patches inside a cell may differ as long as their mean
    # agrees, so the boxes together locate the object (zeroseg.losses.region_pooling).
    w_region: float = 0.0
    # Score the per-patch terms as cosine after subtracting the dataset-mean teacher embedding,
    # so differences between classes dominate them.
    center_targets: bool = False
    # --- the paper's recipe, continued ---
    grad_clip: float = 1.0
    max_steps: int = 0  # 0 = run all epochs; >0 caps the step count (smoke tests)
    # "none": train.lr is the learning rate; "mae": train.lr is a base rate scaled by the global
    # batch, lr = train.lr * global_batch / 256 (the MAE convention the paper's recipe follows).
    lr_scaling: str = "none"
    # "bf16": bf16 autocast on GPU workers (CPU workers always compute in fp32); "fp32": never.
    precision: str = "bf16"
    # --- operational keys: none of these change the training fingerprint ---
    # Also checkpoint when this many minutes have passed since the last one (0 = off).
    checkpoint_every_minutes: float = 0.0
    checkpoints_to_keep: int = 2
    # Worker-group restarts Ray Train allows before the run fails (-1 = unlimited); each restart
    # resumes from the newest checkpoint.
    max_failures: int = 2
    # Custom Ray resource every training worker asks for (a tiny amount), pinning the workers to
    # the nodes that offer it, e.g. a training worker group started with --resources.
    resource_label: str = ""
    # How workers read the cache: "memory" loads each worker's rows at start, "stream" reads
    # shards in the background while training (any size), "auto" streams caches whose payload
    # is above stream_above_mb.
    reader: str = "auto"
    stream_above_mb: float = 1024.0
    # Streaming reader: rows held by the in-memory shuffle buffer and batches read ahead.
    shuffle_buffer: int = 2048
    prefetch_batches: int = 4
    log_every_steps: int = 10


@dataclass
class EvalConfig:
    # One benchmark reader by name (zeroseg.benchmarks: shapes | voc | context | coco_object).
    benchmark: str = "shapes"
    # Several benchmarks in one job (non-empty overrides eval.benchmark), e.g. [voc, context].
    benchmarks: list[str] = field(default_factory=list)
    # Folder (any fsspec URL) holding the real benchmarks in their public layouts: VOCdevkit/
    # (VOC2012 and VOC2010 with the Context labels) and coco/ (annotations/ + val2017/).
    # shapes always reads data.bench.
    data_root: str = ""
    # Per-benchmark folder, overriding data_root for that benchmark, e.g. {coco_object: s3://b/coco}.
    data_roots: dict[str, str] = field(default_factory=dict)
    # Pinned protocol in zeroseg/protocol_configs (background rule, short side, sliding window,
    # class names, templates): a family, "paper" (= empty; each benchmark's own file, the
    # paper's thresholds) or "sclip" (the training-free segmenters' protocol, file
    # <benchmark>_sclip), or one file's name (one benchmark only).
    protocol: str = ""
    # Teacher-only methods scored next to the student (BASELINE_METHODS); empty = all that
    # apply to the teacher (sclip / clearclip / naclip need a ViT).
    baselines: list[str] = field(default_factory=list)
    naclip_sigma: float = 5.0  # NACLIP's Gaussian neighbourhood, in patches
    # Refine every method's map with PAMR (pixel-adaptive mask refinement) before the rules.
    pamr: bool = False
    images_per_task: int = 50
    num_cpus_per_task: float = 1.0
    # GPU share per task on a GPU cluster (e.g. 0.25 packs four tasks on a GPU); 0 = CPU.
    gpus_per_task: float = 0.0
    # How pixels become background, each scored in the same pass: "prompt" (a background text
    # prompt competes with the classes), "threshold:P" (max softmax(prob_scale * cos) below P;
    # the paper's protocol), "cosine:C" (max raw cosine below C). With tune_on_val, each method
    # uses the rule that scores best on data.val; otherwise the first rule.
    background_rules: list[str] = field(
        default_factory=lambda: [
            "prompt",
            "threshold:0.3",
            "threshold:0.5",
            "threshold:0.7",
            "threshold:0.9",
            "threshold:0.95",
            "threshold:0.99",
            "threshold:0.999",
        ]
    )
    tune_on_val: bool = True
    # Input side for the MaskCLIP-style dense baseline (0 = the teacher's own input size).
    dense_input_size: int = 0
    # The student's pixel scores, one of STUDENT_READOUTS ("segments" is the paper's).
    student_readout: str = "segments"
    prob_scale: float = 100.0
    overlays: int = 8


@dataclass
class RayConfig:
    address: str = ""  # empty: start a local Ray; "auto" or ray://...: connect
    num_cpus: int = 0  # local only; 0 = all cores


@dataclass
class AblationConfig:
    # `zeroseg ablate`: variant name -> overrides of the train section (and eval) applied on
    # top of this config. Every variant trains on the one cache this config extracts.
    variants: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)


@dataclass(frozen=True)
class Bound:
    """The valid range of one numeric key: ``lo <= v`` (``lo < v`` when ``lo_open``) and
    ``v <= hi`` (``v < hi`` when ``hi_open``); ``note`` says what a boundary value means."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = (
                f"must be in {'(' if self.lo_open else '['}{self.lo:g}, "
                f"{self.hi:g}{')' if self.hi_open else ']'}"
            )
        elif self.lo is not None:
            text = f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            text = f"must be {'<' if self.hi_open else '<='} {self.hi:g}"
        return f"{text} ({self.note})" if self.note else text


_POSITIVE = Bound(1)
_COUNT = Bound(0)  # counts, seeds, resource shares: zero allowed, negative never
_WEIGHT = Bound(0, note="0 turns the term off")

# Every int / float key of the schema and its range; tests/unit/test_config_ranges.py fails for
# a numeric key added without a rule here. Consistency between keys is checked in _check.
NUMERIC_RULES: dict[str, Bound] = {
    "world.image_size": Bound(8),
    "world.n_train": _POSITIVE,
    "world.n_val": _POSITIVE,
    "world.n_bench": _POSITIVE,
    "world.seed": _COUNT,
    "world.n_generalisation": Bound(0, note="0 = no generalisation split"),
    "world.generalisation_image_size": Bound(8),
    "teacher.pretrain_steps": _POSITIVE,
    "teacher.pretrain_seed": _COUNT,
    "views.crop_size": _POSITIVE,
    "extract.images_per_shard": _POSITIVE,
    "extract.batch_size": _POSITIVE,
    "extract.num_actors": _POSITIVE,
    "extract.min_actors": Bound(0, note="0 = extract.num_actors"),
    "extract.max_actors": Bound(0, note="0 = extract.num_actors"),
    "extract.cpus_per_actor": _COUNT,
    "extract.gpus_per_actor": _COUNT,
    "extract.max_retries": _COUNT,
    "train.epochs": _POSITIVE,
    "train.batch_size": _POSITIVE,
    "train.lr": Bound(0, lo_open=True),
    "train.weight_decay": _COUNT,
    "train.warmup_epochs": _COUNT,
    "train.mask_ratio": Bound(0, 1, hi_open=True),
    "train.num_workers": _POSITIVE,
    "train.cpus_per_worker": _COUNT,
    "train.checkpoint_every_steps": _POSITIVE,
    "train.seed": _COUNT,
    "train.w_multiscale": _WEIGHT,
    "train.w_matching": _WEIGHT,
    "train.w_recon": _WEIGHT,
    "train.w_dense": _WEIGHT,
    "train.w_patch": _WEIGHT,
    "train.w_affinity": _WEIGHT,
    "train.w_region": _WEIGHT,
    "train.affinity_stride": _POSITIVE,
    "train.grad_clip": Bound(0, note="0 = no clipping"),
    "train.max_steps": Bound(0, note="0 = every epoch"),
    "train.checkpoint_every_minutes": Bound(0, note="0 = off"),
    "train.checkpoints_to_keep": _POSITIVE,
    "train.max_failures": Bound(-1, note="-1 = unlimited"),
    "train.stream_above_mb": _COUNT,
    "train.shuffle_buffer": _POSITIVE,
    "train.prefetch_batches": _POSITIVE,
    "train.log_every_steps": _POSITIVE,
    "eval.images_per_task": _POSITIVE,
    "eval.num_cpus_per_task": _COUNT,
    "eval.gpus_per_task": _COUNT,
    "eval.dense_input_size": Bound(0, note="0 = the teacher's own input size"),
    "eval.prob_scale": Bound(0, lo_open=True),
    "eval.naclip_sigma": Bound(0, lo_open=True),
    "eval.overlays": _COUNT,
    "ray.num_cpus": Bound(0, note="0 = all cores"),
}
# Ranges of the values inside rules of eval.background_rules ("threshold:P", "cosine:C").
RULE_RANGES = {"threshold": Bound(0, 1), "cosine": Bound(-1, 1), "argmax": Bound(0, 1)}


def _range_problems(cfg: Config) -> list[tuple[str, str]]:
    problems = []
    for key, bound in NUMERIC_RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not bound.holds(value):
            problems.append((key, f"{bound.describe()}, got {value:g}"))
    return problems


def _error_key(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    return str(key) if key else "?"


def _check(cfg: Config) -> None:
    """Semantic checks that types alone cannot express."""
    problems: list[tuple[str, str]] = []
    if cfg.extract.mode not in ("resume", "overwrite"):
        problems.append(("extract.mode", "must be 'resume' or 'overwrite'"))
    if cfg.extract.device not in ("auto", "cpu", "cuda"):
        problems.append(("extract.device", "must be 'auto', 'cpu' or 'cuda'"))
    if cfg.extract.device == "cuda" and not cfg.extract.gpus_per_actor > 0:
        problems.append(("extract.device", "'cuda' needs extract.gpus_per_actor > 0"))
    if cfg.extract.verify not in ("sizes", "full"):
        problems.append(("extract.verify", "must be 'sizes' or 'full'"))
    if cfg.extract.precision not in ("fp32", "bf16", "fp16"):
        problems.append(("extract.precision", "must be 'fp32', 'bf16' or 'fp16'"))
    if not cfg.views.levels or any(n < 1 for n in cfg.views.levels):
        problems.append(("views.levels", "must be a non-empty list of positive ints"))
    if 1 not in cfg.views.levels:
        problems.append(("views.levels", "must contain 1 (the whole-image view v1)"))
    if max(cfg.views.levels or [1]) > cfg.views.crop_size:
        problems.append(("views.levels", "finest grid is larger than views.crop_size"))
    problems.extend(_range_problems(cfg))
    if len(set(cfg.views.levels)) != len(cfg.views.levels):
        problems.append(("views.levels", f"lists a level twice: {cfg.views.levels}"))
    if any(n < 0 for n in cfg.extract.redo_shards):
        problems.append(("extract.redo_shards", "shard numbers are >= 0"))
    lo, hi = actor_range(cfg.extract)
    if lo > hi:
        problems.append(("extract.min_actors", f"{lo} is above extract.max_actors={hi}"))
    problems.extend(_world_problems(cfg))
    used = set(cfg.train.view_levels or cfg.views.levels)
    if set(cfg.train.dense_levels) - used:
        why = f"must be grid levels in use in training ({sorted(used)})"
        problems.append(("train.dense_levels", why))
    if cfg.train.view_levels and 1 not in cfg.train.view_levels:
        problems.append(("train.view_levels", "must contain 1 (the whole-image view v1)"))
    if set(cfg.train.view_levels) - set(cfg.views.levels):
        problems.append(
            ("train.view_levels", f"must be a subset of views.levels {cfg.views.levels}")
        )
    choices = {
        "train.lr_scaling": ("none", "mae"),
        "train.precision": ("bf16", "fp32"),
        "train.reader": ("auto", "memory", "stream"),
        "train.augment": AUGMENT_MODES,
        "train.affinity_stride": AFFINITY_STRIDES,
    }
    for key, allowed in choices.items():
        if getattr(cfg.train, key.split(".")[1]) not in allowed:
            problems.append((key, f"must be one of {list(allowed)}"))
    if cfg.train.multiscale_views not in ("all", "global"):
        problems.append(("train.multiscale_views", "must be 'all' or 'global'"))
    if not cfg.storage.root:
        problems.append(("storage.root", "must not be empty"))
    problems.extend(_location_problems(cfg))
    for rule in cfg.eval.background_rules:
        kind, _, value = rule.partition(":")
        if kind == "prompt" and not value:
            continue
        if kind not in RULE_RANGES or not _is_float(value):
            problems.append(("eval.background_rules", f"bad rule {rule!r}"))
        elif not RULE_RANGES[kind].holds(float(value)):
            why = f"{kind} {RULE_RANGES[kind].describe()}, got {rule!r}"
            problems.append(("eval.background_rules", why))
    if not cfg.eval.background_rules:
        problems.append(("eval.background_rules", "must not be empty"))
    seeds = cfg.train.seeds
    if any(not isinstance(x, int) or x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        problems.append(("train.seeds", f"must be distinct non-negative integers, got {seeds}"))
    problems.extend(_eval_problems(cfg.eval))
    problems.extend(_student_problems(cfg))
    if problems:
        raise ConfigError("; ".join(f"{k}: {msg}" for k, msg in problems))


def _world_problems(cfg: Config) -> list[tuple[str, str]]:
    """``world.object_sizes`` must be a range the shapes world can draw from."""
    sizes = cfg.world.object_sizes
    if not sizes:
        return []
    from zeroseg.data.shapes import WorldSettings

    if len(sizes) != 2:
        return [("world.object_sizes", f"must be [lo, hi] (fractions of image_size), got {sizes}")]
    try:
        WorldSettings(size_range=(float(sizes[0]), float(sizes[1])))
    except ValueError as err:
        return [("world.object_sizes", str(err))]
    return []


def _location_problems(cfg: Config) -> list[tuple[str, str]]:
    """Every storage location of the config is a URI the user can have meant."""
    from zeroseg import storage

    keys = {
        "storage.root": cfg.storage.root,
        **{f"data.{k}": getattr(cfg.data, k) for k in ("train", "val", "bench", "generalisation")},
        "teacher.cache_dir": cfg.teacher.cache_dir,
        "student.init": "" if cfg.student.init == SHIPPED else cfg.student.init,
        "eval.data_root": cfg.eval.data_root,
        **{f"eval.data_roots.{k}": v for k, v in cfg.eval.data_roots.items()},
    }
    problems = []
    for key, uri in keys.items():
        if not uri:
            continue
        try:
            storage.check_uri(str(uri), key)
        except storage.BadURI as exc:
            problems.append((key, exc.reason))
    return problems


def student_architecture(cfg: Config) -> dict[str, Any]:
    """The student's fields: its preset's, then ``student.overrides``, then the teacher stem's
    tower (what the train stage fills in). KeyError for an unknown preset."""
    from .student_config import flat_student_config, student_config

    merged = student_config(cfg.student.preset)
    merged.update(flat_student_config(cfg.student.overrides, STUDENT_OVERRIDES))
    if merged.get("stem") == "teacher" and not merged.get("teacher_model"):
        merged["teacher_model"] = cfg.teacher.model
    return merged


def _student_problems(cfg: Config) -> list[tuple[str, str]]:
    """The preset and its overrides must make a valid student before any cluster work."""
    from .student_config import StudentConfig as Architecture

    if "mask_ratio" in cfg.student.overrides:
        why = "the student's mask ratio is a training setting: set train.mask_ratio"
        return [("student.overrides.mask_ratio", why)]
    try:
        merged = student_architecture(cfg)
    except KeyError as exc:
        return [("student.preset", str(exc.args[0]))]
    try:
        arch = Architecture.from_dict(merged)
    except (KeyError, ValueError, TypeError) as exc:
        return [("student.overrides", str(exc.args[0] if exc.args else exc))]
    crop, patch = cfg.views.crop_size, arch.patch_size
    finest = max(cfg.train.view_levels or cfg.views.levels or [1])
    if crop % patch:
        why = f"{crop} is not a multiple of the student's patch size {patch}"
        return [("views.crop_size", why)]
    if crop // patch < finest:
        why = (
            f"{crop} gives the student a {crop // patch}x{crop // patch} patch grid, coarser "
            f"than the finest {finest}x{finest} grid of views: make it >= {finest * patch}"
        )
        return [("views.crop_size", why)]
    if cfg.student.init and arch.stem not in ("patch", "hybrid"):
        why = (
            f"loads a ViT's patch embedding, and the student's stem is {arch.stem!r}: "
            "set student.overrides.stem.kind=patch (or hybrid, for a toy CLIP's tower)"
        )
        return [("student.init", why)]
    if "patches" in cfg.eval.student_readout and not arch.patch_proj:
        why = (
            f"{cfg.eval.student_readout!r} needs a student with patch_proj "
            "(e.g. student-tiny-dense)"
        )
        return [("eval.student_readout", why)]
    return []


def eval_benchmarks(ev: EvalConfig) -> list[str]:
    """The benchmarks one eval job scores: ``eval.benchmarks``, else ``[eval.benchmark]``."""
    return list(ev.benchmarks) or [ev.benchmark]


def _eval_problems(ev: EvalConfig) -> list[tuple[str, str]]:
    from .benchmarks import benchmark_names
    from .protocols import FAMILIES, list_protocols, protocol_file

    problems: list[tuple[str, str]] = []
    if ev.student_readout not in STUDENT_READOUTS:
        problems.append(("eval.student_readout", f"must be one of {list(STUDENT_READOUTS)}"))
    key = "eval.benchmarks" if ev.benchmarks else "eval.benchmark"
    names = eval_benchmarks(ev)
    for name in names:
        if name not in benchmark_names():
            problems.append((key, f"unknown benchmark {name!r}; known: {benchmark_names()}"))
    if len(set(names)) != len(names):
        problems.append((key, "lists a benchmark twice"))
    if ev.protocol and ev.protocol not in FAMILIES and len(names) > 1:
        problems.append(
            ("eval.protocol", f"a file name takes one benchmark; use a family {list(FAMILIES)}")
        )
    for m in ev.baselines:
        if m not in BASELINE_METHODS:
            problems.append(("eval.baselines", f"unknown method {m!r}; known: {BASELINE_METHODS}"))
    if len(set(ev.baselines)) != len(ev.baselines):
        problems.append(("eval.baselines", "lists a method twice"))
    for name in names:
        if name not in benchmark_names():
            continue
        if name != "shapes" and not ev.data_root and name not in ev.data_roots:
            problems.append(
                ("eval.data_root", f"benchmark {name!r} needs it (or eval.data_roots.{name})")
            )
        proto = protocol_file(ev.protocol, name)
        if proto not in list_protocols():
            k = "eval.protocol" if ev.protocol else key
            problems.append((k, f"no pinned protocol {proto!r}; known: {list_protocols()}"))
    for name in ev.data_roots:
        if name not in benchmark_names():
            problems.append(
                (f"eval.data_roots.{name}", f"unknown benchmark; known: {benchmark_names()}")
            )
    return problems


# The paper's value of every setting the shapes world's recipe changes or adds
# (jobs/recipes/beyond_paper.yaml). Keys are dotted config keys, or ``student.<field>`` for a
# field of the resolved student architecture (its preset, then student.overrides); a tuple lists
# the values that all keep to the paper (its logits are inferred: dot, or the small presets'
# cosine).
PAPER_RECIPE: dict[str, Any] = {
    "train.mask_ratio": 0.6,
    "train.w_multiscale": 1.0,
    "train.w_matching": 1.0,
    "train.w_recon": 1.0,
    "train.multiscale_views": "all",
    "train.augment": "none",
    "train.w_dense": 0.0,
    "train.w_patch": 0.0,
    "train.w_affinity": 0.0,
    "train.w_region": 0.0,
    "train.center_targets": False,
    "eval.student_readout": "segments",
    "student.stem": "patch",
    "student.stem_pixels": False,
    "student.patch_proj": False,
    "student.assign": ("dot", "cosine"),
    "student.gumbel": True,
    "student.hard_assignment": True,
}


def paper_deviations(cfg: Config) -> dict[str, Any]:
    """Where ``cfg`` leaves the paper's recipe (:data:`PAPER_RECIPE`): key -> its value here.

    Empty for ``jobs/paper_exact.yaml``; a job's summary can name what it adds to the paper."""
    arch = student_architecture(cfg)
    out: dict[str, Any] = {}
    for key, paper in PAPER_RECIPE.items():
        section, name = key.split(".")
        value = arch.get(name) if section == "student" else getattr(getattr(cfg, section), name)
        if value not in (paper if isinstance(paper, tuple) else (paper,)):
            out[key] = value
    return out


def actor_range(extract: ExtractConfig) -> tuple[int, int]:
    """``(min, max)`` size of the extraction actor pool; equal bounds mean a fixed pool."""
    lo = extract.min_actors or extract.num_actors
    hi = extract.max_actors or max(extract.num_actors, lo)
    return lo, hi


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_paths(path: ConfigPaths) -> list[Path]:
    if path is None:
        return []
    if isinstance(path, (str, Path)):
        return [Path(path)]
    return [Path(p) for p in path]


def _read_yaml(path: Path) -> DictConfig:
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"config file {path}: must be a mapping of sections, not a list")
    return data


def _default_path(owner: Path, entry: Any) -> Path:
    """A ``defaults:`` entry, relative to the file that names it; ``.yaml`` may be left out."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"config file {owner}: {DEFAULTS_KEY} entries must be file names")
    path = Path(os.path.normpath(owner.parent / os.path.expanduser(entry.strip())))
    if not path.exists() and path.suffix not in (".yaml", ".yml"):
        path = path.with_name(path.name + ".yaml")
    if not path.is_file():
        raise ConfigError(f"config file {owner}: {DEFAULTS_KEY} entry {entry!r} not found: {path}")
    return path


def _config_layers(path: ConfigPaths) -> list[tuple[Path, DictConfig]]:
    """Every file's own keys, in the order they apply: a file after the files it builds on.

    A file reached twice (two overlays of one base) is applied once, where it is first reached,
    so a later base cannot undo an earlier overlay. A file that builds on itself is an error."""
    layers: list[tuple[Path, DictConfig]] = []
    applied: set[Path] = set()

    def visit(file: Path, chain: tuple[Path, ...]) -> None:
        key = file.resolve()
        if key in (c.resolve() for c in chain):
            loop = " -> ".join(str(c) for c in (*chain, file))
            raise ConfigError(f"config file {file}: {DEFAULTS_KEY} form a cycle: {loop}")
        if key in applied:
            return
        data = _read_yaml(file)
        names = data.pop(DEFAULTS_KEY, None)
        if names is None:
            names = []
        elif isinstance(names, str):
            names = [names]
        elif not isinstance(names, Sequence):
            raise ConfigError(f"config file {file}: {DEFAULTS_KEY} must be a list of files")
        for entry in names:
            visit(_default_path(file, entry), (*chain, file))
        applied.add(key)
        layers.append((file, data))

    files = _as_paths(path)
    for file in files:
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
    for file in files:
        visit(file, ())
    return layers


def config_files(path: ConfigPaths) -> list[Path]:
    """The YAML files a job is built from, in the order they apply (its ``defaults:`` first)."""
    return [file for file, _ in _config_layers(path)]


def _flatten_student_overrides(data: DictConfig) -> None:
    """Spell one layer's ``student.overrides`` flat, in place, before it merges: layers then
    merge field by field whichever form each uses (a later ``encoder.depth`` replaces an earlier
    ``depth``), and the resolved config, hence every fingerprint, is the same for both forms."""
    student = data.get("student") if isinstance(data, DictConfig) else None
    overrides = student.get("overrides") if isinstance(student, DictConfig) else None
    if not isinstance(overrides, DictConfig) or not len(overrides):
        return
    from .student_config import flat_student_config

    raw = OmegaConf.to_container(overrides, resolve=False)
    try:
        flat = flat_student_config(raw, STUDENT_OVERRIDES)  # type: ignore[arg-type]
    except (KeyError, ValueError) as exc:
        raise ConfigError(str(exc.args[0] if exc.args else exc)) from None
    student.overrides = flat


def load_config(path: ConfigPaths = None, overrides: list[str] | None = None) -> Config:
    """Build a validated :class:`Config` from defaults, YAML files and overrides.

    ``path`` is one YAML file, several (merged in order) or None (the schema's defaults). A
    file's ``defaults:`` list names files it builds on, relative to it; they apply first, in
    order, then the file's own keys, then the next file, then ``overrides``. Sections and maps
    merge key by key; a list is replaced as a whole. Overrides use dotted keys
    (``train.epochs=3``, ``storage.root=s3://b/x``); values are parsed as YAML scalars/lists.
    """
    schema = OmegaConf.structured(Config)
    layers = _config_layers(path)
    try:
        for file, data in layers:
            try:
                _flatten_student_overrides(data)
            except ConfigError as exc:
                raise ConfigError(f"config file {file}: {exc}") from None
            try:
                schema = OmegaConf.merge(schema, data)
            except OmegaConfBaseException as exc:
                msg = str(exc).splitlines()[0]
                raise ConfigError(f"config key '{_error_key(exc)}' in {file}: {msg}") from None
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key = item.split("=", 1)[0].strip()
            if not key:
                raise ConfigError(f"override {item!r} has an empty key")
            dotlist = OmegaConf.from_dotlist([item])
            try:
                _flatten_student_overrides(dotlist)
            except ConfigError as exc:
                raise ConfigError(f"override {item!r}: {exc}") from None
            schema = OmegaConf.merge(schema, dotlist)
        resolved = OmegaConf.to_container(schema, resolve=True, throw_on_missing=True)
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), resolved))
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"config key '{_error_key(exc)}': {msg}") from None
    assert isinstance(cfg, Config)
    _check(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (JSON-serialisable)."""
    if is_dataclass(cfg):
        return asdict(cfg)  # type: ignore[arg-type]
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    raise TypeError(f"not a config: {type(cfg)!r}")
