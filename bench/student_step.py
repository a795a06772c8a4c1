"""One training worker's step, measured against what ``zeroseg train --dry-run`` predicts.

The dry run counts the step's FLOPs and saved activations on the meta device and turns them
into seconds with an assumed accelerator (an A100 at 40% utilisation) and into memory with a
simple sum. Here the same config's student runs real steps (``zeroseg.train_step.train_step``,
the workers' own: forward, the distillation losses, backward, clipping as ``train.grad_clip``
says, AdamW at the schedule's peak lr) on random inputs and targets at the per-worker
micro-batch, on this machine's GPU with the config's precision (bf16 autocast by default on a
GPU), so the estimate can be checked:

- ``student_step_s``: measured seconds per step (median of the timed steps);
- ``measured_tflops``: the counted step FLOPs over that time, and ``mfu`` against ``--peak``;
- ``peak_memory_vs_predicted``: the allocator's peak over the dry run's per-worker memory
  (weights + grads + AdamW state + activations; no DDP buckets with one worker).

Also checks that the bf16 step is numerically sound: every loss term finite, and the loss on a
fixed batch falls over the timed steps.
Usage: python bench/student_step.py [--config jobs/train_in1k_vitb16.yaml] [--micro-batch 128]
On a machine without a GPU it runs on the CPU in fp32 (use a small ``--micro-batch``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from measures import emitter  # bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

emit = emitter("student_step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="jobs/train_in1k_vitb16.yaml")
    parser.add_argument("--micro-batch", type=int, default=128, help="images per worker step")
    parser.add_argument("--steps", type=int, default=12, help="timed steps after 3 warm-ups")
    parser.add_argument(
        "--peak", type=float, default=989.0, help="the GPU's dense bf16 TFLOP/s (H100/H200: 989)"
    )
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()

    import torch

    from pipeline.train import student_config, teacher_embed_dim
    from pipeline.train_plan import estimate
    from zeroseg.config import load_config
    from zeroseg.models import build_student
    from zeroseg.train_step import StepBatch, make_optimizer, step_settings, train_step
    from zeroseg.views import num_views

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    cfg = load_config(
        args.config,
        [
            *args.overrides,
            f"train.use_gpu={str(gpu).lower()}",
            "train.num_workers=1",
            f"train.batch_size={args.micro_batch}",
        ],
    )
    embed_dim = teacher_embed_dim(cfg.teacher.model) or 768
    plan = estimate(cfg, embed_dim, images=args.micro_batch * 100)
    machine = f"{platform.machine()} {os.cpu_count()} cores, no GPU, torch {torch.__version__}"
    if gpu:
        machine = f"{platform.machine()} {os.cpu_count()} cores, {torch.cuda.get_device_name()}"

    # The run's own schedule; the steps are taken right after its warm-up, at the peak lr.
    warmup = plan["steps_per_epoch"] * cfg.train.warmup_epochs
    settings = step_settings(
        cfg.train,
        cfg.views.levels,
        global_batch=args.micro_batch,
        total_steps=max(plan["total_steps"], warmup + args.steps + 3),
        warmup_steps=warmup,
        gpu=gpu,
    )
    autocast = settings.autocast
    torch.manual_seed(0)
    student = student_config(cfg)
    model = build_student(student, embed_dim=embed_dim).to(device).train()
    opt = make_optimizer(model, settings)
    size = int(student["image_size"])
    x = torch.rand(args.micro_batch, 3, size, size, device=device)
    views = torch.nn.functional.normalize(
        torch.randn(args.micro_batch, num_views(settings.levels), embed_dim, device=device), dim=-1
    )
    center = views.mean((0, 1)) if cfg.train.center_targets else None
    gen = torch.Generator().manual_seed(0)
    steps_taken = [warmup]

    def step() -> dict[str, float]:
        """The workers' step (zeroseg.train_step), so the clipping, AdamW and schedule of
        ``train.*`` are what is timed."""
        result = train_step(
            model,
            StepBatch(x, views),
            opt,
            steps_taken[0],
            settings,
            generator=gen,
            target_center=center,
        )
        steps_taken[0] += 1
        losses = result.losses()
        return {"total": losses.pop("loss"), **{k[5:]: v for k, v in losses.items()}}

    for _ in range(3):  # warm-up: kernels, allocator
        first = step()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())  # float() of the loss waits for the GPU
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tflops = plan["flops_per_worker_step"] / step_s / 1e12
    common = {
        "machine": machine,
        "student": cfg.student.preset,
        "micro_batch": args.micro_batch,
        "precision": "bf16 autocast" if autocast else "fp32",
    }
    emit(
        "student_step_s",
        step_s,
        None,
        "s",
        predicted_s=round(plan["est_step_seconds"], 4),
        predicted_for=f"{plan['assumed_tflops']:.0f} TFLOP/s at {plan['assumed_mfu']:.0%}",
        **common,
    )
    emit(
        "measured_tflops",
        tflops,
        None,
        "TFLOP/s",
        step_flops=plan["flops_per_worker_step"],
        mfu=round(tflops / args.peak, 4) if gpu else None,
        peak_tflops=args.peak if gpu else None,
        **common,
    )
    if gpu:
        emit(
            "peak_memory_vs_predicted",
            torch.cuda.max_memory_allocated() / plan["memory_per_worker_bytes"],
            None,
            "ratio",
            peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
            predicted_gib=round(plan["memory_per_worker_bytes"] / 2**30, 2),
            **common,
        )
    finite = all(v == v and abs(v) != float("inf") for row in losses for v in row.values())
    emit(
        "bf16_loss_falls" if autocast else "loss_falls",
        losses[-1]["total"] / first["total"],
        1.0,
        "ratio",
        note="last timed step's loss over the last warm-up step's, same batch; < 1 = learning",
        all_terms_finite=finite,
        first={k: round(v, 4) for k, v in first.items()},
        last={k: round(v, 4) for k, v in losses[-1].items()},
        **common,
    )


if __name__ == "__main__":
    main()
