"""The cell-specialist bench trains on the goal's kind of cell and reads out like the teacher."""

from __future__ import annotations

import argparse

import torch

from bench.cell_specialist import build_tower, goal_cells
from zeroseg import toy_teacher as tt
from zeroseg.data.shapes import WorldSettings
from zeroseg.teacher import Teacher
from zeroseg.toy_assets import TOY_MODEL, verified_shipped_weights


def test_its_cells_are_drawn_as_the_goals_cells_are():
    _, _, cells, labels = tt.eval_sets(WorldSettings(), 24)
    images, ys = goal_cells(24, tt.EVAL_SEED)
    assert torch.equal(images, cells) and torch.equal(ys, labels)
    other, _ = goal_cells(24, 424242)  # the training stream is another one
    assert not torch.equal(other, images)


def test_the_towers_embed_into_the_teachers_space_and_train():
    teacher = Teacher(TOY_MODEL, pretrained=verified_shipped_weights())
    x = torch.rand(2, 3, teacher.image_size, teacher.image_size)
    with torch.no_grad():
        reference = teacher.model.visual(x)
    args = argparse.Namespace(init="shipped", seed=0, width=64, depth=1, heads=2, extra_blocks=0)
    shipped = build_tower(args, teacher)
    assert shipped.training and all(p.requires_grad for p in shipped.parameters())
    assert torch.equal(shipped.eval()(x), reference)  # the shipped tower itself, not a new one
    args.extra_blocks = 2
    deeper = build_tower(args, Teacher(TOY_MODEL, pretrained=verified_shipped_weights()))
    assert len(deeper.trunk.blocks) == len(shipped.trunk.blocks) + 2
    assert torch.allclose(deeper.eval()(x), reference, atol=1e-6)  # starts as the shipped tower
    args.init = "scratch"
    fresh = build_tower(args, teacher)
    assert fresh(x).shape == (2, teacher.embed_dim)
    assert sum(p.numel() for p in fresh.parameters()) != sum(
        p.numel() for p in shipped.parameters()
    )
