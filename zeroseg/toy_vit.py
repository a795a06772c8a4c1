"""The lab teacher's image tower: a small hybrid vision transformer registered with timm.

Real CLIP ViTs read the image out through one global token: the loss only ever sees the class
token, so the last block's patch tokens are barely aligned with text (why MaskCLIP needs its
value-path trick and ZeroSeg distils crop embeddings). A toy teacher is only a faithful lab if
it shares that structure: patch tokens, self-attention, a class-token read-out through the
final norm and a linear projection, and no pooling of per-location features. A from-scratch
patch-8 ViT learns rotated shapes far too slowly on a few CPU cores, so the patch embedding is
a convolutional stem (four 3x3 convolutions, three of stride 2, as in hybrid ViTs): 64 px in, 8 x 8
tokens out. ``dynamic_img_size`` interpolates the position embeddings for other input sizes.

Importing this module registers ``zeroseg_toyvit`` (and its 3-block sibling
``zeroseg_toyvit_small``) with timm; open_clip then builds them from the ``timm_model_name`` of
``zeroseg-toyclip.json`` (``zeroseg-toyclip-small.json``).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import HybridEmbed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import ConvStem

TIMM_NAME = "zeroseg_toyvit"
# The same tower with 3 blocks instead of 5: a toy CLIP smaller than the teacher, whose image
# tower can start a student as a CLIP ViT-B/16 does under a ViT-L/14 teacher.
TIMM_NAME_SMALL = "zeroseg_toyvit_small"
SMALL_DEPTH = 3
STEM_CHANNELS = (32, 64, 64, 128)
STEM_STRIDES = (2, 2, 1, 2)


def conv_stem() -> ConvStem:
    """Four 3x3 convolutions of total stride 8 (three of stride 2)."""
    return ConvStem(
        in_chans=3,
        depth=len(STEM_CHANNELS),
        channels=STEM_CHANNELS,
        stride=STEM_STRIDES,
        act_layer=torch.nn.GELU,
    )


def hybrid_embed(img_size: int, embed_dim: int) -> HybridEmbed:
    """The tower's patch embedding alone: the conv stem, then a 1x1 projection to the width
    (what a student with the ``hybrid`` stem uses, so a toy CLIP's tower can start it)."""
    return HybridEmbed(backbone=conv_stem(), img_size=img_size, patch_size=1, embed_dim=embed_dim)


def toy_vit(
    img_size: int = 64,
    embed_dim: int = 128,
    depth: int = 5,
    num_heads: int = 4,
    mlp_ratio: float = 3.0,
    **kwargs,
) -> VisionTransformer:
    """A hybrid ViT: conv stem of total stride 8, class token, learned position embeddings."""
    stem = conv_stem()
    kwargs.setdefault("dynamic_img_size", True)
    return VisionTransformer(
        img_size=img_size,
        patch_size=1,  # of the stem's output: one token per stem location
        embed_layer=partial(HybridEmbed, backbone=stem),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        class_token=True,
        **kwargs,
    )


@register_model
def zeroseg_toyvit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm entry point (never pretrained: the project trains and ships its own weights)."""
    return _timm_entry(TIMM_NAME, pretrained, kwargs)


@register_model
def zeroseg_toyvit_small(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm entry point of the smaller tower (``SMALL_DEPTH`` blocks)."""
    return _timm_entry(TIMM_NAME_SMALL, pretrained, {"depth": SMALL_DEPTH, **kwargs})


def _timm_entry(name: str, pretrained: bool, kwargs: dict) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{name} has no timm weights; load the project's checkpoint")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # timm's factory bookkeeping, not architecture arguments
    model = toy_vit(**kwargs)
    size = model.patch_embed.img_size
    # what timm's builder would attach; open_clip's adapter reads it
    model.pretrained_cfg = model.default_cfg = {"input_size": (3, *size), "num_classes": 0}
    return model
