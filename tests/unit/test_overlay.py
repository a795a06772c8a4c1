import numpy as np

from zeroseg.overlay import blend, colorize, palette, panel


def test_palette_and_colorize():
    pal = palette(30)
    assert pal.shape == (30, 3) and (pal[0] == 0).all()
    labels = np.array([[0, 1], [2, 255]])
    rgb = colorize(labels, 3)
    assert (rgb[0, 1] == pal[1]).all() and (rgb[1, 1] == 255).all()


def test_blend_keeps_background_pixels():
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.int64)
    labels[0, 0] = 1
    out = blend(image, labels, 2)
    assert (out[1:, :] == 100).all() and not (out[0, 0] == 100).all()


def test_panel_has_a_tile_per_map_and_a_legend():
    image = np.zeros((16, 16, 3), np.uint8)
    maps = [("a", np.zeros((16, 16), np.int64)), ("b", np.ones((16, 16), np.int64))]
    pic = panel(image, maps, ["background", "thing"], scale=2)
    assert pic.width == 3 * 32 + 2 * 4 and pic.height > 32 + 14
