"""How many groups an untrained student's grouping uses, per architecture variant.

A student whose grouping sends every patch to one group before training has nothing to break
the symmetry with; one that starts with several can still merge them while it trains. This
script builds the student of a job config (default the paper-exact one) at fixed seeds, changes
one head setting per variant, runs the noise-free forward (as inference does) on scenes of the
job's world with and without the training mask, and prints per variant and seed the mean
number of stage-1 groups, stage-2 groups, and final groups (stage 1 chained through stage 2)
that win at least one patch. Seconds on a CPU; no cache or teacher weights needed.

    python bench/groups_at_init.py
    python bench/groups_at_init.py --config jobs/quality.yaml --images 64
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch

try:
    from bench.measures import emitter  # imported as bench.<name> (the tests)
except ModuleNotFoundError:
    from measures import emitter  # run as a script: bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from zeroseg.config import load_config, student_architecture  # noqa: E402
from zeroseg.data.shapes import WorldSettings, render_scene, scene_rng  # noqa: E402
from zeroseg.models import build_student  # noqa: E402

# One head setting changed per variant (flat student-config keys), against the job's own.
VARIANTS: dict[str, dict[str, Any]] = {
    "job": {},
    "group_token_std_0.02": {"group_token_std": 0.02},  # GroupViT's group-token init
    "groups_12_4": {"num_groups": [12, 4]},
    "groups_8_4": {"num_groups": [8, 4]},
    "assign_dot": {"assign": "dot"},
    "assign_centered": {"assign": "centered"},
    "no_pre_assign_attn": {"pre_assign_attn": False},
}


def groups_at_init(
    arch: dict[str, Any],
    embed_dim: int,
    images: torch.Tensor,
    seed: int,
    mask_ratio: float,
) -> dict[str, float]:
    """Groups used by a freshly built student (seeded by ``seed``) on ``images`` (B, 3, H, W)
    in [0, 1], noise-free, with ``mask_ratio`` of the patches hidden from the encoder."""
    torch.manual_seed(seed)
    model = build_student(arch, embed_dim=embed_dim).eval()
    with torch.no_grad():
        out = model(images, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(seed))
    stages = len(arch["num_groups"])
    keys = [f"groups_used_{k}" for k in range(1, stages + 1)] + ["groups_used"]
    return {k: float(out[k]) for k in keys}


def scenes(world: WorldSettings, seed: int, n: int) -> torch.Tensor:
    """The first ``n`` scenes of the world's split ``seed`` as a float batch in [0, 1]."""
    imgs = np.stack([render_scene(scene_rng(seed, i), world).image for i in range(n)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "jobs", "paper_exact.yaml"))
    ap.add_argument("--images", type=int, default=128, help="scenes of the training split")
    ap.add_argument("--seeds", default="0,1", help="student init seeds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from pipeline.train import teacher_embed_dim

    cfg = load_config(args.config)
    arch = student_architecture(cfg)
    embed_dim = teacher_embed_dim(cfg.teacher.model) or 64
    world = WorldSettings(image_size=cfg.world.image_size)
    images = scenes(world, cfg.world.seed, args.images)
    emit = emitter("groups_at_init")
    for name, change in VARIANTS.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            for mask_ratio in sorted({0.0, cfg.train.mask_ratio}):
                used = groups_at_init({**arch, **change}, embed_dim, images, seed, mask_ratio)
                emit(
                    "final_groups_used",
                    used["groups_used"],
                    None,
                    "groups",
                    variant=name,
                    seed=seed,
                    mask_ratio=mask_ratio,
                    per_stage=[round(used[k], 2) for k in used if k != "groups_used"],
                    of=list(change.get("num_groups", arch["num_groups"])),
                )


if __name__ == "__main__":
    main()
