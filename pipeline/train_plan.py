"""``zeroseg train --dry-run``: what one training worker will hold and compute, without a GPU,
a cluster or the cache.

The student is built on PyTorch's meta device (shapes only, no memory), and one training step
(``zeroseg.train_step.train_step``, the workers' own: forward, the distillation losses,
backward, clipping, AdamW) at the per-worker micro-batch runs there under
``FlopCounterMode`` while a saved-tensor hook adds up what autograd keeps for the backward pass.
So parameters, FLOPs and activation bytes are counted from the real model code, not from a
formula that could drift from it.
"""

from __future__ import annotations

from typing import Any

from zeroseg.config import Config, ConfigError

# ImageNet-1K train split, used when the number of images is not given and cannot be read.
IN1K_TRAIN_IMAGES = 1_281_167
# Assumed accelerator: an A100 (bf16 dense peak 312 TFLOP/s) at 40% model FLOPs utilisation.
ASSUMED_TFLOPS = 312.0
ASSUMED_MFU = 0.4


def count_step(
    student: dict[str, Any], embed_dim: int, micro_batch: int, cfg: Config
) -> dict[str, int]:
    """Parameters, forward / full-step FLOPs and autograd-saved bytes of one training step
    (:func:`zeroseg.train_step.train_step`, the step the workers run), counted in fp32."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zeroseg.models import build_student
    from zeroseg.train_step import StepBatch, make_optimizer, step_settings, train_step
    from zeroseg.views import num_views

    with torch.device("meta"):
        model = build_student(student, embed_dim=embed_dim)
    model.train()
    size = int(student["image_size"])
    workers = cfg.train.num_workers
    # gpu=False: no autocast on the meta device; estimate() scales the bytes for bf16
    settings = step_settings(
        cfg.train,
        cfg.views.levels,
        global_batch=micro_batch * workers,
        total_steps=1,
        warmup_steps=0,
        gpu=False,
    )
    x = torch.empty(micro_batch, 3, size, size, device="meta")
    views = torch.empty(micro_batch, num_views(settings.levels), embed_dim, device="meta")
    center = torch.empty(embed_dim, device="meta") if cfg.train.center_targets else None
    optimizer = make_optimizer(model, settings)
    saved, forward = [0], [0]
    counter = FlopCounterMode(display=False)

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    def forward_done(_: torch.Tensor) -> None:
        forward[0] = counter.get_total_flops()

    with counter:
        # only the forward saves tensors for the backward pass
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            train_step(
                model,
                StepBatch(x, views),
                optimizer,
                0,
                settings,
                target_center=center,
                after_forward=forward_done,
            )
        step = counter.get_total_flops()
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "forward_flops": int(forward[0]),
        "step_flops": int(step),
        "saved_bytes_fp32": int(saved[0]),
    }


def estimate(
    cfg: Config,
    embed_dim: int,
    images: int,
    tflops: float = ASSUMED_TFLOPS,
    mfu: float = ASSUMED_MFU,
) -> dict[str, Any]:
    """Per-worker memory and step cost of ``cfg``'s training run (see the module docstring)."""
    from zeroseg.train_step import peak_lr

    from .train import student_config

    workers = cfg.train.num_workers
    micro = cfg.train.batch_size // workers
    if micro < 1:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is smaller than train.num_workers="
            f"{workers}; every worker needs at least one image per step"
        )
    student = student_config(cfg)
    counts = count_step(student, embed_dim, micro, cfg)
    params = counts["params"]
    global_batch = micro * workers
    steps_per_epoch = max(1, images // workers // micro)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    # bf16 autocast keeps most saved activations in half precision; fp32 on CPU.
    bf16 = cfg.train.use_gpu and cfg.train.precision == "bf16"
    activations = counts["saved_bytes_fp32"] // 2 if bf16 else counts["saved_bytes_fp32"]
    weights_b, grads_b, adam_b = 4 * params, 4 * params, 8 * params
    ddp_buckets_b = 4 * params if workers > 1 else 0
    step_s = counts["step_flops"] / (tflops * 1e12 * mfu)
    cache_row = cfg.views.crop_size**2 * 3 + 2 * embed_dim * _views(cfg)
    return {
        "student": cfg.student.preset,
        "embed_dim": embed_dim,
        "params": params,
        "workers": workers,
        "micro_batch_per_worker": micro,
        "global_batch": global_batch,
        "peak_lr": peak_lr(cfg.train.lr, cfg.train.lr_scaling, global_batch),
        "images": images,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "weights_bytes": weights_b,
        "grads_bytes": grads_b,
        "optimizer_state_bytes": adam_b,
        "ddp_bucket_bytes": ddp_buckets_b,
        "activation_bytes": activations,
        "activation_precision": "bf16 (about half the fp32 count)" if bf16 else "fp32",
        "memory_per_worker_bytes": weights_b + grads_b + adam_b + ddp_buckets_b + activations,
        "forward_flops_per_worker_step": counts["forward_flops"],
        "flops_per_worker_step": counts["step_flops"],
        "flops_per_image": counts["step_flops"] / micro,
        "assumed_tflops": tflops,
        "assumed_mfu": mfu,
        "est_step_seconds": step_s,
        "est_epoch_hours": step_s * steps_per_epoch / 3600,
        "est_total_hours": step_s * total_steps / 3600,
        "est_gpu_hours": step_s * total_steps * workers / 3600,
        "cache_bytes_per_image": cache_row,
        "cache_read_mb_per_s_per_worker": cache_row * micro / max(step_s, 1e-9) / 2**20,
    }


def _views(cfg: Config) -> int:
    from zeroseg.views import num_views

    return num_views(list(cfg.views.levels))


def format_estimate(e: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`estimate`."""
    gib = 2**30
    return [
        f"student {e['student']}: {e['params'] / 1e6:.1f} M parameters, embed dim {e['embed_dim']}",
        f"batch: {e['global_batch']} global = {e['workers']} worker(s) x "
        f"{e['micro_batch_per_worker']}; peak lr {e['peak_lr']:.3g}",
        f"schedule: {e['images']} images, {e['steps_per_epoch']} steps/epoch, "
        f"{e['total_steps']} steps",
        f"memory per worker: weights {e['weights_bytes'] / gib:.2f} GiB, grads "
        f"{e['grads_bytes'] / gib:.2f} GiB, AdamW state {e['optimizer_state_bytes'] / gib:.2f} "
        f"GiB, DDP buckets {e['ddp_bucket_bytes'] / gib:.2f} GiB, activations "
        f"{e['activation_bytes'] / gib:.2f} GiB ({e['activation_precision']}) -> "
        f"{e['memory_per_worker_bytes'] / gib:.2f} GiB",
        f"compute per worker step: {e['flops_per_worker_step'] / 1e12:.2f} TFLOP "
        f"(forward {e['forward_flops_per_worker_step'] / 1e12:.2f}), "
        f"{e['flops_per_image'] / 1e9:.1f} GFLOP per image",
        f"assuming {e['assumed_tflops']:g} TFLOP/s per GPU at {e['assumed_mfu']:.0%} "
        f"utilisation: {e['est_step_seconds']:.3f} s/step, {e['est_epoch_hours']:.2f} h/epoch, "
        f"{e['est_total_hours']:.1f} h in all, {e['est_gpu_hours']:.0f} GPU-hours",
        f"cache reads: {e['cache_bytes_per_image'] / 1024:.0f} KiB per image, "
        f"{e['cache_read_mb_per_s_per_worker']:.0f} MiB/s per worker at that pace",
    ]
