"""The colour prior's hand-written backward against autograd's, alone and in a training step.

- ``affinity_fwd_bwd_vs_autograd``: seconds of one forward and backward of the colour prior's
  pair terms (``zeroseg.losses._PairColourPrior``) over the same terms written as plain tensor
  code (``pair_terms_by_autograd``), at the shapes of the quality job's step. Below 1 is faster.
- ``quality_step_vs_autograd``: seconds of the quality job's whole training step (its student,
  losses and optimiser, ``zeroseg.train_step``) with the hand-written backward over the same step
  with the plain formulation, the prior on every pixel (stride 1) on both sides. Both sides give
  bit-identical losses and gradients (tests/unit/test_losses.py), so the ratio is pure speed.
- ``quality_step_stride_vs_every_pixel``: the quality job's step with its colour prior on every
  2nd pixel (``train.affinity_stride=2``, the job's setting) over the same step with the prior on
  every pixel (stride 1). Another recipe, not the same numbers: what the stride saves.

Random teacher embeddings of the quality job's teacher's width (128) and fixed scenes, the
per-patch targets centred as the job trains them: speed does not depend on what was learned.
Prints one JSON line per measure: {"bench", "measure", "value", "goal", "unit", ...}.
Usage: python bench/affinity.py [--batch 64] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

try:
    from bench.measures import emitter  # imported as bench.<name> (the tests)
except ModuleNotFoundError:
    from measures import emitter  # run as a script: bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from zeroseg import losses  # noqa: E402


def plain_prior(probs, colors, valid, offsets, same_below, apart_above):
    """Stands in for ``_PairColourPrior.apply``: the same terms, autograd's backward."""
    return losses.pair_terms_by_autograd(probs, colors, valid, offsets, same_below, apart_above)


def median_seconds(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prior_alone(batch: int, groups: int, side: int, steps: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, groups, side, side, generator=g)
    colors = torch.rand(batch, 3, side, side, generator=g)
    valid = torch.ones(batch, side, side)
    offsets = losses.AFFINITY_OFFSETS

    def run(fn):
        def once():
            p = logits.clone().requires_grad_(True)
            fn(p.softmax(1), colors, valid, offsets, 0.05, 0.2).backward()

        return median_seconds(once, steps)

    return run(losses._PairColourPrior.apply), run(plain_prior)


def quality_step(batch: int, steps: int, strides: tuple[int, int] = (1, 1)) -> tuple[float, float]:
    """Seconds of the quality step with the hand-written prior at colour-prior stride
    ``strides[0]`` and of the step at ``strides[1]``: with the plain prior when the strides are
    equal (the backward's speed-up), with the hand-written one when they differ (the stride's)."""
    from zeroseg.augment import step_generator
    from zeroseg.config import load_config, student_architecture
    from zeroseg.data.shapes import render_scene, scene_rng
    from zeroseg.models import build_student
    from zeroseg.teacher import architecture_shape
    from zeroseg.train_step import StepBatch, make_optimizer, step_settings, train_step

    cfg = load_config(os.path.join(ROOT, "jobs", "quality.yaml"))
    imgs = np.stack([render_scene(scene_rng(0, i)).image for i in range(batch)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
    g = torch.Generator().manual_seed(1)
    # the job's shapes: its teacher's embedding width, and centred per-patch targets
    dim = architecture_shape(cfg.teacher.model)[0]
    views = torch.nn.functional.normalize(torch.randn(batch, 30, dim, generator=g), dim=-1)
    center = views.mean((0, 1)) if cfg.train.center_targets else None

    def stepper(prior, stride: int):
        """One side's student, optimiser and step, with ``prior`` as the colour prior."""
        torch.manual_seed(0)
        model = build_student(student_architecture(cfg), embed_dim=dim).train()
        cfg.train.affinity_stride = stride
        settings = step_settings(
            cfg.train,
            (1, 2, 3, 4),
            global_batch=batch,
            total_steps=1000,
            warmup_steps=10,
            gpu=False,
        )
        opt = make_optimizer(model, settings)
        gen, step = torch.Generator().manual_seed(0), [0]

        def once() -> float:
            losses._PairColourPrior.apply = prior  # shadows the inherited one until deleted
            try:
                t0 = time.perf_counter()
                train_step(
                    model,
                    StepBatch(x, views),
                    opt,
                    step[0],
                    settings,
                    generator=gen,
                    target_center=center,
                    augment_generator=step_generator(0, step[0], 0),
                )
                step[0] += 1
                return time.perf_counter() - t0
            finally:
                del losses._PairColourPrior.apply

        return once

    hand = losses._PairColourPrior.apply
    fast, slow = strides
    sides = [stepper(hand, fast), stepper(hand if fast != slow else plain_prior, slow)]
    # the two sides' steps alternate, so a machine that speeds up or slows down during the
    # run moves both medians alike
    times: list[list[float]] = [[], []]
    for i in range(2 + steps):
        for side, once in enumerate(sides):
            took = once()
            if i >= 2:  # two warm-up steps each
                times[side].append(took)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="the quality job's batch")
    ap.add_argument("--groups", type=int, default=8, help="final groups (the quality student's)")
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions per side")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emit = emitter("affinity")
    machine = f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads"
    sides = {
        "affinity_fwd_bwd_vs_autograd": lambda: prior_alone(
            args.batch, args.groups, 64, args.steps
        ),
        "quality_step_vs_autograd": lambda: quality_step(args.batch, args.steps),
        "quality_step_stride_vs_every_pixel": lambda: quality_step(args.batch, args.steps, (2, 1)),
    }
    for measure, timed in sides.items():  # each printed as soon as it is measured
        fast, plain = timed()
        baseline = "every_pixel_s" if measure.endswith("every_pixel") else "autograd_s"
        emit(
            measure,
            fast / plain,
            None,
            "ratio",
            fast_s=round(fast, 4),
            **{baseline: round(plain, 4)},
            machine=machine,
        )


if __name__ == "__main__":
    main()
