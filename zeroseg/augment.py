"""Flips and quarter turns of a training batch that keep its cached teacher views valid.

The cache holds the teacher's embedding of each grid cell of the unaugmented image. Flipping or
turning the image moves its cells onto other cells of the same grid (the cells of a level tile
the image symmetrically, ``zeroseg.views.grid_pixel_boxes``), so the views are permuted to
match and the embedding of a cell stays the target of the pixels it covers. The target is the
teacher's embedding of the untransformed crop: right for a teacher that does not care about
mirror images or orientation (CLIP mostly does not mind a horizontal flip; the shapes world
draws every shape at any angle, so its lab may use all eight turns and flips).

Why: a student trained for more epochs on the same scenes fits their targets and not the
benchmark (docs/student_research.md); eight poses of each scene are eight times the scenes
for the per-patch terms at no extraction cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# train.augment: which poses a training image may take, each a (quarter turns, mirrored) pair.
AUGMENT_POSES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "hflip": ((0, False), (0, True)),
    "dihedral": tuple((k, m) for m in (False, True) for k in range(4)),
}


def pose(x: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """``x`` (..., H, W) mirrored left to right (if asked), then turned ``turns`` quarter
    turns anticlockwise: the one definition the images and the view grids both go through."""
    if mirrored:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns % 4 else x


def view_permutation(levels: Sequence[int], turns: int, mirrored: bool) -> torch.Tensor:
    """(V,) positions: view ``j`` of the posed image is view ``perm[j]`` of the original, for a
    view stack laid out level by level, row-major (``zeroseg.views.grid_boxes``)."""
    parts, start = [], 0
    for n in levels:
        cells = torch.arange(start, start + n * n).reshape(n, n)
        parts.append(pose(cells, turns, mirrored).reshape(-1))
        start += n * n
    return torch.cat(parts)


def augment_batch(
    images: torch.Tensor,
    views: torch.Tensor,
    levels: Sequence[int],
    mode: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of ``images`` (B, 3, H, W) in a pose drawn from ``AUGMENT_POSES[mode]`` with
    ``generator`` (on the CPU), and its views (B, V, D) permuted to follow it."""
    poses = AUGMENT_POSES[mode]
    if len(poses) == 1:
        return images, views
    if any(k % 2 for k, _ in poses) and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"quarter turns need square images, got {tuple(images.shape[-2:])}")
    drawn = torch.randint(len(poses), (images.shape[0],), generator=generator).tolist()
    out_x, out_v = images.clone(), views.clone()
    for p in sorted(set(drawn)):
        if p == 0:
            continue  # the identity pose: already in place
        rows = torch.tensor([i for i, d in enumerate(drawn) if d == p], device=images.device)
        turns, mirrored = poses[p]
        perm = view_permutation(levels, turns, mirrored).to(views.device)
        out_x[rows] = pose(images[rows], turns, mirrored)
        out_v[rows] = views[rows][:, perm]
    return out_x, out_v


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The poses' generator for one step of one worker: a function of the run's seed, the step
    and the rank only, so a resumed run draws the poses the uninterrupted one would."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + rank)
