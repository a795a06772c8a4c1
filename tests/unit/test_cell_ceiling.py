"""The cell-ceiling bench reads the very cells of the teacher's cell goal and votes fairly."""

from __future__ import annotations

import numpy as np
import torch

from bench.cell_ceiling import cell_masks, dihedral, knn_accuracy
from zeroseg import toy_teacher as tt
from zeroseg.data.shapes import WorldSettings


def test_the_bench_draws_exactly_the_goals_cells_with_their_object_masks():
    world = WorldSettings()
    _, _, cells, labels = tt.eval_sets(world, 40)
    images, masks, mask_labels = cell_masks(world, 40, np.random.default_rng([tt.EVAL_SEED, 2]), {})
    assert torch.equal(images, cells) and torch.equal(mask_labels, labels)
    assert masks.dtype == torch.bool and masks.shape == (40, 16, 16)
    cover = masks.flatten(1).float().mean(1)
    assert bool((cover >= 0.3).all())  # the goal's rule: the object covers >= 30% of the cell


def test_dihedral_gives_the_eight_orientations_of_an_asymmetric_mask():
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, :3] = True
    m[0, 1, 0] = True  # an L: no rotation or flip maps it onto itself
    out = dihedral(m)
    assert out.shape == (8, 4, 4)
    assert len({tuple(x.flatten().tolist()) for x in out}) == 8
    assert all(int(x.sum()) == 4 for x in out)


def test_knn_votes_the_nearest_masks_label():
    rng = np.random.default_rng(0)
    lib = torch.from_numpy(rng.random((60, 8, 8)) > 0.5)
    lib_labels = torch.arange(60) % 6
    query = lib[:12].clone()
    query[:, 0, 0] = ~query[:, 0, 0]  # one pixel off: still nearest to its own source
    acc = knn_accuracy(query, lib_labels[:12], lib, lib_labels, ks=(1,))
    assert acc == {1: 1.0}
    wrong = knn_accuracy(query, (lib_labels[:12] + 1) % 6, lib, lib_labels, ks=(1,))
    assert wrong == {1: 0.0}
