"""Posed training images and their permuted teacher views (train.augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroseg import train_step as ts
from zeroseg.augment import (
    AUGMENT_POSES,
    augment_batch,
    pose,
    step_generator,
    view_permutation,
)
from zeroseg.config import AUGMENT_MODES
from zeroseg.models import build_student
from zeroseg.views import grid_pixel_boxes

LEVELS = (1, 2, 3, 4)
SIZE = 64


def _cell_image(n: int) -> torch.Tensor:
    """(SIZE, SIZE) whose every pixel holds the index of its level-n cell, cut as extraction
    cuts the views."""
    img = torch.full((SIZE, SIZE), -1.0)
    for j, (x0, y0, x1, y1) in enumerate(grid_pixel_boxes(SIZE, [n])):
        img[y0:y1, x0:x1] = j
    assert (img >= 0).all()
    return img


def test_the_modes_are_the_configs_choices():
    assert tuple(AUGMENT_POSES) == AUGMENT_MODES
    assert len(AUGMENT_POSES["dihedral"]) == len(set(AUGMENT_POSES["dihedral"])) == 8


def test_a_mirror_swaps_columns_and_keeps_the_whole_image():
    perm = view_permutation(LEVELS, 0, True).tolist()
    assert perm[:5] == [0, 2, 1, 4, 3]  # v1, then the 2x2 grid mirrored
    assert perm[5:14] == [7, 6, 5, 10, 9, 8, 13, 12, 11]


@pytest.mark.parametrize("turns_mirrored", AUGMENT_POSES["dihedral"], ids=str)
def test_each_posed_cell_covers_the_view_it_is_given(turns_mirrored):
    """The posed image's cell j shows exactly the pixels of the original's view perm[j], for
    every level, with the cells at the uneven edges extraction uses (64 / 3)."""
    turns, mirrored = turns_mirrored
    perm = view_permutation(LEVELS, turns, mirrored)
    start = 0
    for n in LEVELS:
        posed = pose(_cell_image(n), turns, mirrored)
        for j, (x0, y0, x1, y1) in enumerate(grid_pixel_boxes(SIZE, [n])):
            shown = posed[y0:y1, x0:x1].unique().tolist()
            assert shown == [perm[start + j].item() - start], (n, j)
        start += n * n


def test_augment_batch_moves_each_images_views_with_it():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, SIZE, SIZE, generator=g)
    views = torch.randn(16, 30, 8, generator=g)
    x, v = augment_batch(images, views, LEVELS, "dihedral", step_generator(3, 7, 0))
    seen = set()
    for b in range(16):
        match = [
            p
            for p, (k, m) in enumerate(AUGMENT_POSES["dihedral"])
            if torch.equal(x[b], pose(images[b], k, m))
        ]
        assert len(match) == 1
        k, m = AUGMENT_POSES["dihedral"][match[0]]
        assert torch.equal(v[b], views[b][view_permutation(LEVELS, k, m)])
        seen.add(match[0])
    assert len(seen) > 3  # the poses vary over the batch
    again = augment_batch(images, views, LEVELS, "dihedral", step_generator(3, 7, 0))
    assert torch.equal(again[0], x) and torch.equal(again[1], v)
    other = augment_batch(images, views, LEVELS, "dihedral", step_generator(3, 8, 0))
    assert not torch.equal(other[0], x)
    # the inputs are left as they were
    assert torch.equal(
        images, torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    )


def test_none_changes_nothing_and_hflip_only_mirrors():
    images, views = torch.rand(8, 3, SIZE, SIZE), torch.randn(8, 30, 4)
    x, v = augment_batch(images, views, LEVELS, "none", step_generator(0, 0, 0))
    assert x is images and v is views
    x, _ = augment_batch(images, views, LEVELS, "hflip", step_generator(0, 0, 0))
    for b in range(8):
        assert torch.equal(x[b], images[b]) or torch.equal(x[b], images[b].flip(-1))


def test_quarter_turns_refuse_oblong_images():
    with pytest.raises(ValueError, match="square"):
        augment_batch(
            torch.rand(4, 3, 32, 64),
            torch.randn(4, 30, 4),
            LEVELS,
            "dihedral",
            step_generator(0, 0, 0),
        )
    x, _ = augment_batch(
        torch.rand(4, 3, 32, 64), torch.randn(4, 30, 4), LEVELS, "hflip", step_generator(0, 0, 0)
    )
    assert x.shape == (4, 3, 32, 64)


def test_the_training_step_trains_on_posed_images():
    """Same weights and batch: the dihedral step's loss is the loss of the posed batch."""
    from zeroseg.losses import distill_loss

    torch.manual_seed(0)
    model = build_student("student-tiny-dense", 32).train()
    g = torch.Generator().manual_seed(1)
    views = torch.nn.functional.normalize(torch.randn(4, 30, 32, generator=g), dim=-1)
    batch = ts.StepBatch(torch.rand(4, 3, SIZE, SIZE, generator=g), views)
    weights = {"multiscale": 1.0, "matching": 1.0, "recon": 0.0, "dense": 1.0, "patch": 0.0}
    settings = ts.StepSettings(weights=weights, levels=LEVELS, augment="dihedral")
    x, v = augment_batch(batch.images, views, LEVELS, "dihedral", step_generator(0, 5, 1))
    with torch.no_grad():
        expected, _ = distill_loss(model(x), v, weights, levels=LEVELS, dense_levels=(4,), images=x)
        unposed, _ = distill_loss(
            model(batch.images), views, weights, levels=LEVELS, dense_levels=(4,), images=x
        )
    assert not np.isclose(float(expected), float(unposed))
    opt = ts.make_optimizer(model, settings)
    result = ts.train_step(
        model, batch, opt, 0, settings, augment_generator=step_generator(0, 5, 1)
    )
    assert float(result.loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="stem features"):
        ts.train_step(
            model, ts.StepBatch(batch.images, views, torch.zeros(4, 64, 8)), opt, 1, settings
        )
