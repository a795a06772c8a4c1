import numpy as np
import pytest

from zeroseg.metrics import confusion_matrix, scores_from_confusion


def test_confusion_known():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_scores_hand_computed():
    cm = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    s = scores_from_confusion(cm, ["bg", "a", "b", "absent"])
    # IoU bg = 3 / (4 + 5 - 3) = 0.5; a = 2 / (2 + 3 - 2) = 2/3; b = 0; absent -> None
    assert s["per_class"]["bg"] == pytest.approx(0.5)
    assert s["per_class"]["a"] == pytest.approx(2 / 3)
    assert s["per_class"]["b"] == 0.0
    assert s["per_class"]["absent"] is None
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)


def test_scores_against_brute_force():
    rng = np.random.default_rng(0)
    c = 5
    gt = rng.integers(0, c, size=(3, 17, 13))
    gt[rng.random(gt.shape) < 0.1] = 255
    gt[gt == 4] = 3  # class 4 never in gt ...
    pred = rng.integers(0, c - 1, size=gt.shape)  # ... nor in pred -> None
    cm = sum(confusion_matrix(p, g, c) for p, g in zip(pred, gt))
    s = scores_from_confusion(cm, [str(i) for i in range(c)])
    valid = gt != 255
    ious = []
    for k in range(c):
        inter = np.sum((pred == k) & (gt == k) & valid)
        union = np.sum(((pred == k) | (gt == k)) & valid)
        if union == 0:
            assert s["per_class"][str(k)] is None
        else:
            assert s["per_class"][str(k)] == pytest.approx(inter / union)
            ious.append(inter / union)
    assert s["miou"] == pytest.approx(np.mean(ious))
    assert s["pixel_accuracy"] == pytest.approx(np.mean(pred[valid] == gt[valid]))


def test_bad_inputs():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError):
        scores_from_confusion(np.zeros((2, 2), dtype=np.int64), ["a"])
