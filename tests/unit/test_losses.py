import pytest
import torch
import torch.nn.functional as F

from zeroseg.losses import color_affinity, distill_loss, multiscale_l1, segment_matching


def test_multiscale_l1_hand_computed():
    z = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    views = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # distances (mean over dims): 0, 1
            [[2.0, 0.0], [0.0, -4.0]],  # 1, 2
        ]
    )
    # per sample sum over views: 1 and 3 -> batch mean 2
    assert multiscale_l1(z, views).item() == pytest.approx(2.0)
    assert multiscale_l1(z, views, dim_reduction="sum").item() == pytest.approx(4.0)


def _matching_reference(segments, local_views):
    total = 0.0
    for b in range(segments.shape[0]):
        for i in range(segments.shape[1]):
            best = min(
                (segments[b, i] - local_views[b, j]).abs().mean().item()
                for j in range(local_views.shape[1])
            )
            total += best
    return total / segments.shape[0]


def test_segment_matching_matches_brute_force():
    torch.manual_seed(0)
    segs, views = torch.randn(3, 8, 16), torch.randn(3, 29, 16)
    assert segment_matching(segs, views).item() == pytest.approx(
        _matching_reference(segs, views), rel=1e-5
    )


def test_segment_matching_gradient_only_through_chosen_distance():
    torch.manual_seed(1)
    segs = torch.randn(2, 4, 8, requires_grad=True)
    views = torch.randn(2, 5, 8, requires_grad=True)
    segment_matching(segs, views).backward()
    with torch.no_grad():
        best = (segs[:, :, None] - views[:, None]).abs().mean(-1).argmin(-1)
    # segment gradient is sign(g - v_j*) / D per element
    expected = torch.stack(
        [
            torch.stack([torch.sign(segs[b, i] - views[b, best[b, i]]) for i in range(4)])
            for b in range(2)
        ]
    ) / (8 * 2)
    assert torch.allclose(segs.grad, expected.detach())
    # views never chosen get no gradient: the argmin itself is not differentiated
    for b in range(2):
        for j in range(5):
            if j not in best[b].tolist():
                assert views.grad[b, j].abs().sum() == 0


def test_distill_loss_terms_weights_and_normalization():
    torch.manual_seed(2)
    out = {
        "z": torch.randn(2, 16, requires_grad=True),
        "segments": torch.randn(2, 8, 16, requires_grad=True),
        "recon_loss": torch.tensor(0.5, requires_grad=True),
    }
    views = torch.randn(2, 30, 16).half()
    total, terms = distill_loss(out, views)
    target = torch.nn.functional.normalize(views.float(), dim=-1)
    assert terms["multiscale"].item() == pytest.approx(multiscale_l1(out["z"], target).item())
    assert terms["matching"].item() == pytest.approx(
        segment_matching(out["segments"], target[:, 1:]).item()
    )
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    total.backward()
    assert out["recon_loss"].grad.item() == 1.0
    only, _ = distill_loss(out, views, weights={"multiscale": 0, "recon": 0, "matching": 2.0})
    assert only.item() == pytest.approx(2 * terms["matching"].item(), rel=1e-6)
    raw, raw_terms = distill_loss(out, views, normalize_targets=False, normalize_student=True)
    assert raw_terms["multiscale"].item() == pytest.approx(
        multiscale_l1(torch.nn.functional.normalize(out["z"], dim=-1), views.float()).item()
    )
    with pytest.raises(KeyError):
        distill_loss(out, views, weights={"match": 1.0})


def test_patch_cell_targets_pick_the_cell_containing_each_patch():
    from zeroseg.losses import patch_cell_targets

    views = torch.arange(30.0).view(1, 30, 1).expand(2, 30, 3)  # view id in every dim
    idx = torch.tensor([[0, 1, 8, 9, 7, 63, 2, 27]] * 2)  # raster positions on an 8x8 grid
    t = patch_cell_targets(views, idx, (8, 8), target_levels=(4, 3, 1))
    assert t.shape == (2, 8, 3, 3)
    # 4x4 views start at 14: patches (0,0),(0,1),(1,0),(1,1) share cell 0; (0,7) -> cell 3
    assert t[0, :, 0, 0].tolist() == [14, 14, 14, 14, 17, 29, 15, 19]
    # 3x3 views start at 5; patch (0,2) has centre 2.5/8 -> column 0; (3,3) -> (1,1)
    assert t[0, :, 1, 0].tolist() == [5, 5, 5, 5, 7, 13, 5, 9]
    assert t[0, :, 2, 0].tolist() == [0] * 8
    with pytest.raises(ValueError):
        patch_cell_targets(views, idx, (8, 8), target_levels=(5,))


def test_dense_assignment_hand_computed_and_modes():
    from zeroseg.losses import dense_assignment

    segs = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]], requires_grad=True)  # (1, G=2, 2)
    cells = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # (1, 2, L=2, 2)
    onehot = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # both patches in group 0
    # patch 0: group 0 vs levels: 0 and 1 -> mean 0.5, min 0; patch 1: 1 and 1
    assert dense_assignment(onehot, segs, cells, "mean").item() == pytest.approx(0.75)
    assert dense_assignment(onehot, segs, cells, "min").item() == pytest.approx(0.5)
    soft = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]], requires_grad=True)
    loss = dense_assignment(soft, segs, cells, "mean")
    loss.backward()
    # the assignment is pushed toward the nearer segment: patch 1 already sits on group 1
    assert soft.grad[0, 1, 0] > soft.grad[0, 1, 1]
    with pytest.raises(ValueError):
        dense_assignment(onehot, segs, cells, "max")


def test_distill_loss_dense_terms_opt_in():
    torch.manual_seed(3)
    b, n, g, d = 2, 5, 4, 16
    out = {
        "z": torch.randn(b, d),
        "segments": torch.randn(b, g, d, requires_grad=True),
        "recon_loss": torch.tensor(0.0),
        "patch_groups": torch.softmax(torch.randn(b, n, g), -1).requires_grad_(),
        "patch_index": torch.stack([torch.randperm(64)[:n].sort().values for _ in range(b)]),
        "grid_hw": torch.tensor([8, 8]),
    }
    views = torch.randn(b, 30, d)
    base, terms = distill_loss(out, views)
    assert set(terms) == {"multiscale", "matching", "recon"}  # paper terms only by default
    total, terms = distill_loss(out, views, weights={"dense": 2.0}, dense_levels=(4, 3))
    assert set(terms) == {"multiscale", "matching", "recon", "dense"}
    assert total.item() == pytest.approx(base.item() + 2 * terms["dense"].item(), rel=1e-5)
    total.backward()
    assert out["patch_groups"].grad.abs().sum() > 0
    with pytest.raises(KeyError):
        distill_loss(out, views, weights={"patch": 1.0})  # needs patch_embeds
    out["patch_embeds"] = torch.randn(b, n, d)
    _, terms = distill_loss(out, views, weights={"patch": 1.0})
    assert terms["patch"].item() > 0


def test_distill_loss_target_center_uses_cosine_on_centred_vectors():
    from zeroseg.losses import patch_cell_targets, target_center

    torch.manual_seed(4)
    b, n, g, d = 2, 6, 3, 8
    views = F.normalize(torch.randn(b, 30, d), dim=-1)
    out = {
        "z": torch.randn(b, d),
        "segments": torch.randn(b, g, d, requires_grad=True),
        "recon_loss": torch.tensor(0.0),
        "patch_groups": torch.softmax(torch.randn(b, n, g), -1),
        "patch_index": torch.stack([torch.randperm(64)[:n].sort().values for _ in range(b)]),
        "grid_hw": torch.tensor([8, 8]),
        "patch_embeds": torch.randn(b, n, d),
    }
    weights = {"dense": 1.0, "patch": 1.0}
    _, plain = distill_loss(out, views, weights)
    center = target_center(views.half().numpy(), chunk=1)
    assert torch.allclose(center, views.reshape(-1, d).mean(0), atol=2e-3)
    center = views.reshape(-1, d).mean(0)
    _, cen = distill_loss(out, views, weights, target_center=center)
    # the paper's terms do not change; the dense ones become 1 - cos(x - c, t - c)
    for k in ("multiscale", "matching", "recon"):
        assert cen[k].item() == pytest.approx(plain[k].item())
    cells = patch_cell_targets(views, out["patch_index"], (8, 8))[:, :, 0] - center
    cos = F.cosine_similarity(out["patch_embeds"] - center, cells, dim=-1)
    assert cen["patch"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    seg_cos = F.cosine_similarity(
        (out["segments"] - center)[:, None], cells[:, :, None], dim=-1
    )  # (B, N, G)
    want = (out["patch_groups"] * (1 - seg_cos)).sum(-1).mean()
    assert cen["dense"].item() == pytest.approx(want.item(), rel=1e-5)
    # a segment equal to its cells' target up to the shared centre has zero dense loss
    one = {**out, "patch_groups": torch.zeros(b, n, g)}
    one["patch_groups"][..., 0] = 1.0
    one["patch_index"] = torch.zeros(b, n, dtype=torch.long)  # all patches in cell (0, 0)
    target = views[:, 14]  # level-4 cell (0, 0)
    one["segments"] = torch.stack([target, target * 0, target * 0], dim=1) + 0.0
    one["segments"] = center + 2.0 * (one["segments"] - center)  # same direction from c
    _, t = distill_loss(one, views, {"dense": 1.0}, target_center=center)
    assert t["dense"].item() == pytest.approx(0.0, abs=1e-5)


def test_view_indices_select_grid_levels_of_the_cache():
    from zeroseg.losses import view_indices

    assert view_indices([1, 2, 3, 4], [1, 2, 3, 4]) == list(range(30))
    assert view_indices([1, 2, 3, 4], [1]) == [0]
    assert view_indices([1, 2, 3, 4], [1, 3]) == [0, *range(5, 14)]
    with pytest.raises(ValueError, match="not in the cache"):
        view_indices([1, 2, 3, 4], [1, 5])


def test_multiscale_global_only_and_grid_one_has_no_matching():
    torch.manual_seed(0)
    out = {
        "z": torch.randn(2, 8),
        "segments": torch.randn(2, 4, 8),
        "recon_loss": torch.tensor(0.0),
    }
    views = F.normalize(torch.randn(2, 30, 8), dim=-1)
    _, glob = distill_loss(out, views, multiscale_views="global")
    assert glob["multiscale"].item() == pytest.approx(multiscale_l1(out["z"], views[:, :1]).item())
    _, both = distill_loss(out, views)
    assert both["multiscale"].item() == pytest.approx(multiscale_l1(out["z"], views).item())
    _, one = distill_loss(out, views[:, :1], levels=(1,))
    assert one["matching"].item() == 0.0
    with pytest.raises(ValueError, match="multiscale_views"):
        distill_loss(out, views, multiscale_views="local")


def _square_scene() -> torch.Tensor:
    """Two noisy grey 64-px images with a red square on patches 2-4 of an 8x8 patch grid."""
    torch.manual_seed(0)
    img = torch.rand(2, 3, 64, 64) * 0.02 + 0.5
    img[:, :, 16:40, 16:40] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return img


ALL = torch.arange(64).expand(2, -1)  # every patch of an 8x8 grid, raster order


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_color_affinity_prefers_the_grouping_that_follows_colours(stride):
    img = _square_scene()
    follows = torch.zeros(2, 8, 8, 2)
    follows[..., 0] = 1
    follows[:, 2:5, 2:5] = torch.tensor([0.0, 1.0])
    merged = torch.zeros(2, 64, 2)
    merged[..., 0] = 1  # one group for square and background
    undecided = torch.full((2, 64, 2), 0.5)

    def prior(groups, image):
        return color_affinity(groups, ALL, (8, 8), image, stride=stride)

    good = prior(follows.reshape(2, 64, 2), img)
    assert good < prior(undecided, img) < prior(merged, img)
    # uniform colours everywhere: only "same" pairs, and one group is the best answer
    flat = torch.full_like(img, 0.5)
    assert prior(merged, flat) < 1e-3
    assert prior(undecided, flat) > 0.5


def test_strided_colour_prior_keeps_the_distances_in_image_pixels():
    from zeroseg.losses import strided_distances

    assert strided_distances((1, 2, 4), 1) == (1, 2, 4)
    assert strided_distances((1, 2, 4), 2) == (1, 2)  # 2 and 4 px: one and two steps
    assert strided_distances((8, 16, 32), 4) == (2, 4, 8)
    assert strided_distances((1, 3), 2) == ()
    with pytest.raises(ValueError, match="stride"):
        strided_distances((1,), 0)


def test_strided_colour_prior_reads_a_coarser_grid():
    """Stride 2 is the prior on a 32-px grid: the blurred colours averaged over 2x2 blocks,
    the assignment upsampled to 32 px, and the 2-32 px distances as 1-16 steps (no 1-px pairs)."""
    g = torch.Generator().manual_seed(3)
    small = torch.rand(2, 3, 32, 32, generator=g).round()  # hard colours on a 32-px grid
    big = small.repeat_interleave(2, -2).repeat_interleave(2, -1)  # the same drawn at 64 px
    groups = torch.rand(2, 64, 4, generator=g).softmax(-1)
    coarse = color_affinity(groups, ALL, (8, 8), big, stride=2)
    assert coarse != color_affinity(groups, ALL, (8, 8), big)  # another set of pairs
    colors = F.avg_pool2d(F.avg_pool2d(big, 3, stride=1, padding=1, count_include_pad=False), 2)
    maps = groups.transpose(1, 2).reshape(2, 4, 8, 8)
    probs = F.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)
    from zeroseg.losses import _PairColourPrior, affinity_offsets

    offsets = affinity_offsets((1, 2), (4, 8, 16))
    valid = torch.ones(2, 32, 32)
    expected = _PairColourPrior.apply(probs, colors, valid, offsets, 0.05, 0.2)
    assert coarse == pytest.approx(float(expected), rel=1e-5)


def test_color_affinity_far_pairs_split_separate_objects():
    img = _square_scene()
    img[:, :, 48:60, 48:60] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]  # a blue square
    two = torch.zeros(2, 8, 8, 3)
    two[..., 0] = 1
    two[:, 2:5, 2:5] = torch.tensor([0.0, 1.0, 0.0])
    three = two.clone()
    two[:, 6:8, 6:8] = torch.tensor([0.0, 1.0, 0.0])  # both squares in one group
    three[:, 6:8, 6:8] = torch.tensor([0.0, 0.0, 1.0])
    assert color_affinity(three.reshape(2, 64, 3), ALL, (8, 8), img) < color_affinity(
        two.reshape(2, 64, 3), ALL, (8, 8), img
    )
    # without far pairs the two squares never meet, and both groupings cost the same
    near = {"far": ()}
    a = color_affinity(three.reshape(2, 64, 3), ALL, (8, 8), img, **near)
    assert a == pytest.approx(color_affinity(two.reshape(2, 64, 3), ALL, (8, 8), img, **near))


def test_color_affinity_backward_is_bit_identical_to_autograds():
    from zeroseg.losses import AFFINITY_OFFSETS, _PairColourPrior, pair_terms_by_autograd

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 5, 32, 40, generator=g).softmax(1)
    probs[0] = 0.0  # one group everywhere: every share is clamped, so no gradient there
    probs[0, 0] = 1.0
    colors = F.interpolate(torch.rand(3, 3, 4, 5, generator=g), size=(32, 40), mode="nearest")
    colors = colors + 0.01 * torch.rand(3, 3, 32, 40, generator=g)
    valid = (torch.rand(3, 32, 40, generator=g) > 0.1).float()
    offsets = AFFINITY_OFFSETS
    a = probs.clone().requires_grad_(True)
    b = probs.clone().requires_grad_(True)
    ours = _PairColourPrior.apply(a, colors, valid, offsets, 0.05, 0.2)
    plain = pair_terms_by_autograd(b, colors, valid, offsets, 0.05, 0.2)
    assert torch.equal(ours, plain)
    (ours * 1.7).backward()
    (plain * 1.7).backward()
    assert torch.equal(a.grad, b.grad)
    assert not a.grad[0].any() and a.grad[1:].abs().sum() > 0  # clamped pairs pass none


def test_color_affinity_gradient_and_masked_patches():
    img = _square_scene()
    logits = torch.randn(2, 64, 4, requires_grad=True)
    color_affinity(logits.softmax(-1), ALL, (8, 8), img).backward()
    assert logits.grad.abs().sum() > 0
    # with masking only the visible patches count: the loss of a grouping that follows the
    # colours stays low when a third of the patches are hidden
    follows = torch.zeros(2, 8, 8, 2)
    follows[..., 0] = 1
    follows[:, 2:5, 2:5] = torch.tensor([0.0, 1.0])
    follows = follows.reshape(2, 64, 2)
    keep = torch.stack(
        [
            torch.randperm(64, generator=torch.Generator().manual_seed(i))[:40].sort().values
            for i in range(2)
        ]
    )
    visible = follows.gather(1, keep[..., None].expand(-1, -1, 2))
    merged = torch.zeros(2, 40, 2)
    merged[..., 0] = 1
    low = color_affinity(visible, keep, (8, 8), img)
    assert torch.isfinite(low) and low < color_affinity(merged, keep, (8, 8), img)


def test_distill_loss_affinity_term_needs_images():
    img = _square_scene()
    out = {
        "z": torch.randn(2, 16),
        "segments": torch.randn(2, 4, 16),
        "recon_loss": torch.tensor(0.0),
        "patch_groups": torch.softmax(torch.randn(2, 64, 4), -1),
        "patch_index": torch.arange(64).expand(2, -1),
        "grid_hw": torch.tensor([8, 8]),
    }
    views = torch.randn(2, 30, 16)
    base, _ = distill_loss(out, views)
    total, terms = distill_loss(out, views, weights={"affinity": 2.0}, images=img)
    assert total.item() == pytest.approx(base.item() + 2 * terms["affinity"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="images"):
        distill_loss(out, views, weights={"affinity": 1.0})


def test_region_membership_puts_each_patch_in_one_view_per_level():
    from zeroseg.losses import patch_cell_targets, region_membership

    idx = torch.tensor([[0, 1, 8, 9, 7, 63, 2, 27]])
    m = region_membership(idx, (8, 8), (1, 2, 3, 4))
    assert m.shape == (1, 8, 30)
    assert m.sum(dim=-1).tolist() == [[4] * 8]  # one cell of each of the four levels
    # the same cells the per-patch targets pick
    views = torch.arange(30.0).view(1, 30, 1)
    cells = patch_cell_targets(views, idx, (8, 8), target_levels=(1, 2, 3, 4))[0, :, :, 0]
    assert (m[0].nonzero()[:, 1].view(8, 4) == cells.long()).all()


def test_region_pooling_scores_the_mean_of_each_views_patches():
    from zeroseg.losses import region_membership, region_pooling

    # a 2x2 patch grid, one level of 2x2 cells plus the whole image: patch i is view 1 + i
    idx = torch.arange(4).view(1, 4)
    m = region_membership(idx, (2, 2), (1, 2))
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    # the whole-image view is the mean (1, 1) direction; each cell is its own patch
    views = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    assert region_pooling(e, F.normalize(views, dim=-1), m).item() == pytest.approx(0.0, abs=1e-6)
    # patches inside a box may differ: only their mean is scored
    coarse = region_membership(idx, (2, 2), (1,))
    assert region_pooling(e, views[:, :1], coarse).item() == pytest.approx(0.0, abs=1e-6)
    # a wrong patch costs exactly its own view (1 - cos 90 deg) and tilts the global mean
    bad = e.clone()
    bad[0, 0] = torch.tensor([0.0, 1.0])
    cos_global = F.cosine_similarity(bad.mean(1), views[:, 0], dim=-1).item()
    expected = (1 + (1 - cos_global)) / 5
    assert region_pooling(bad, views, m).item() == pytest.approx(expected, rel=1e-5)
    # views without a visible patch are left out of the mean
    visible = torch.tensor([[0, 3]])
    part = region_pooling(e[:, [0, 3]], views, region_membership(visible, (2, 2), (1, 2)))
    assert part.item() == pytest.approx(0.0, abs=1e-6)


def test_distill_loss_region_term_opt_in_and_centred():
    torch.manual_seed(5)
    b, n, d = 2, 64, 8
    out = {
        "z": torch.randn(b, d),
        "segments": torch.randn(b, 4, d),
        "recon_loss": torch.tensor(0.0),
        "patch_index": torch.arange(n).expand(b, n),
        "grid_hw": torch.tensor([8, 8]),
    }
    views = torch.randn(b, 30, d)
    with pytest.raises(KeyError):
        distill_loss(out, views, weights={"region": 1.0})  # needs patch_embeds
    out["patch_embeds"] = torch.randn(b, n, d, requires_grad=True)
    base, _ = distill_loss(out, views)
    total, terms = distill_loss(out, views, weights={"region": 3.0})
    assert total.item() == pytest.approx(base.item() + 3 * terms["region"].item(), rel=1e-5)
    total.backward()
    assert out["patch_embeds"].grad.abs().sum() > 0
    center = torch.randn(d)
    _, centred = distill_loss(out, views, weights={"region": 1.0}, target_center=center)
    assert centred["region"].item() != pytest.approx(terms["region"].item())
