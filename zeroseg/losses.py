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

Beyond the paper (off by default, weight 0): two *dense* terms that give every patch a target,
the teacher embedding of the grid cell(s) the patch lies in. The paper's losses only see pooled
segments, so nothing tells the patch-to-group assignment where to put a patch, and on small
worlds the grouping collapses to one group. ``dense`` scores the student the way evaluation uses
it (pixel -> its group -> that group's embedding): the assignment-weighted L1 between each
patch's groups and its cell target, a soft k-means that moves patches to the segment nearest
their cell and segments toward their patches' cells. ``patch`` regresses a per-patch projection
of the encoder tokens onto the same targets. ``affinity`` ties the grouping to the image
itself: neighbouring pixels of nearly the same colour should share a group and pixels of clearly
different colours should not (a pairwise colour prior, as weakly supervised segmentation uses).
``region`` gives every view its own target the way the teacher made it: the mean of the per-patch
projections over the patches the view's box covers must point where the view's embedding does.
Unlike ``patch``, which pulls every patch of a cell to that cell's embedding (its best fit is
the blocky cell map itself), it leaves the patches inside a box free to differ as long as their
mean agrees, so the overlapping boxes of all levels together say which patches carry the object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

DEFAULT_WEIGHTS = {
    "multiscale": 1.0,
    "matching": 1.0,
    "recon": 1.0,
    "dense": 0.0,
    "patch": 0.0,
    "affinity": 0.0,
    "region": 0.0,
}
_REDUCTIONS = ("mean", "sum")
DENSE_MODES = ("mean", "min")
DEFAULT_LEVELS = (1, 2, 3, 4)
DISTANCES = ("l1", "cosine")
MULTISCALE_VIEWS = ("all", "global")


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)


def _l1(a: torch.Tensor, b: torch.Tensor, dim_reduction: str) -> torch.Tensor:
    if dim_reduction not in _REDUCTIONS:
        raise ValueError(f"dim_reduction must be one of {_REDUCTIONS}")
    d = (a - b).abs()
    return d.mean(dim=-1) if dim_reduction == "mean" else d.sum(dim=-1)


def _distance(a: torch.Tensor, b: torch.Tensor, distance: str, dim_reduction: str) -> torch.Tensor:
    if distance == "l1":
        return _l1(a, b, dim_reduction)
    if distance == "cosine":
        return _cosine_distance(a, b)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


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


def _cell_of(
    patch_index: torch.Tensor, grid_hw: tuple[int, int] | torch.Tensor, n: int
) -> torch.Tensor:
    """Row-major index of the cell of an n x n grid that holds each patch's centre, for raster
    positions ``patch_index`` on a ``grid_hw`` patch grid."""
    gh, gw = (int(v) for v in grid_hw)
    rows = (patch_index // gw).to(torch.float64)
    cols = (patch_index % gw).to(torch.float64)
    r = ((rows + 0.5) * n / gh).floor().long().clamp_(0, n - 1)
    c = ((cols + 0.5) * n / gw).floor().long().clamp_(0, n - 1)
    return r * n + c


def patch_cell_targets(
    views: torch.Tensor,
    patch_index: torch.Tensor,
    grid_hw: tuple[int, int] | torch.Tensor,
    target_levels: Sequence[int] = (4,),
    levels: Sequence[int] = DEFAULT_LEVELS,
) -> torch.Tensor:
    """(B, N', L, D): for each patch, the view of each level in ``target_levels`` containing it.

    ``views`` (B, V, D) are laid out level by level, row-major (``zeroseg.views.grid_boxes``);
    ``patch_index`` (B, N') are raster positions on a ``grid_hw`` patch grid. A patch belongs to
    the cell containing its centre.
    """
    offsets, start = {}, 0
    for n in levels:
        offsets[n] = start
        start += n * n
    if start != views.shape[1]:
        raise ValueError(f"levels {tuple(levels)} give {start} views, got {views.shape[1]}")
    idx = []
    for n in target_levels:
        if n not in offsets:
            raise ValueError(f"target level {n} not among the view levels {tuple(levels)}")
        idx.append(offsets[n] + _cell_of(patch_index, grid_hw, n))
    index = torch.stack(idx, dim=-1)  # (B, N', L)
    b, npatch, nl = index.shape
    flat = views.gather(1, index.reshape(b, -1, 1).expand(-1, -1, views.shape[-1]))
    return flat.reshape(b, npatch, nl, views.shape[-1])


def region_membership(
    patch_index: torch.Tensor,
    grid_hw: tuple[int, int] | torch.Tensor,
    levels: Sequence[int] = DEFAULT_LEVELS,
) -> torch.Tensor:
    """(B, N', V) one-hot: which view of every level holds each patch (the cell containing the
    patch's centre, as :func:`patch_cell_targets` decides), views laid out by ``levels``."""
    return torch.cat([F.one_hot(_cell_of(patch_index, grid_hw, n), n * n) for n in levels], -1)


def region_pooling(
    patch_embeds: torch.Tensor,
    cell_targets: torch.Tensor,
    membership: torch.Tensor,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - cos`` between each view's embedding and the mean of the per-patch projections
    (B, N', D) over the patches its box holds, averaged over the views that hold a visible
    patch and over the batch. ``cell_targets`` (B, V, D) and ``membership`` (B, N', V) share
    the view layout; ``center`` (D,) is subtracted from the pooled means and the targets."""
    weights = membership.to(patch_embeds.dtype)
    counts = weights.sum(dim=1)  # (B, V)
    pooled = torch.einsum("bnv,bnd->bvd", weights, patch_embeds) / counts.clamp(min=1)[..., None]
    targets = cell_targets
    if center is not None:
        pooled, targets = pooled - center, targets - center
    dist = 1 - F.cosine_similarity(pooled, targets, dim=-1)  # (B, V)
    seen = (counts > 0).to(dist.dtype)
    return (dist * seen).sum() / seen.sum().clamp(min=1)


def dense_assignment(
    patch_groups: torch.Tensor,
    segments: torch.Tensor,
    cell_targets: torch.Tensor,
    mode: str = "mean",
    dim_reduction: str = "mean",
    distance: str = "l1",
) -> torch.Tensor:
    """Expected L1 between a patch's group embedding and its cell target(s).

    ``patch_groups`` (B, N', G) soft assignment, ``segments`` (B, G, D), ``cell_targets``
    (B, N', L, D). Over the L levels the distance is averaged (``mean``) or the nearest level is
    taken (``min``: a patch need only agree with one of the cells containing it, which lets
    segments be finer than any one grid). ``distance="cosine"`` uses ``1 - cos`` in place of
    the L1 (``dim_reduction`` is then unused). Averaged over patches and batch.
    """
    if mode not in DENSE_MODES:
        raise ValueError(f"mode must be one of {DENSE_MODES}, got {mode!r}")
    d = _distance(
        segments[:, None, :, None, :], cell_targets[:, :, None, :, :], distance, dim_reduction
    )
    d = d.mean(dim=-1) if mode == "mean" else d.amin(dim=-1)  # (B, N', G)
    return (patch_groups * d).sum(dim=-1).mean()


def patch_regression(
    patch_embeds: torch.Tensor,
    cell_targets: torch.Tensor,
    dim_reduction: str = "mean",
    distance: str = "l1",
) -> torch.Tensor:
    """L1 (or ``1 - cos``) between each patch's projection (B, N', D) and its cell targets
    (B, N', L, D)."""
    return _distance(patch_embeds.unsqueeze(2), cell_targets, distance, dim_reduction).mean()


def color_affinity(
    patch_groups: torch.Tensor,
    patch_index: torch.Tensor,
    grid_hw: torch.Tensor | Sequence[int],
    images: torch.Tensor,
    dilations: Sequence[int] = (1, 2, 4),
    far: Sequence[int] = (8, 16, 32),
    same_below: float = 0.05,
    apart_above: float = 0.2,
    stride: int = 1,
) -> torch.Tensor:
    """Pairwise colour prior on the grouping, at pixel resolution.

    ``patch_groups`` (B, N', G) is the composed soft assignment of the patches the head saw,
    ``patch_index`` (B, N') their raster positions, ``images`` (B, 3, H, W) in [0, 1]. The
    assignment is upsampled bilinearly to the pixels, as inference does (masked patches are
    left out of the interpolation; pixels with no visible patch nearby are skipped). For pixel
    pairs ``d`` apart (right, down and both diagonals) the probability of sharing a group is
    ``s = sum_g p_g q_g``. Pairs whose colours (after a 3x3 box blur, which removes texture
    noise) differ by more than ``apart_above`` (RGB L2) pay ``-log(1 - s)``, at every distance
    in ``dilations`` and ``far``: the far pairs keep two separate objects of different colours
    out of one group. Neighbours (``dilations``) differing by less than ``same_below`` pay
    ``-log s``; far pairs of one colour are left free. The two means are added, so the few
    pairs across boundaries weigh as much as the many inside regions.

    ``stride`` s > 1 compares pixels on every s-th row and column only: the blurred colours are
    averaged over s x s blocks and the assignment is upsampled to that coarser grid (it is a
    bilinear map of the patch grid, smooth below a patch), and the distances are kept in image
    pixels, those that are not a multiple of s left out. The pairs cost s * s times less.
    """
    b, n, g = patch_groups.shape
    gh, gw = (int(v) for v in grid_hw)
    full = patch_groups.new_zeros(b, gh * gw, g + 1)  # the last channel marks visible patches
    seen = torch.cat([patch_groups, torch.ones_like(patch_groups[..., :1])], dim=-1)
    full = full.scatter(1, patch_index[..., None].expand(-1, -1, g + 1), seen)
    maps = full.transpose(1, 2).reshape(b, g + 1, gh, gw).float()
    colors = F.avg_pool2d(images.float(), 3, stride=1, padding=1, count_include_pad=False)
    if stride > 1:
        colors = F.avg_pool2d(colors, stride)
    up = F.interpolate(maps, size=colors.shape[-2:], mode="bilinear", align_corners=False)
    weight = up[:, -1:]  # share of the interpolation that came from visible patches
    probs = up[:, :-1] / weight.clamp_min(1e-6)
    valid = (weight[:, 0] > 0.25).float()
    offsets = affinity_offsets(*(strided_distances(d, stride) for d in (dilations, far)))
    return _PairColourPrior.apply(probs, colors.detach(), valid, offsets, same_below, apart_above)


def strided_distances(distances: Sequence[int], stride: int) -> tuple[int, ...]:
    """Pixel distances in steps of a grid that keeps every ``stride``-th pixel: those that are
    a multiple of it, divided by it."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return tuple(d // stride for d in distances if d % stride == 0)


def affinity_offsets(dilations: Sequence[int], far: Sequence[int]) -> list[tuple[int, int, bool]]:
    """(dy, dx, near) of every pixel pair the colour prior compares: right, down and both
    diagonals at each distance; ``near`` for the ``dilations`` (the only ones that pay for
    splitting a colour)."""
    return [
        (dy, dx, d in dilations)
        for d in (*dilations, *far)
        for dy, dx in ((0, d), (d, 0), (d, d), (d, -d))
    ]


AFFINITY_OFFSETS = affinity_offsets((1, 2, 4), (8, 16, 32))  # color_affinity's defaults


class _PairColourPrior(torch.autograd.Function):
    """The pair terms of :func:`color_affinity` with a hand-written backward.

    Autograd's backward of each shifted slice allocates a zero-filled gradient of the whole
    (B, G, H, W) map and adds it in, 48 times a step: about a third of the prior's cost on a
    CPU. This backward adds every slice's gradient into one buffer instead, in the order the
    plain graph's engine sums them (last slice first), with the same elementwise formulas, so
    losses and gradients are bit-identical to it (tests/unit/test_losses.py checks).
    """

    @staticmethod
    def forward(ctx, probs, colors, valid, offsets, same_below, apart_above):
        pairs: list[tuple] = []
        loss, counts = _pair_terms(probs, colors, valid, offsets, same_below, apart_above, pairs)
        ctx.pairs, ctx.counts = pairs, counts
        ctx.save_for_backward(probs)
        return loss

    @staticmethod
    def backward(ctx, grad):
        (probs,) = ctx.saved_tensors
        eps = PAIR_EPS
        g_same, g_apart = -(grad / ctx.counts[0]), -(grad / ctx.counts[1])
        out = torch.zeros_like(probs)
        for a, c, raw, share, rest, same, apart in reversed(ctx.pairs):
            g = (g_same.expand_as(same) * same) / share - (g_apart.expand_as(apart) * apart) / rest
            g = torch.where((raw >= eps) & (raw <= 1.0 - eps), g, torch.zeros_like(g))
            g = g.unsqueeze(1)
            out[c] += g * probs[a]
            out[a] += g * probs[c]
        ctx.pairs = None
        return out, None, None, None, None, None


def _pair_slices(hw: Sequence[int], dy: int, dx: int) -> tuple[tuple, tuple]:
    """Index tuples (all of dims 0-1, then H, W) of the two views of a (B, C, H, W) map whose
    pixels at equal indices lie (dy, dx) apart (right, down or diagonal)."""
    h, w = hw
    left, right = max(0, -dx), max(0, dx)  # columns the shift drops on each side
    keep = slice(None)
    return (
        (keep, keep, slice(0, h - dy), slice(left, w - right)),
        (keep, keep, slice(dy, h), slice(right, w - left)),
    )


PAIR_EPS = 1e-4  # shares are clamped to [eps, 1 - eps] before their logs


def _pair_terms(
    probs: torch.Tensor,
    colors: torch.Tensor,
    valid: torch.Tensor,
    offsets: Sequence[tuple[int, int, bool]],
    same_below: float,
    apart_above: float,
    keep: list | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The colour prior's pair terms and their (clamped) pair counts; with ``keep``, each
    offset's slices and intermediate maps are appended to it for the hand-written backward."""
    same_sum = apart_sum = probs.new_zeros(())
    same_n = apart_n = probs.new_zeros(())
    for dy, dx, near in offsets:
        a, c = _pair_slices(probs.shape[-2:], dy, dx)
        raw = (probs[a] * probs[c]).sum(dim=1)
        share = raw.clamp(PAIR_EPS, 1.0 - PAIR_EPS)  # (B, h, w)
        # squared distances against squared thresholds: the same pairs as the L2 norm, at a
        # fraction of its cost on NCHW-contiguous input (torch's CPU norm over the channel dim
        # of such a strided slice can be most of a training step)
        dist2 = (colors[a] - colors[c]).square().sum(dim=1)
        both = valid[a[:1] + a[2:]] * valid[c[:1] + c[2:]]
        same = (dist2 < same_below**2).float() * both * float(near)
        apart = (dist2 > apart_above**2).float() * both
        rest = 1.0 - share
        same_sum = same_sum - (share.log() * same).sum()
        apart_sum = apart_sum - (rest.log() * apart).sum()
        same_n, apart_n = same_n + same.sum(), apart_n + apart.sum()
        if keep is not None:
            keep.append((a, c, raw, share, rest, same, apart))
    counts = same_n.clamp_min(1.0), apart_n.clamp_min(1.0)
    return same_sum / counts[0] + apart_sum / counts[1], counts


def pair_terms_by_autograd(
    probs: torch.Tensor,
    colors: torch.Tensor,
    valid: torch.Tensor,
    offsets: Sequence[tuple[int, int, bool]],
    same_below: float,
    apart_above: float,
) -> torch.Tensor:
    """The same pair terms with every gradient left to autograd: what ``_PairColourPrior``'s
    backward must match bit for bit, and is timed against (bench/affinity.py)."""
    return _pair_terms(probs, colors, valid, offsets, same_below, apart_above)[0]


def target_center(embeddings, normalize: bool = True, chunk: int = 4096) -> torch.Tensor:
    """(D,): the mean teacher embedding over every image and view, for ``distill_loss``'s
    ``target_center``. ``embeddings`` (N, V, D) or (N, D), a tensor or array of any float dtype
    (e.g. the cache's fp16); rows are L2-normalised first when ``normalize`` (as
    ``distill_loss`` normalises its targets). Summed in chunks of ``chunk`` images."""
    total, count = None, 0
    for i in range(0, len(embeddings), chunk):
        e = torch.as_tensor(embeddings[i : i + chunk]).float()
        e = e.reshape(-1, e.shape[-1])
        if normalize:
            e = F.normalize(e, dim=-1)
        total = e.sum(0) if total is None else total + e.sum(0)
        count += e.shape[0]
    if total is None:
        raise ValueError("no embeddings to average")
    return total / count


def distill_loss(
    out: Mapping[str, torch.Tensor],
    views: torch.Tensor,
    weights: Mapping[str, float] | None = None,
    normalize_targets: bool = True,
    normalize_student: bool = False,
    dim_reduction: str = "mean",
    dense_levels: Sequence[int] = (4,),
    dense_mode: str = "mean",
    levels: Sequence[int] = DEFAULT_LEVELS,
    target_center: torch.Tensor | None = None,
    multiscale_views: str = "all",
    images: torch.Tensor | None = None,
    affinity_stride: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the ZeroSeg terms for one batch.

    ``out`` is the student's forward dict (``z``, ``segments``, ``recon_loss``; the dense terms
    also read ``patch_groups``, ``patch_index``, ``grid_hw`` and ``patch_embeds``); ``views``
    (B, V, D) are the teacher embeddings (any float dtype, e.g. fp16 from the cache), laid out
    by ``levels``. Missing weight keys take :data:`DEFAULT_WEIGHTS` (the paper's three terms 1,
    the dense terms 0). ``dense_levels`` / ``dense_mode`` pick the dense targets (see
    :func:`dense_assignment`). ``target_center`` (D,), e.g. the dataset-mean teacher embedding,
    switches the dense terms to a cosine distance between *centred* vectors: the centre is
    subtracted from the cell targets and from the student's segments / patch embeddings, so the
    loss is driven by how a cell differs from the typical cell (which object it holds) rather
    than by the component all cells share. The paper's terms are unaffected.
    ``multiscale_views="global"`` distils z to the whole-image view v1 only (the paper's
    ablation base) instead of every view. ``images`` (B, 3, H, W) in [0, 1] are needed by the
    ``affinity`` term only, ``affinity_stride`` its pixel grid (:func:`color_affinity`). Returns
    ``(total, terms)``: the unweighted terms (detached) for logging, ``multiscale``,
    ``matching``, ``recon`` always, ``dense`` / ``patch`` / ``affinity`` when weighted.
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
    if multiscale_views not in MULTISCALE_VIEWS:
        raise ValueError(f"multiscale_views must be one of {MULTISCALE_VIEWS}")
    z_targets = targets if multiscale_views == "all" else targets[:, :1]
    terms = {
        "multiscale": multiscale_l1(z, z_targets, dim_reduction),
        # a {1}-only grid has no local views to match
        "matching": segment_matching(segments, targets[:, 1:], dim_reduction)
        if targets.shape[1] > 1
        else z.new_zeros(()),
        "recon": out["recon_loss"],
    }
    if w["dense"] or w["patch"]:
        cells = patch_cell_targets(
            targets, out["patch_index"], out["grid_hw"], dense_levels, levels
        )
        distance, center = "l1", None
        if target_center is not None:
            distance, center = "cosine", target_center.to(cells.dtype)
            cells = cells - center
        if w["dense"]:
            segs = segments if center is None else segments - center
            terms["dense"] = dense_assignment(
                out["patch_groups"], segs, cells, dense_mode, dim_reduction, distance
            )
        if w["patch"]:
            if "patch_embeds" not in out:
                raise KeyError("the patch loss needs a student built with patch_proj=True")
            pe = (
                F.normalize(out["patch_embeds"], dim=-1)
                if normalize_student
                else out["patch_embeds"]
            )
            if center is not None:
                pe = pe - center
            terms["patch"] = patch_regression(pe, cells, dim_reduction, distance)
    if w["region"]:
        if "patch_embeds" not in out:
            raise KeyError("the region loss needs a student built with patch_proj=True")
        center = None if target_center is None else target_center.to(targets.dtype)
        terms["region"] = region_pooling(
            out["patch_embeds"],
            targets,
            region_membership(out["patch_index"], out["grid_hw"], levels),
            center,
        )
    if w["affinity"]:
        if images is None:
            raise ValueError("the affinity term needs the batch's images")
        terms["affinity"] = color_affinity(
            out["patch_groups"], out["patch_index"], out["grid_hw"], images, stride=affinity_stride
        )
    total = sum(w[k] * v for k, v in terms.items() if w[k] != 0)
    if not torch.is_tensor(total):  # every weight zero
        total = z.sum() * 0.0
    return total, {k: v.detach() for k, v in terms.items()}


def view_indices(levels: Sequence[int], subset: Sequence[int]) -> list[int]:
    """Positions of the views of grid levels ``subset`` in a view stack laid out by ``levels``
    (level by level, row-major), e.g. to train on grids {1, 3} of a {1, 2, 3, 4} cache."""
    missing = sorted(set(subset) - set(levels))
    if missing:
        raise ValueError(f"grid levels {missing} are not in the cache (it has {list(levels)})")
    out, start = [], 0
    for n in levels:
        if n in subset:
            out.extend(range(start, start + n * n))
        start += n * n
    return out
