"""Per-pixel class scores for the student and the teacher-only baselines, on one image.

Every method reduces to the same thing: for each pixel the best class and its probability
(softmax over scaled cosine against the class text embeddings). Thresholding that probability
into background is then shared, which makes a threshold sweep cheap and keeps methods comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inference import class_probabilities
from .views import cut_views

METHODS = ("student", "grid_crop", "maskclip_dense", "all_background")
BASELINES = METHODS[1:]


def image_tensor(image: np.ndarray, size: int | None) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, s, s)`` float in [0, 1] (resized when ``size``)."""
    x = (
        torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float()
        / 255.0
    )
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x


def _per_pixel(probs: torch.Tensor, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(C, h, w)`` probabilities -> (max prob, argmax class) at ``out_hw``."""
    if probs.shape[-2:] != out_hw:
        probs = F.interpolate(probs[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    maxp, cls = probs.max(dim=0)
    return maxp.numpy(), cls.numpy()


@torch.no_grad()
def student_scores(
    student, image: np.ndarray, text_emb: torch.Tensor, size: int, scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel -> its group's class: groups from the student's soft assignment maps."""
    h, w = image.shape[:2]
    segments, pixel_groups = student.segment(image_tensor(image, size))
    probs = class_probabilities(segments[0], text_emb, scale)  # (G, C)
    groups = F.interpolate(pixel_groups, size=(h, w), mode="bilinear", align_corners=False)[0]
    group = groups.argmax(dim=0)  # (H, W)
    maxp, cls = probs.max(dim=1)
    return maxp[group].numpy(), cls[group].numpy()


@torch.no_grad()
def grid_scores(
    teacher,
    image: np.ndarray,
    text_emb: torch.Tensor,
    size: int,
    grid: int = 4,
    scale: float = 100.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify each cell of a ``grid`` x ``grid`` split with the teacher; cells are blocks."""
    h, w = image.shape[:2]
    crop = (image_tensor(image, size)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    views = cut_views(crop[None], [grid], teacher.image_size)[0]  # (g*g, 3, s, s)
    emb = teacher.encode_images(views)
    probs = class_probabilities(emb, text_emb, scale).T.reshape(-1, grid, grid)
    probs = F.interpolate(probs[None], size=(h, w), mode="nearest")[0]
    maxp, cls = probs.max(dim=0)
    return maxp.numpy(), cls.numpy()


@torch.no_grad()
def dense_scores(
    teacher, image: np.ndarray, text_emb: torch.Tensor, scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """MaskCLIP-style: classify the teacher's per-location embeddings, upsample bilinearly."""
    h, w = image.shape[:2]
    dense = teacher.dense_features(image_tensor(image, teacher.image_size))[0]  # (h', w', D)
    hh, ww, d = dense.shape
    probs = class_probabilities(dense.reshape(-1, d), text_emb, scale)
    probs = probs.T.reshape(-1, hh, ww)
    return _per_pixel(probs, (h, w))


def labels_at(maxp: np.ndarray, cls: np.ndarray, threshold: float) -> np.ndarray:
    """Class ``k`` -> label ``k + 1``; pixels whose best probability is below -> 0."""
    return np.where(maxp >= threshold, cls + 1, 0).astype(np.int64)


def method_scores(
    method: str,
    image: np.ndarray,
    text_emb: torch.Tensor,
    *,
    student=None,
    teacher=None,
    size: int,
    scale: float = 100.0,
) -> tuple[np.ndarray, np.ndarray]:
    if method == "student":
        return student_scores(student, image, text_emb, size, scale)
    if method == "grid_crop":
        return grid_scores(teacher, image, text_emb, size, 4, scale)
    if method == "maskclip_dense":
        return dense_scores(teacher, image, text_emb, scale)
    if method == "all_background":
        h, w = image.shape[:2]
        return np.zeros((h, w), np.float32), np.zeros((h, w), np.int64)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def sweep_labels(
    maxp: np.ndarray, cls: np.ndarray, thresholds: Sequence[float]
) -> list[np.ndarray]:
    return [labels_at(maxp, cls, t) for t in thresholds]
