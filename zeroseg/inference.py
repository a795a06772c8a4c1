"""Turning embeddings into pixel labels with text embeddings (open-vocabulary classification).

Label convention everywhere: class index ``c`` of ``text_emb`` -> label ``c + 1``; label 0 is
background. Background modes:

- ``"threshold"`` (paper / GroupViT): background where the max of ``softmax(scale * cos)`` over
  classes is below ``threshold``;
- ``"cosine"``: background where the max raw cosine is below ``threshold`` (suits weak
  teachers whose softmax saturates);
- ``"prompt"``: ``text_emb[0]`` is a background prompt; the argmax is the label directly
  (0 = background, c = class c), ``threshold`` unused;
- ``"none"``: never background.

The student, the MaskCLIP dense baseline and the grid-crop baseline share this code, so they
differ only in where the per-location embeddings come from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND_MODES = ("threshold", "cosine", "prompt", "none")


def cosine_scores(emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (..., C) between embeddings (..., D) and class embeddings (C, D)."""
    e = F.normalize(emb.float(), dim=-1)
    t = F.normalize(text_emb.float().to(e.device), dim=-1)
    return e @ t.T


def class_probabilities(
    segments: torch.Tensor, text_emb: torch.Tensor, scale: float = 100.0
) -> torch.Tensor:
    """softmax(scale * cos) over classes: (G, D), (C, D) -> (G, C)."""
    return (scale * cosine_scores(segments, text_emb)).softmax(dim=-1)


def labels_from_scores(
    cos: torch.Tensor,
    threshold: float,
    background: str = "threshold",
    scale: float = 100.0,
    class_dim: int = -1,
) -> torch.Tensor:
    """Cosine scores with a class axis -> int64 labels (class c -> c + 1, background 0)."""
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    cos = cos.movedim(class_dim, -1)
    best = cos.argmax(dim=-1)
    if background == "prompt":
        return best.long()
    labels = best.long() + 1
    if background == "threshold":
        conf = (scale * cos).softmax(dim=-1).amax(dim=-1)
        labels = torch.where(conf < threshold, torch.zeros_like(labels), labels)
    elif background == "cosine":
        labels = torch.where(cos.amax(dim=-1) < threshold, torch.zeros_like(labels), labels)
    return labels


def pixel_class_scores(
    pixel_groups: torch.Tensor, segments: torch.Tensor, text_emb: torch.Tensor
) -> torch.Tensor:
    """(C, H, W) cosine map: each pixel takes the scores of its argmax group.

    Use it for sliding-window evaluation: average the maps of overlapping windows, then call
    :func:`labels_from_scores` with ``class_dim=0``.
    """
    group_of_pixel = pixel_groups.argmax(dim=0)  # (H, W)
    cos = cosine_scores(segments, text_emb)  # (G, C)
    return cos[group_of_pixel.to(cos.device)].permute(2, 0, 1)


def label_map(
    pixel_groups: torch.Tensor,
    segments: torch.Tensor,
    text_emb: torch.Tensor,
    threshold: float,
    background: str = "threshold",
    scale: float = 100.0,
) -> torch.Tensor:
    """Student output for one image -> (H, W) int64 labels.

    ``pixel_groups`` (G, H, W) soft assignment (pixel -> its argmax group), ``segments`` (G, D),
    ``text_emb`` (C, D). Each group gets its nearest class, or background (see module doc).
    """
    group_labels = labels_from_scores(
        cosine_scores(segments, text_emb), threshold, background, scale
    )  # (G,)
    return group_labels[pixel_groups.argmax(dim=0).to(group_labels.device)]


def dense_score_map(
    dense: torch.Tensor, text_emb: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """MaskCLIP-style: dense features (h, w, D) -> (C, H, W) cosines, bilinearly upsampled
    (dense logits are usually interpolated before classification)."""
    cos = cosine_scores(dense, text_emb).permute(2, 0, 1)  # (C, h, w)
    return F.interpolate(cos[None], size=tuple(out_hw), mode="bilinear", align_corners=False)[0]


def grid_score_map(
    cell_emb: torch.Tensor, text_emb: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Grid-crop: one embedding per cell (gh, gw, D) -> (C, H, W) cosines, each cell painting its
    block: pixel (y, x) belongs to cell (floor(y * gh / H), floor(x * gw / W))."""
    cos = cosine_scores(cell_emb, text_emb)  # (gh, gw, C)
    gh, gw = cos.shape[:2]
    h, w = out_hw
    rows = torch.arange(h, device=cos.device) * gh // h
    cols = torch.arange(w, device=cos.device) * gw // w
    return cos[rows[:, None], cols[None, :]].permute(2, 0, 1)


def short_side_size(hw: tuple[int, int], short_side: int, multiple: int = 1) -> tuple[int, int]:
    """(H, W) scaled so the short side is ``short_side``, each side rounded to ``multiple``."""
    h, w = hw
    s = short_side / min(h, w)
    return tuple(max(multiple, int(round(v * s / multiple)) * multiple) for v in (h, w))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``[0, length)``; the last window is flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def sliding_window_scores(
    score_fn,
    image: torch.Tensor,
    window: int,
    stride: int,
) -> torch.Tensor:
    """Average the ``(C, window, window)`` score maps of overlapping windows over an image.

    ``image`` (3, H, W); ``score_fn`` maps a (1, 3, window, window) crop to its (C, window,
    window) scores. A side shorter than the window is zero-padded (and the padding cropped
    from the result). Returns (C, H, W).
    """
    _, h, w = image.shape
    ph, pw = max(h, window), max(w, window)
    if (ph, pw) != (h, w):
        image = F.pad(image, (0, pw - w, 0, ph - h))
    total = count = None
    for y in window_starts(ph, window, stride):
        for x in window_starts(pw, window, stride):
            scores = score_fn(image[None, :, y : y + window, x : x + window])
            if total is None:
                total = scores.new_zeros((scores.shape[0], ph, pw))
                count = scores.new_zeros((1, ph, pw))
            total[:, y : y + window, x : x + window] += scores
            count[:, y : y + window, x : x + window] += 1
    return (total / count)[:, :h, :w]
