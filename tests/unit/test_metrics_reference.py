"""mIoU from accumulated confusion matrices against an independent implementation."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from zeroseg.metrics import confusion_matrix, scores_from_confusion


def test_miou_matches_torchmetrics_with_ignore_pixels():
    rng = np.random.default_rng(7)
    k = 6
    names = [f"c{i}" for i in range(k)]
    reference = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="none")
    total = np.zeros((k, k), np.int64)
    for _ in range(4):  # several images, summed like evaluation parts
        gt = rng.integers(0, k, (17, 23))
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = np.where(rng.random(gt.shape) < 0.5, gt % k, rng.integers(0, k, gt.shape))
        pred[gt == 255] = rng.integers(0, k, (gt == 255).sum())  # ignored whatever they are
        total += confusion_matrix(pred, gt, k)
        reference.update(torch.from_numpy(pred), torch.from_numpy(gt))
    ours = scores_from_confusion(total, names)
    per_class = reference.compute().numpy()
    np.testing.assert_allclose([ours["per_class"][n] for n in names], per_class, rtol=1e-6)
    np.testing.assert_allclose(ours["miou"], per_class.mean(), rtol=1e-6)
    assert 0.2 < ours["miou"] < 0.9  # neither trivial nor perfect
