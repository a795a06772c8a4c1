"""How far can the lab teacher's image tower get on the cell goal if it trains on nothing else?

The shipped teacher learns single objects and every kind of grid view at once, and its one-object
4x4 cells stay near 75% (goal 85%). This bench asks whether the pool or the tower is the limit:
it trains an image tower with labels (cross-entropy of its embedding against the shipped text
tower's six shape prompts) on cells drawn exactly as the goal's cells are drawn (4x4 cells of
64-px scenes of the training world, from a seed stream of their own), and prints its accuracy on
the goal's 400 held-out cells, on 2000 fresh cells and on its own training cells. A tower that
stops short of the goal here cannot reach it in the general recipe either, whatever its pool.

    python bench/cell_specialist.py                                  # fine-tune the shipped tower
    python bench/cell_specialist.py --extra-blocks 3                 # the shipped tower, deeper
    python bench/cell_specialist.py --train-cells 96000              # the same, more cells
    python bench/cell_specialist.py --init scratch --lr 2e-3 --scale 30 --warmup 100 \\
        --width 192 --depth 6 --heads 6                              # a wider tower, from scratch
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

try:
    from bench.cell_ceiling import cell_masks  # imported as bench.<name> (the tests)
    from bench.measures import emitter
except ModuleNotFoundError:
    from cell_ceiling import cell_masks  # run as a script: bench/, the script's own folder
    from measures import emitter
from zeroseg.data.shapes import SHAPES, WorldSettings
from zeroseg.teacher import Teacher
from zeroseg.toy_assets import TOY_MODEL, verified_shipped_weights
from zeroseg.toy_teacher import (
    ToyTeacherSettings,
    _augment,
    lab_eval_sets,
    lr_at,
)
from zeroseg.toy_vit import toy_vit
from zeroseg.views import resize_views

TRAIN_SEED = 424242  # training cells: a stream the teacher's pool and eval sets never use
FRESH_SEED = 777


def goal_cells(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` cells as :func:`zeroseg.toy_teacher.eval_sets` draws them for ``seed``."""
    images, _, labels = cell_masks(WorldSettings(), n, np.random.default_rng([seed, 2]), {})
    return images, labels


def build_tower(args, teacher: Teacher) -> torch.nn.Module:
    """The shipped tower (``extra_blocks`` deeper) or a fresh toy ViT of the given size."""
    if args.init == "shipped":
        tower = teacher.model.visual
        blocks = tower.trunk.blocks
        for _ in range(args.extra_blocks):
            # a copy of the last block whose residual branches start at zero: the deeper tower
            # begins as the shipped one and only training makes it differ
            block = copy.deepcopy(blocks[-1])
            for layer in (block.attn.proj, block.mlp.fc2):
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
            blocks.append(block)
    else:
        torch.manual_seed(args.seed)
        tower = toy_vit(
            embed_dim=args.width,
            depth=args.depth,
            num_heads=args.heads,
            num_classes=teacher.embed_dim,  # a linear read-out of the class token
            global_pool="token",
        )
    for p in tower.parameters():
        p.requires_grad_(True)
    return tower.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", choices=("shipped", "scratch"), default="shipped")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps, then cosine")
    ap.add_argument("--scale", type=float, default=50.0, help="logit scale of the loss")
    ap.add_argument("--train-cells", type=int, default=24000)
    ap.add_argument("--extra-blocks", type=int, default=0, help="blocks added to the shipped tower")
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    emit = emitter("cell_specialist")
    t0 = time.perf_counter()
    x_train, y_train = goal_cells(args.train_cells, TRAIN_SEED)
    x_fresh, y_fresh = goal_cells(2000, FRESH_SEED)
    lab = lab_eval_sets(ToyTeacherSettings())["lab"]
    teacher = Teacher(TOY_MODEL, pretrained=verified_shipped_weights())
    text = teacher.encode_text(list(SHAPES)).clone()  # frozen prompts: the zero-shot classifier
    tower = build_tower(args, teacher)
    size, mean, std = teacher.image_size, teacher._mean, teacher._std
    pixels = (resize_views(x_train, size).clamp(0, 1) * 255).round().to(torch.uint8)
    opt = torch.optim.AdamW(tower.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    # the teacher recipe's schedule: linear warm-up, then cosine to zero at the last step
    schedule = ToyTeacherSettings(steps=args.steps, lr=args.lr, warmup_steps=args.warmup)

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        tower.eval()
        with torch.no_grad():
            preds = []
            for b in range(0, len(x), 256):
                z = tower((resize_views(x[b : b + 256], size) - mean) / std)
                preds.append((F.normalize(z, dim=-1) @ text.t()).argmax(1))
        tower.train()
        return float((torch.cat(preds) == y).float().mean())

    print(f"cells ready in {time.perf_counter() - t0:.0f}s", flush=True)
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, schedule)
        idx = torch.randint(len(pixels), (128,), generator=gen)
        x = _augment(pixels[idx].float() / 255, gen)
        z = F.normalize(tower((x - mean) / std), dim=-1)
        loss = F.cross_entropy(args.scale * z @ text.t(), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            print(
                f"step {step + 1}: goal cells {accuracy(lab[2], lab[3]):.3f}, fresh cells "
                f"{accuracy(x_fresh, y_fresh):.3f} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    extra = {"init": args.init, "steps": args.steps, "train_cells": args.train_cells}
    extra["parameters"] = sum(p.numel() for p in tower.parameters())
    if args.init == "shipped":
        extra["extra_blocks"] = args.extra_blocks
    emit("goal_cells", accuracy(lab[2], lab[3]), 0.85, "accuracy", **extra)
    emit("fresh_cells", accuracy(x_fresh, y_fresh), 0.85, "accuracy", **extra)
    emit("own_training_cells", accuracy(x_train[:2000], y_train[:2000]), None, "accuracy")
    if args.init == "shipped":  # what specialising costs the single objects
        emit("single_objects", accuracy(lab[0], lab[1]), 0.95, "accuracy")
    emit("seconds", time.perf_counter() - t0, None, "s")


if __name__ == "__main__":
    main()
