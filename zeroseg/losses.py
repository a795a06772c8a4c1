"""Distillation losses of ZeroSeg (paper Sec. 3): multi-scale L1, segment matching, MAE MSE.

Conventions (shared by both L1 terms so their weights are comparable):

- the distance between two embeddings is the L1 distance averaged over the D dimensions
  (``dim_reduction="mean"``; ``"sum"`` gives the plain L1 norm);
- the multi-scale term *sums* over the V views and the matching term *sums* over the G segments,
  as the paper's equations do; both are then averaged over the batch;
- teacher targets are L2-normalised by default (the cache already stores unit vectors, so this is
  a cheap safety net); student outputs are *not* normalised by default — the linear projections
  are free to match the targets' scale.

``views[:, 0]`` is the whole image (v1); ``views[:, 1:]`` are the local grid regions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

DEFAULT_WEIGHTS = {"multiscale": 1.0, "matching": 1.0, "recon": 1.0}
_REDUCTIONS = ("mean", "sum")


def _l1(a: torch.Tensor, b: torch.Tensor, dim_reduction: str) -> torch.Tensor:
    if dim_reduction not in _REDUCTIONS:
        raise ValueError(f"dim_reduction must be one of {_REDUCTIONS}")
    d = (a - b).abs()
    return d.mean(dim=-1) if dim_reduction == "mean" else d.sum(dim=-1)


def multiscale_l1(
    z: torch.Tensor, views: torch.Tensor, dim_reduction: str = "mean"
) -> torch.Tensor:
    """L1 between the global embedding z (B, D) and every view (B, V, D), equal weights.

    Summed over views, averaged over the batch (see the module docstring).
    """
    return _l1(z.unsqueeze(1), views, dim_reduction).sum(dim=1).mean()


def segment_matching(
    segments: torch.Tensor, local_views: torch.Tensor, dim_reduction: str = "mean"
) -> torch.Tensor:
    """Paper Eq. 1: sum_i min_j |g_i - v_j|_1 over segments (B, G, D) and local views (B, V', D).

    The nearest view j* is chosen without gradient (several segments may pick the same view);
    the loss is then the L1 to that view, so gradient flows to the segment only through the
    distance, never through the choice. Averaged over the batch.
    """
    with torch.no_grad():
        dist = _l1(segments.unsqueeze(2), local_views.unsqueeze(1), dim_reduction)  # (B, G, V')
        best = dist.argmin(dim=2)  # (B, G)
    target = local_views.gather(1, best.unsqueeze(-1).expand(-1, -1, local_views.shape[-1]))
    return _l1(segments, target, dim_reduction).sum(dim=1).mean()


def distill_loss(
    out: Mapping[str, torch.Tensor],
    views: torch.Tensor,
    weights: Mapping[str, float] | None = None,
    normalize_targets: bool = True,
    normalize_student: bool = False,
    dim_reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the three ZeroSeg terms for one batch.

    ``out`` is the student's forward dict (``z``, ``segments``, ``recon_loss``); ``views``
    (B, V, D) are the teacher embeddings (any float dtype, e.g. fp16 from the cache). Missing
    weight keys default to 1. Returns ``(total, {"multiscale", "matching", "recon"})`` with the
    unweighted terms (detached) for logging.
    """
    w = dict(DEFAULT_WEIGHTS)
    if weights:
        unknown = set(weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise KeyError(f"unknown loss weights: {sorted(unknown)}")
        w.update(weights)
    z, segments = out["z"], out["segments"]
    targets = views.to(z.dtype)
    if normalize_targets:
        targets = F.normalize(targets, dim=-1)
    if normalize_student:
        z = F.normalize(z, dim=-1)
        segments = F.normalize(segments, dim=-1)
    terms = {
        "multiscale": multiscale_l1(z, targets, dim_reduction),
        "matching": segment_matching(segments, targets[:, 1:], dim_reduction),
        "recon": out["recon_loss"],
    }
    total = sum(w[k] * v for k, v in terms.items() if w[k] != 0)
    if not torch.is_tensor(total):  # every weight zero
        total = z.sum() * 0.0
    return total, {k: v.detach() for k, v in terms.items()}
