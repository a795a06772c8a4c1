"""PAMR must move a blurred class boundary onto the image's colour edge, and only smooth
where the image is flat."""

import numpy as np
import pytest
import torch

from zeroseg.pamr import pamr

H, W, EDGE = 48, 64, 32


def _two_colour_image(seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: red left of column EDGE, blue from it on, with slight noise."""
    img = np.zeros((H, W, 3), np.int64)
    img[:, :EDGE] = (200, 40, 40)
    img[:, EDGE:] = (30, 60, 220)
    noise = np.random.default_rng(seed).integers(-6, 7, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _blurred_scores(centre: float) -> torch.Tensor:
    """Two classes whose boundary is a smooth ramp around ``centre`` (not at the edge)."""
    p = torch.sigmoid((torch.arange(W).float() - centre) / 3.0)
    return torch.stack([1 - p, p])[:, None, :].expand(2, H, W).clone()


def _boundary(scores: torch.Tensor) -> torch.Tensor:
    """Per row, the first column labelled class 1."""
    return (scores.argmax(0) == 1).float().argmax(1)


@pytest.mark.parametrize("centre", [EDGE - 5, EDGE + 4])
def test_refinement_snaps_a_blurred_boundary_to_the_colour_edge(centre):
    scores = _blurred_scores(centre)
    before = _boundary(scores)
    assert (before - EDGE).abs().min() >= 3  # the unrefined boundary is off the edge, every row
    after = _boundary(pamr(scores, _two_colour_image()))
    assert (after - EDGE).abs().max() <= 1, after.tolist()


def test_without_colour_edge_the_boundary_stays_blurred():
    """The snap comes from the image: a flat image gives no edge to settle on."""
    scores = _blurred_scores(EDGE - 5)
    after = _boundary(pamr(scores, np.full((H, W, 3), 120, np.uint8)))
    assert (after - EDGE).abs().min() >= 3


def test_on_a_flat_image_refinement_only_smooths():
    flat = np.full((H, W, 3), 120, np.uint8)
    scores = torch.randn(3, H, W, generator=torch.Generator().manual_seed(0))
    out = pamr(scores, flat)
    assert out.shape == scores.shape
    assert out.var() < 0.2 * scores.var()
    torch.testing.assert_close(out.mean((1, 2)), scores.mean((1, 2)), atol=0.1, rtol=0)


@pytest.mark.parametrize("image", [np.zeros((H, W, 3), np.uint8), _two_colour_image()])
def test_a_constant_score_map_is_unchanged_up_to_the_borders(image):
    """Borders replicate the image and the scores, so nothing leaks in from outside."""
    scores = torch.tensor([0.3, 0.7])[:, None, None].expand(2, H, W).clone()
    torch.testing.assert_close(pamr(scores, image), scores, atol=1e-5, rtol=0)


def test_input_forms_dtypes_and_zero_iterations():
    img = _two_colour_image()
    scores = _blurred_scores(EDGE - 5)
    assert pamr(scores, img, iterations=0) is scores
    chw = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    refined = pamr(scores, img)
    torch.testing.assert_close(refined, pamr(scores, chw))
    torch.testing.assert_close(refined, pamr(scores, torch.from_numpy(img)))
    assert pamr(scores.double(), img).dtype == torch.float64
    half = pamr(scores.half(), img)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), refined, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, i: pamr(s, i[:, :40]), "does not match"),
        (lambda s, i: pamr(s[0], i), r"\(K, H, W\)"),
        (lambda s, i: pamr(s.long(), i), "float"),
        (lambda s, i: pamr(s, i[..., :2]), r"\(H, W, 3\)"),
        (lambda s, i: pamr(s, i.astype(np.float32) / 255), r"\(3, H, W\)"),
        (lambda s, i: pamr(s, i.astype(np.int32)), "uint8"),
        (lambda s, i: pamr(s, i, dilations=(1, 0)), "dilations"),
        (lambda s, i: pamr(s, i, dilations=()), "dilations"),
        (lambda s, i: pamr(s, i, iterations=-1), "iterations"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(_blurred_scores(EDGE - 5), _two_colour_image())
