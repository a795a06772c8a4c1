"""zeroseg: label-free open-vocabulary segmentation by distilling CLIP region views.

The library is pure PyTorch/NumPy: importing it never imports Ray, so every piece can be used
and tested without a cluster. Orchestration lives in the sibling ``pipeline`` package.
"""

__version__ = "0.1.0"
