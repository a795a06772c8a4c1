"""Decoding untrusted image bytes into RGB, or a short reason why not.

Extraction must never crash on one bad file and never lose a good one, so every failure mode
maps to a stable reason string that lands in the cache index.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from .views import to_rgb

# Pillow warns above this many pixels and raises above twice as many; we refuse at the warning.
MAX_PIXELS = 89_478_485


class BadImage(ValueError):
    """An input that cannot be used; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, min_side: int = 4) -> Image.Image:
    """RGB image from encoded bytes; raises :class:`BadImage` with a reason."""
    if not data:
        raise BadImage("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise BadImage("too_large", f"{image.width}x{image.height}")
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too_large", str(exc)) from None
    except UnidentifiedImageError:
        raise BadImage("not_an_image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage("corrupt", str(exc)[:200]) from None
    if min(image.size) < min_side:
        raise BadImage("too_small", f"{image.width}x{image.height}")
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        raise BadImage("unsupported_mode", f"{image.mode}: {exc}") from None
