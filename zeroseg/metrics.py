"""Segmentation metrics from accumulated confusion matrices.

Confusion matrices add up across images and workers, so evaluation shards can each write one
and the final scores come from their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """(C, C) int64 counts; rows = ground truth, columns = prediction.

    Pixels whose ground truth is ``ignore_index`` (or outside ``[0, C)``) are skipped;
    predictions outside ``[0, C)`` are an error, since they would silently vanish.
    """
    pred = np.asarray(pred).astype(np.int64, copy=False).ravel()
    gt = np.asarray(gt).astype(np.int64, copy=False).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt differ in size: {pred.shape} vs {gt.shape}")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    pred, gt = pred[keep], gt[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes})")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def scores_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy.

    IoU_c = TP / (TP + FP + FN). A class absent from both ground truth and prediction
    (union 0) gets ``None`` and is left out of the mean: mIoU averages over the classes with
    union > 0, the usual convention of accumulated-confusion evaluators.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} names")
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
    per_class: dict[str, float | None] = {}
    ious = []
    for name, t, u in zip(class_names, tp, union):
        if u > 0:
            iou = float(t / u)
            per_class[name] = iou
            ious.append(iou)
        else:
            per_class[name] = None
    total = cm.sum()
    return {
        "miou": float(np.mean(ious)) if ious else 0.0,
        "per_class": per_class,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
    }
