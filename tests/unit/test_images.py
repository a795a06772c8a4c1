import io

import numpy as np
import pytest
from PIL import Image

from zeroseg.images import BadImage, decode_image


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"hello, not an image", "not_an_image"),
        (_png(Image.new("RGB", (3, 3))), "too_small"),
    ],
)
def test_bad_inputs_have_reasons(data, reason):
    with pytest.raises(BadImage) as err:
        decode_image(data, min_side=4)
    assert err.value.reason == reason


def test_truncated_file_is_corrupt():
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    with pytest.raises(BadImage) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK", "1"])
def test_odd_modes_become_rgb(mode):
    img = Image.new(mode, (20, 12))
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode == "CMYK" else "PNG")
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (20, 12)


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = np.asarray(decode_image(_png(img)))
    assert (out == 255).all()


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (10, 30)
