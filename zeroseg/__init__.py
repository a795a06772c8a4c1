"""zeroseg: label-free open-vocabulary segmentation by distilling CLIP region views.

The library is pure PyTorch/NumPy: importing it never imports Ray, so every piece can be used
and tested without a cluster. Orchestration lives in the sibling ``pipeline`` package.

``zeroseg.load_segmenter`` and ``zeroseg.Segmenter`` are the public entry points for labelling
images; they load on first use, so ``import zeroseg`` itself stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Segmenter", "__version__", "load_segmenter"]

if TYPE_CHECKING:
    from .segmenter import Segmenter, load_segmenter

_LAZY = {"Segmenter", "load_segmenter"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'zeroseg' has no attribute {name!r}")
