import numpy as np
import pytest
import torch

from zeroseg.config import ConfigError, load_config
from zeroseg.inference import short_side_size, sliding_window_scores, window_starts
from zeroseg.models import build_student
from zeroseg.predict import student_cosines
from zeroseg.protocols import list_protocols, load_protocol


def test_pinned_paper_thresholds_and_windows():
    assert {"voc", "context", "coco_object", "shapes"} <= set(list_protocols())
    expected = {
        "voc": "threshold:0.95",
        "context": "threshold:0.05",
        "coco_object": "threshold:0.35",
    }
    for name, rule in expected.items():
        p = load_protocol(name)
        assert p.background == rule and not p.tuned_on_val
        assert (p.short_side, p.window, p.stride, p.prob_scale) == (448, 448, 224, 100.0)
    shapes = load_protocol("shapes")
    assert shapes.tuned_on_val
    assert shapes.resolved(64).to_dict()["short_side"] == 64
    assert (shapes.resolved(64).window, shapes.resolved(64).stride) == (64, 64)


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(KeyError, match="known"):
        load_protocol("imagenet")
    with pytest.raises(ConfigError, match="eval.protocol"):
        load_config(None, ["eval.protocol=nope"])
    with pytest.raises(ConfigError, match="eval.benchmark"):
        load_config(None, ["eval.benchmark=nope"])


def test_window_starts_cover_and_end_flush():
    assert window_starts(448, 448, 224) == [0]
    assert window_starts(600, 448, 224) == [0, 152]
    assert window_starts(900, 448, 224) == [0, 224, 448, 452]
    assert window_starts(100, 448, 224) == [0]
    assert short_side_size((375, 500), 448, 16) == (448, 592)
    assert short_side_size((64, 64), 64, 8) == (64, 64)


def test_sliding_window_averages_overlaps_and_crops_padding():
    # Each window scores every pixel with its own left offset: overlaps must average them.
    img = torch.zeros(3, 4, 10)
    seen = []

    def score(crop):
        seen.append(tuple(crop.shape))
        return torch.full((1, 4, 4), float(len(seen)))

    out = sliding_window_scores(score, img, window=4, stride=3)
    assert out.shape == (1, 4, 10)
    # windows at x = 0, 3, 6 -> values 1, 2, 3; columns 3 and 6 are shared.
    assert out[0, 0].tolist() == [1, 1, 1, 1.5, 2, 2, 2.5, 3, 3, 3]
    assert all(s == (1, 3, 4, 4) for s in seen)
    # a side shorter than the window is padded, and the padding cropped away
    small = sliding_window_scores(lambda c: c[0, :1] + 1, torch.zeros(3, 2, 5), 4, 4)
    assert small.shape == (1, 2, 5) and torch.all(small == 1)


def test_student_cosines_on_non_square_images_keep_the_image_size():
    torch.manual_seed(0)
    student = build_student("student-tiny", 16).eval()
    text = torch.randn(4, 16)
    rng = np.random.default_rng(0)
    square = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    wide = rng.integers(0, 255, (48, 100, 3), dtype=np.uint8)
    one = student_cosines(student, square, text, 64)
    assert one.shape == (4, 64, 64)
    # one window, no resize: identical to classifying the student's own segmentation
    segs, groups = student.segment(torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255)
    norm = torch.nn.functional.normalize
    ref = (norm(segs[0], dim=-1) @ norm(text, dim=-1).T)[groups[0].argmax(0)].permute(2, 0, 1)
    assert torch.allclose(one, ref, atol=1e-5)
    out = student_cosines(student, wide, text, 64, window=64, stride=32)
    assert out.shape == (4, 48, 100)


def test_segments_plus_patches_readout_averages_group_and_patch_cosines():
    torch.manual_seed(0)
    student = build_student("student-tiny-dense", 16).eval()
    text = torch.randn(4, 16)
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    segs, groups, patches = student.segment_with_patches(x)
    same_segs, same_groups = student.segment(x)
    assert torch.equal(segs, same_segs) and torch.equal(groups, same_groups)
    assert patches.shape == (1, 8, 8, 16)
    norm = torch.nn.functional.normalize
    by_group = (norm(segs[0], dim=-1) @ norm(text, dim=-1).T)[groups[0].argmax(0)]
    by_patch = norm(patches[0], dim=-1) @ norm(text, dim=-1).T  # (8, 8, C) on the patch grid
    by_patch = torch.nn.functional.interpolate(
        by_patch.permute(2, 0, 1)[None], size=(64, 64), mode="bilinear", align_corners=False
    )[0]
    both = student_cosines(student, image, text, 64, readout="segments+patches")
    assert torch.allclose(both, 0.5 * (by_group.permute(2, 0, 1) + by_patch), atol=1e-5)
    # a patch-proj-free student has nothing to add, and an unknown read-out is named
    with pytest.raises(ValueError, match="patch_proj"):
        student_cosines(
            build_student("student-tiny", 16).eval(), image, text, 64, readout="segments+patches"
        )
    with pytest.raises(ValueError, match="read-out"):
        student_cosines(student, image, text, 64, readout="pixels")


def test_patches_trained_on_centred_targets_are_read_out_in_the_teachers_space():
    from zeroseg.models.student import decenter

    torch.manual_seed(0)
    center = 0.5 * torch.nn.functional.normalize(torch.randn(16), dim=0)
    x = 40.0 * torch.randn(5, 16)  # a centred loss leaves the length of x - center free
    out = decenter(x, center)
    radius = (1 - center.pow(2).sum()).sqrt()
    assert torch.allclose((out - center).norm(dim=-1), radius.expand(5), atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(out - center, x - center, dim=-1)
    assert torch.allclose(cos, torch.ones(5), atol=1e-5)
    # unit-norm targets at their mean's RMS distance: the shared part keeps its weight
    assert 0.8 < out.norm(dim=-1).mean() < 1.2

    student = build_student("student-tiny-dense", 16).eval()
    image = torch.rand(1, 3, 64, 64)
    _, _, raw = student.segment_with_patches(image)
    student.set_target_center(center)
    _, _, mapped = student.segment_with_patches(image)
    assert torch.allclose(mapped, decenter(raw, center), atol=1e-5)
    assert "target_center" not in student.state_dict()  # the final config carries it
    student.set_target_center(None)
    assert torch.equal(student.segment_with_patches(image)[2], raw)


def test_student_readout_is_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match="eval.student_readout"):
        load_config("jobs/demo.yaml", ["eval.student_readout=pixels"])
    with pytest.raises(ConfigError, match="patch_proj"):
        load_config("jobs/paper_exact.yaml", ["eval.student_readout=segments+patches"])


def test_the_patches_readout_needs_per_patch_projections():
    load_config("jobs/demo.yaml", ["eval.student_readout=patches"])
    with pytest.raises(ConfigError, match="'patches' needs a student with patch_proj"):
        load_config("jobs/paper_exact.yaml", ["eval.student_readout=patches"])
