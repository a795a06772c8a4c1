import pytest
import torch

from zeroseg.losses import distill_loss, multiscale_l1, segment_matching


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
