"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), for any score map.

Dense CLIP read-outs are coarse: a 14 x 14 token map upsampled to the image blurs every class
boundary. PAMR moves the scores along the image itself: each pixel repeatedly takes the average
of its neighbours' scores (3 x 3 neighbourhoods at several dilations), weighted by how alike
their colours are, so a boundary settles on the nearest colour edge. Pure torch, no gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DILATIONS = (1, 2, 4, 8, 12, 24)
_RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _as_chw(image: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] from that, or from an ``(H, W, 3)`` uint8 array / tensor."""
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
    if x.dtype == torch.uint8:  # (H, W, 3), as images are stored
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"image: uint8 must be (H, W, 3), got {tuple(x.shape)}")
        x = x.permute(2, 0, 1).float() / 255.0
    elif not x.is_floating_point():
        raise ValueError(f"image: expected uint8 (H, W, 3) or float (3, H, W), got {x.dtype}")
    elif x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image: float must be (3, H, W), got {tuple(x.shape)}")
    if tuple(x.shape[1:]) != tuple(hw):
        raise ValueError(f"image size {tuple(x.shape[1:])} does not match scores size {hw}")
    return x.float()


@torch.no_grad()
def pamr(
    scores: torch.Tensor,
    image: np.ndarray | torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = DILATIONS,
) -> torch.Tensor:
    """Refine ``(K, H, W)`` scores so class boundaries follow ``image``'s colour edges.

    Upsampled patch scores blur boundaries; averaging each pixel's score over its like-coloured
    neighbours (``iterations`` times) pulls them onto the edges. ``image`` is ``(3, H, W)``
    float in [0, 1] or ``(H, W, 3)`` uint8; the result keeps ``scores``' dtype and device.
    """
    if scores.ndim != 3 or not scores.is_floating_point():
        shape = tuple(scores.shape)
        raise ValueError(f"scores: expected float (K, H, W), got {scores.dtype} {shape}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not dilations or min(dilations) < 1:
        raise ValueError(f"dilations must be positive integers, got {tuple(dilations)}")
    h, w = scores.shape[1:]
    x = _as_chw(image, (h, w)).to(scores.device)
    if iterations == 0:
        return scores
    pad = max(dilations)
    shifts = [(dy * d, dx * d) for d in dilations for dy, dx in _RING]

    def shifted(t: torch.Tensor):  # t at x + shift for every shift, borders replicated
        padded = F.pad(t[None], (pad, pad, pad, pad), mode="replicate")[0]
        for dy, dx in shifts:
            yield padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]

    colours = torch.stack(list(shifted(x)), 1)  # (3, N, H, W)
    spread = torch.cat([colours, x[:, None]], 1).std(dim=1, keepdim=True)  # local colour spread
    affinity = -(colours - x[:, None]).abs() / (1e-8 + 0.1 * spread)
    weights = affinity.mean(0).softmax(0)  # (N, H, W): alike colours weigh most; sums to 1
    out = scores.to(torch.promote_types(scores.dtype, torch.float32))
    weights = weights.to(out.dtype)
    for _ in range(iterations):
        acc = torch.zeros_like(out)
        for wt, nb in zip(weights, shifted(out)):
            acc.addcmul_(wt[None], nb)
        out = acc
    return out.to(scores.dtype)
