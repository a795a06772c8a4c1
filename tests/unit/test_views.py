import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.views import center_crop, cut_views, grid_boxes, grid_pixel_boxes, num_views


def test_grid_boxes_layout():
    boxes = grid_boxes()
    assert boxes.shape == (30, 4) and num_views() == 30
    np.testing.assert_allclose(boxes[0], [0, 0, 1, 1])
    # level 2, row-major: top-left, top-right, bottom-left, bottom-right
    np.testing.assert_allclose(
        boxes[1:5], [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]
    )
    # every level tiles the unit square exactly
    start = 0
    for n in (1, 2, 3, 4):
        level = boxes[start : start + n * n]
        area = ((level[:, 2] - level[:, 0]) * (level[:, 3] - level[:, 1])).sum()
        assert area == pytest.approx(1.0)
        start += n * n
    assert np.array_equal(grid_boxes(), grid_boxes())  # deterministic


def test_cells_tile_pixels_exactly():
    for size in (64, 63, 100):
        covered = np.zeros((size, size), int)
        for x0, y0, x1, y1 in grid_pixel_boxes(size, [3]):
            covered[y0:y1, x0:x1] += 1
        assert (covered == 1).all()


def test_center_crop_any_mode_and_shape():
    wide = Image.fromarray(np.arange(40 * 80 * 3, dtype=np.uint8).reshape(40, 80, 3))
    assert center_crop(wide, 32).shape == (32, 32, 3)
    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        img = Image.new(mode, (50, 70))
        out = center_crop(img, 16)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_cut_views_match_manual_crops():
    px = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    views = cut_views(px, [1, 2, 4], out_size=16)
    assert views.shape == (2, 21, 3, 16, 16)
    assert views.min() >= 0 and views.max() <= 1
    # a 4x4 cell of a 64 px crop is 16 px: resized to 16 it is the cell itself
    cell = px[:, 16:32, 32:48].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(views[:, 5 + 4 + 2], cell)  # level 4, row 1, col 2
    with pytest.raises(ValueError):
        cut_views(torch.zeros(1, 10, 12, 3, dtype=torch.uint8))
