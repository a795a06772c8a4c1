"""One student training step: forward, distillation loss, backward, clipping, AdamW, schedule.

The train stage's Ray workers, the benches and ``zeroseg train --dry-run`` all run this code,
so what the benches time and the dry run counts is the step that training takes, and a recipe
setting (e.g. ``train.grad_clip=0``: no clipping) means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from zeroseg.augment import augment_batch, step_generator
from zeroseg.config import TrainConfig
from zeroseg.losses import distill_loss

# Every distillation term, in the order ``train.w_<term>`` lists them.
LOSS_TERMS = ("multiscale", "matching", "recon", "dense", "patch", "affinity", "region")
# Per-step diagnostics the student reports next to its outputs, logged with the losses.
STUDENT_STATS = ("assign_logit_std", "groups_used")


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def peak_lr(lr: float, scaling: str, global_batch: int) -> float:
    """The schedule's peak rate: ``lr`` itself, or MAE's ``lr * global_batch / 256``."""
    return lr * global_batch / 256 if scaling == "mae" else lr


def loss_weights(train: TrainConfig) -> dict[str, float]:
    """``train.w_<term>`` of every loss term, as ``distill_loss`` takes them."""
    return {k: float(getattr(train, f"w_{k}")) for k in LOSS_TERMS}


@dataclass(frozen=True)
class StepSettings:
    """The recipe of one step, fixed for a run: loss, schedule, clipping and precision."""

    weights: dict[str, float]
    levels: tuple[int, ...]  # the grid levels the views are laid out by (and trained on)
    mask_ratio: float = 0.0
    multiscale_views: str = "all"
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    weight_decay: float = 0.05
    peak_lr: float = 1.5e-3
    total_steps: int = 1
    warmup_steps: int = 0
    autocast: bool = False  # bf16 autocast (GPU workers with train.precision=bf16)
    # The grid levels of the per-patch targets (``train.dense_levels``); empty: the finest in use.
    target_levels: tuple[int, ...] = ()
    augment: str = "none"  # train.augment: the poses (zeroseg.augment) a training image may take
    affinity_stride: int = 1  # train.affinity_stride: the colour prior's pixel grid

    @property
    def dense_levels(self) -> tuple[int, ...]:
        """The per-patch terms' targets: ``target_levels``, else the finest level in use."""
        return self.target_levels or (max(self.levels),)

    @property
    def leaves_unused_parameters(self) -> bool:
        """A switched-off term (or no masking) leaves some parameters without gradient; DDP
        must be told."""
        return (
            self.mask_ratio == 0
            or len(self.levels) == 1
            or any(v == 0 for v in self.weights.values())
        )


def step_settings(
    train: TrainConfig,
    cache_levels: Sequence[int],
    *,
    global_batch: int,
    total_steps: int,
    warmup_steps: int,
    gpu: bool,
) -> StepSettings:
    """The step recipe of ``train.*``: ``train.view_levels`` (or every level of the cache),
    the peak lr for ``global_batch`` images per step, bf16 autocast only on a GPU."""
    return StepSettings(
        weights=loss_weights(train),
        levels=tuple(int(v) for v in (train.view_levels or cache_levels)),
        mask_ratio=train.mask_ratio,
        multiscale_views=train.multiscale_views,
        grad_clip=train.grad_clip,
        weight_decay=train.weight_decay,
        peak_lr=peak_lr(train.lr, train.lr_scaling, global_batch),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        autocast=gpu and train.precision == "bf16",
        target_levels=tuple(int(v) for v in train.dense_levels),
        augment=train.augment,
        affinity_stride=train.affinity_stride,
    )


@dataclass
class StepBatch:
    """One step's inputs: images (B, 3, H, W) in [0, 1], teacher view embeddings (B, V, D)
    laid out by the settings' levels, and optionally the frozen stem's precomputed features."""

    images: torch.Tensor
    views: torch.Tensor
    stem_features: torch.Tensor | None = None


@dataclass
class StepResult:
    """What a step reports. Tensors stay on the device (reading them waits for it), so a loop
    converts them only on the steps it logs."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    lr: float
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def losses(self) -> dict[str, float]:
        """``loss`` and ``loss_<term>`` as floats, the metrics log's keys."""
        return {"loss": float(self.loss), **{f"loss_{k}": float(v) for k, v in self.terms.items()}}


def make_optimizer(model: torch.nn.Module, settings: StepSettings) -> torch.optim.Optimizer:
    """AdamW over the student's parameter groups: biases, norms, learnable tokens and the
    assignment query/key are not decayed. ``train_step`` sets the lr every step."""
    return torch.optim.AdamW(
        model.param_groups(settings.weight_decay), lr=settings.peak_lr, betas=(0.9, 0.95)
    )


def clip_gradients(model: torch.nn.Module, grad_clip: float) -> None:
    """Clip the total gradient norm to ``grad_clip``; 0 (or less) leaves gradients alone."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)


def train_step(
    model: torch.nn.Module,
    batch: StepBatch,
    optimizer: torch.optim.Optimizer,
    step: int,
    settings: StepSettings,
    *,
    generator: torch.Generator | None = None,
    target_center: torch.Tensor | None = None,
    after_forward: Callable[[torch.Tensor], None] | None = None,
    augment_generator: torch.Generator | None = None,
) -> StepResult:
    """Train ``model`` (the student, or its DDP wrapper) on one batch at schedule step ``step``.

    ``generator`` draws the patch mask; ``target_center`` is the dataset-mean teacher embedding
    the per-patch terms are centred on (``train.center_targets``). ``after_forward`` is called
    with the loss between the forward and the backward pass (the dry run reads the forward's
    FLOPs there). ``augment_generator`` draws the poses of ``settings.augment`` (default: one
    seeded by ``step`` alone, ``zeroseg.augment.step_generator``).
    """
    lr = lr_at(step, settings.total_steps, settings.warmup_steps, settings.peak_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, views = batch.images, batch.views
    if settings.augment != "none":
        if batch.stem_features is not None:
            raise ValueError("train.augment cannot pose precomputed stem features")
        g = augment_generator or step_generator(0, step, 0)
        x, views = augment_batch(x, views, settings.levels, settings.augment, g)
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if settings.autocast
        else contextlib.nullcontext()
    )
    with autocast:
        out = model(
            x,
            mask_ratio=settings.mask_ratio,
            generator=generator,
            stem_features=batch.stem_features,
        )
        total, terms = distill_loss(
            out,
            views,
            settings.weights,
            levels=settings.levels,
            dense_levels=settings.dense_levels,
            target_center=target_center,
            multiscale_views=settings.multiscale_views,
            images=x,
            affinity_stride=settings.affinity_stride,
        )
    if after_forward is not None:
        after_forward(total)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    clip_gradients(model, settings.grad_clip)
    optimizer.step()
    stats = {k: out[k] for k in STUDENT_STATS if k in out}
    return StepResult(loss=total.detach(), terms=terms, lr=lr, stats=stats)
