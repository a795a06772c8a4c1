"""Per-pixel class scores for the student and the teacher-only baselines, on one image.

Every method reduces to the same thing: a ``(1 + C, H, W)`` cosine map against the text
embeddings of a background prompt (row 0) and the C class names. A *background rule* then turns
the map into labels, so every method is scored by the same rules and a sweep over rules costs one
forward pass:

- ``prompt``: the argmax over background prompt and classes is the label;
- ``threshold:T``: background where the max of softmax(scale * cos) over the classes is below T
  (the paper's protocol);
- ``cosine:T``: background where the best raw cosine is below T;
- ``argmax:T``: the argmax over background and classes, and background wherever the max of
  softmax(scale * cos) over all of them is below T (the SCLIP family's protocol, whose
  background row is a list of stuff names).

A class given several names (synonyms) scores the max of its names' cosines
(:func:`group_max`), so every rule sees one row per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .class_files import flatten
from .config import BASELINE_METHODS, STUDENT_READOUTS, TEACHER_DENSE_METHODS
from .inference import (
    dense_score_map,
    grid_score_map,
    labels_from_scores,
    pixel_class_scores,
    short_side_size,
    sliding_window_scores,
)
from .last_block import NACLIP_SIGMA
from .views import cut_views

# the teacher's dense read-outs by method name: what its last block computes
DENSE_METHODS = {
    "maskclip_dense": "value",
    "dense_raw": "raw",
    "sclip": "sclip",
    "clearclip": "clearclip",
    "naclip": "naclip",
}
assert tuple(DENSE_METHODS) == TEACHER_DENSE_METHODS
# The crop read-outs: each pixel scored by the teacher's embeddings of the grid cells around it.
# grid_crop is the 4x4 cells; multigrid_crop averages the 3x3 and 4x4 cells (of the level sets
# 3, 4, 3+4, 2+3+4, 1+2+3+4 and 2+4, the best on the shapes validation split: 33.1% against
# 27.3% for 4x4 alone), the map a student regressing both levels' cells would reach at best.
GRID_METHODS = {"grid_crop": (4,), "multigrid_crop": (3, 4)}
METHODS = ("student", *BASELINE_METHODS)
BASELINES = BASELINE_METHODS
BACKGROUND_NAME = "background"
RULE_KINDS = ("prompt", "threshold", "cosine", "argmax")


def baselines_for(dense_modes: Sequence[str]) -> tuple[str, ...]:
    """Every baseline a teacher with these dense read-outs can run (a CNN has no attention to
    change, so the SCLIP family does not apply to it)."""
    return tuple(m for m in BASELINES if m not in DENSE_METHODS or DENSE_METHODS[m] in dense_modes)


def parse_rule(rule: str) -> tuple[str, float]:
    """``"threshold:0.9"`` -> ("threshold", 0.9); ``"prompt"`` -> ("prompt", 0.0)."""
    kind, _, value = rule.partition(":")
    if kind == "prompt" and not value:
        return kind, 0.0
    if kind in RULE_KINDS[1:] and value:
        try:
            return kind, float(value)
        except ValueError:
            pass
    raise ValueError(
        f"background rule {rule!r}: use 'prompt', 'threshold:<p>', 'cosine:<c>' or 'argmax:<p>'"
    )


def text_embeddings(teacher, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``(1 + C, D)``: the background prompt first, then the classes (prompt ensembles)."""
    return teacher.encode_text([BACKGROUND_NAME, *class_names], list(templates))


def text_query(
    teacher,
    classes: Sequence[str | Sequence[str]],
    templates: Sequence[str],
    background: Sequence[str] = (BACKGROUND_NAME,),
) -> tuple[torch.Tensor, list[int] | None]:
    """Text embeddings of every name, and each name's class for :func:`group_max`.

    ``classes``: a name, or a list of synonyms, per class; ``background``: the names of row 0.
    One name per class and the plain background prompt give ``(1 + C, D)`` and None."""
    per_class = [[c] if isinstance(c, str) else list(c) for c in classes]
    for k, synonyms in enumerate(per_class, 1):
        if not synonyms:
            raise ValueError(f"class {k} has no names")
    names, groups = flatten([list(background), *per_class])
    emb = teacher.encode_text(names, list(templates))
    return emb, (None if len(names) == len(classes) + 1 else groups)


def group_max(cos: torch.Tensor, groups: Sequence[int] | None) -> torch.Tensor:
    """``(N, H, W)`` cosines of N names -> ``(G, H, W)``, each class the max over its names;
    ``groups[n]`` is name n's class (0 = background). None: one name per class already."""
    if groups is None:
        return cos
    index = torch.as_tensor(list(groups), device=cos.device)
    if index.numel() != cos.shape[0]:
        raise ValueError(f"{cos.shape[0]} name rows but {index.numel()} group indices")
    return torch.stack([cos[index == k].amax(0) for k in range(int(index.max()) + 1)])


def image_tensor(image: np.ndarray, size: int | tuple[int, int] | None) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, h, w)`` float in [0, 1], resized to ``size`` (a side
    or ``(h, w)``) when given."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
    x = x.float() / 255.0
    hw = (size, size) if isinstance(size, int) else size
    if hw is not None and tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.no_grad()
def student_cosines(
    student,
    image: np.ndarray,
    text: torch.Tensor,
    size: int,
    window: int | None = None,
    stride: int | None = None,
    readout: str = "segments",
) -> torch.Tensor:
    """Pixel -> its group (the student's composed soft assignment) -> the group's cosines.

    With ``readout="segments+patches"`` each window's map is averaged with the cosines of the
    student's per-patch projections (bilinearly upsampled): the groups draw the regions, the
    patches add where inside a region the evidence for each class lies.

    The evaluation protocol: the short side is resized to ``size`` (aspect kept, sides rounded
    to the patch size), windows of ``window`` (default ``size``) slide with ``stride``
    (default ``window``), overlapping windows' cosine maps are averaged, and the map is
    resized bilinearly back to the image.
    """
    h, w = image.shape[:2]
    window = window or size
    resized = short_side_size((h, w), size, student.cfg.patch_size)
    # on the student's device, so a GPU task computes there
    x = image_tensor(image, resized)[0].to(next(student.parameters()).device)

    if readout not in STUDENT_READOUTS:
        raise ValueError(f"student read-out {readout!r}: use one of {', '.join(STUDENT_READOUTS)}")

    def window_scores(crop: torch.Tensor) -> torch.Tensor:
        if readout == "segments":
            segments, pixel_groups = student.segment(crop)
            return pixel_class_scores(pixel_groups[0], segments[0], text)
        segments, pixel_groups, patches = student.segment_with_patches(crop)
        dense = dense_score_map(patches[0], text, tuple(crop.shape[-2:]))
        if readout == "patches":  # the per-patch projections alone, a diagnostic
            return dense
        groups = pixel_class_scores(pixel_groups[0], segments[0], text)
        return 0.5 * (groups + dense)

    cos = sliding_window_scores(window_scores, x, window, stride or window)
    if tuple(cos.shape[-2:]) != (h, w):
        cos = F.interpolate(cos[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return cos


@torch.no_grad()
def grid_cosines(
    teacher, image: np.ndarray, text: torch.Tensor, size: int, levels: Sequence[int] = (4,)
) -> torch.Tensor:
    """Classify each cell of a g x g split (for each g in ``levels``) with the teacher; each
    pixel takes the mean of the cosines of the cells that contain it (one level: blocks)."""
    crop = (image_tensor(image, size)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    maps = []
    for grid in levels:
        views = cut_views(crop[None], [grid], teacher.image_size)[0]  # (g*g, 3, s, s)
        cells = teacher.encode_images(views).reshape(grid, grid, -1)
        maps.append(grid_score_map(cells, text, image.shape[:2]))
    return torch.stack(maps).mean(dim=0)


@torch.no_grad()
def dense_cosines(
    teacher,
    image: np.ndarray,
    text: torch.Tensor,
    input_size: int | None = None,
    mode: str = "value",
    sigma: float = NACLIP_SIGMA,
    windows: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """The teacher's per-location embeddings under a last-block ``mode``
    (:data:`DENSE_METHODS`), cosines upsampled bilinearly.

    Without ``windows`` the image is resized to one square of ``input_size`` (default the
    teacher's own). ``windows = (short_side, window, stride)``: the short side is resized,
    windows of ``window`` (fed at that size) slide with ``stride`` and their maps are averaged,
    as the SCLIP family's protocol does with a CLIP at 224 px."""

    def window_cosines(crop: torch.Tensor, size: int | None) -> torch.Tensor:
        dense = teacher.dense_features(crop, input_size=size, mode=mode, sigma=sigma)[0]
        return dense_score_map(dense, text, tuple(crop.shape[-2:]))

    h, w = image.shape[:2]
    if windows is None:
        x = image_tensor(image, input_size or teacher.image_size)
        dense = teacher.dense_features(x, input_size=input_size, mode=mode, sigma=sigma)[0]
        return dense_score_map(dense, text, (h, w))
    short, window, stride = windows
    x = image_tensor(image, short_side_size((h, w), short))[0]
    cos = sliding_window_scores(lambda c: window_cosines(c, window), x, window, stride)
    return F.interpolate(cos[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def method_cosines(
    method: str,
    image: np.ndarray,
    text: torch.Tensor,
    *,
    student=None,
    teacher=None,
    size: int,
    dense_input_size: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    readout: str = "segments",
    sigma: float = NACLIP_SIGMA,
    teacher_windows: bool = False,
) -> torch.Tensor | None:
    """``(rows, H, W)`` cosines of one method against the rows of ``text``; None for
    ``all_background``. ``size`` is the student's short side (and the grid-crop's square
    input); ``window`` / ``stride`` its sliding window; ``readout`` the student's
    (:data:`STUDENT_READOUTS`); ``dense_input_size`` the teacher's input side for its dense
    read-outs (:data:`DENSE_METHODS`), or with ``teacher_windows`` they slide the same windows
    over the same short side as the student; ``sigma`` is NACLIP's neighbourhood."""
    if method == "student":
        return student_cosines(student, image, text, size, window, stride, readout)
    if method in GRID_METHODS:
        return grid_cosines(teacher, image, text, size, GRID_METHODS[method])
    if method in DENSE_METHODS:
        windows = (size, window or size, stride or window or size) if teacher_windows else None
        mode = DENSE_METHODS[method]
        return dense_cosines(teacher, image, text, dense_input_size, mode, sigma, windows)
    if method == "all_background":
        return None
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def apply_rule(
    cos: torch.Tensor | None, rule: str, hw: tuple[int, int], scale: float = 100.0
) -> np.ndarray:
    """Labels (0 = background, k = k-th class) from a ``(1 + C, H, W)`` map and a rule."""
    if cos is None:
        return np.zeros(hw, np.int64)
    kind, value = parse_rule(rule)
    if kind == "prompt":
        return labels_from_scores(cos, 0.0, "prompt", scale, class_dim=0).numpy()
    if kind == "argmax":
        labels = cos.argmax(dim=0)
        conf = (scale * cos).softmax(dim=0).amax(dim=0)
        return torch.where(conf < value, torch.zeros_like(labels), labels).numpy()
    return labels_from_scores(cos[1:], value, kind, scale, class_dim=0).numpy()
