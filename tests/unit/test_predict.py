import numpy as np
import pytest
import torch

from zeroseg.predict import (
    BASELINES,
    METHODS,
    apply_rule,
    image_tensor,
    method_cosines,
    parse_rule,
    text_embeddings,
)


def test_parse_rule():
    assert parse_rule("prompt") == ("prompt", 0.0)
    assert parse_rule("threshold:0.9") == ("threshold", 0.9)
    assert parse_rule("cosine:0.25") == ("cosine", 0.25)
    for bad in ("prompt:1", "threshold", "threshold:x", "margin:0.1"):
        with pytest.raises(ValueError, match="background rule"):
            parse_rule(bad)


def test_rules_on_a_known_map():
    # row 0 is the background prompt; two classes. Pixel (0,0): background wins; (0,1): class 1
    # confidently; (1,0): classes tie (low confidence); (1,1): class 2 but low cosine.
    cos = torch.tensor(
        [
            [[0.9, 0.1], [0.1, 0.1]],
            [[0.5, 0.8], [0.5, 0.1]],
            [[0.1, 0.1], [0.5, 0.3]],
        ]
    )
    assert apply_rule(cos, "prompt", (2, 2)).tolist() == [[0, 1], [1, 2]]
    # threshold ignores the background prompt: softmax(100 * cos) over the two classes
    assert apply_rule(cos, "threshold:0.9", (2, 2)).tolist() == [[1, 1], [0, 2]]
    assert apply_rule(cos, "cosine:0.4", (2, 2)).tolist() == [[1, 1], [1, 0]]
    assert np.array_equal(apply_rule(None, "prompt", (3, 4)), np.zeros((3, 4), np.int64))


def test_methods_and_the_raw_dense_baseline():
    """dense_raw: the teacher's own last-block patch tokens at the maskclip_dense input size,
    scored like every other method; a ViT teacher's raw map is not its value-path map."""
    from zeroseg.inference import dense_score_map
    from zeroseg.teacher import Teacher

    assert METHODS == (
        "student",
        "grid_crop",
        "multigrid_crop",
        "maskclip_dense",
        "dense_raw",
        "sclip",
        "clearclip",
        "naclip",
        "all_background",
    )
    assert BASELINES == METHODS[1:]
    torch.manual_seed(0)
    teacher = Teacher("zeroseg-toyclip", None)
    text = text_embeddings(teacher, ["circle", "square"], ["a photo of a {}."])
    image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    kw = dict(teacher=teacher, size=64, dense_input_size=128)
    raw = method_cosines("dense_raw", image, text, **kw)
    value = method_cosines("maskclip_dense", image, text, **kw)
    assert raw.shape == value.shape == (3, 48, 40)
    features = teacher.dense_features(image_tensor(image, 128), input_size=128, mode="raw")
    assert features.shape == (1, 16, 16, 128)
    torch.testing.assert_close(raw, dense_score_map(features[0], text, (48, 40)))
    assert not torch.allclose(raw, value, atol=1e-3)
    with pytest.raises(ValueError, match="unknown method"):
        method_cosines("dense_rwa", image, text, **kw)


def test_multigrid_crop_averages_the_3x3_and_4x4_cells_around_each_pixel():
    """Each pixel's multigrid cosine is the mean of the cosines of the 3x3 cell and the 4x4 cell
    that contain it, each cell cut from the image and embedded by the teacher on its own."""
    import torch.nn.functional as F

    from zeroseg.teacher import Teacher
    from zeroseg.views import resize_views

    torch.manual_seed(0)
    teacher = Teacher("zeroseg-toyclip", None)
    text = text_embeddings(teacher, ["circle", "square"], ["a photo of a {}."])
    image = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    kw = dict(teacher=teacher, size=48)
    multi = method_cosines("multigrid_crop", image, text, **kw)
    single = method_cosines("grid_crop", image, text, **kw)
    assert multi.shape == single.shape == (3, 48, 48)

    def cell_cosines(grid: int, y: int, x: int) -> torch.Tensor:
        side = 48 // grid
        r, c = y // side, x // side
        cell = torch.from_numpy(image[r * side : (r + 1) * side, c * side : (c + 1) * side])
        view = resize_views(cell.permute(2, 0, 1)[None].float() / 255, teacher.image_size)
        emb = F.normalize(teacher.encode_images(view)[0], dim=-1)
        return emb @ text.T

    for y, x in ((0, 0), (20, 30), (47, 5), (33, 47)):
        expect = (cell_cosines(3, y, x) + cell_cosines(4, y, x)) / 2
        torch.testing.assert_close(multi[:, y, x], expect, atol=2e-3, rtol=0)
        torch.testing.assert_close(single[:, y, x], cell_cosines(4, y, x), atol=2e-3, rtol=0)
    assert not torch.allclose(multi, single, atol=1e-3)


def test_the_patches_readout_is_the_per_patch_half_of_the_combined_one():
    import numpy as np
    import torch

    from zeroseg.models import build_student
    from zeroseg.predict import student_cosines

    torch.manual_seed(0)
    student = build_student("student-tiny-dense", 16, image_size=32).eval()
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    both = student_cosines(student, image, text, 32, readout="segments+patches")
    groups = student_cosines(student, image, text, 32, readout="segments")
    patches = student_cosines(student, image, text, 32, readout="patches")
    torch.testing.assert_close(both, 0.5 * (groups + patches))
