"""Training-free dense read-outs of a CLIP ViT: each changes only what its last block computes.

CLIP's loss only ever sees the class token, so the last block's patch tokens are poorly aligned
with text (``raw``). The training-free segmenters replace that block's attention by one that
keeps each patch's own content, then read every patch token through the tower's final norm and
projection as if it were the class token:

========== ============================================================= ========= =====
mode       attention of the last block                                   residual  FFN
========== ============================================================= ========= =====
raw        softmax(q k^T) (the block as trained)                         yes       yes
value      none: each token's own value (MaskCLIP)                       no        no
sclip      softmax(q q^T) + softmax(k k^T) (SCLIP)                       yes       yes
clearclip  softmax(q q^T) (ClearCLIP)                                    no        no
naclip     softmax(k k^T + Gaussian neighbourhood of the patch) (NACLIP) no        no
========== ============================================================= ========= =====

All logits are scaled by ``head_dim ** -0.5``. NACLIP's neighbourhood adds, to the logit of
patch ``i`` attending to patch ``j``, ``exp(-|p_i - p_j|^2 / (2 sigma^2))`` with ``p`` the
patches' grid positions (in patches); pairs with a class or register token get no bias.

:class:`BlockParts` is the last block taken apart, so the same code serves open_clip's own
``VisionTransformer`` (ViT-B/16, ViT-L/14) and timm ViT trunks inside open_clip (the lab teacher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DENSE_MODES = ("value", "raw", "sclip", "clearclip", "naclip")
NACLIP_SIGMA = 5.0

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BlockParts:
    """A pre-norm transformer block as functions: ``x + ls1(attn(norm1(x)))``, then
    ``x + ls2(mlp(norm2(x)))``; ``qkv`` is the fused input projection (3 * width rows)."""

    full: Fn  # the block's own forward, batch-first tokens
    norm1: Fn
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    heads: int
    out: Fn  # post-attention norm (if any) and the output projection, on merged heads
    ls1: Fn
    norm2: Fn
    mlp: Fn
    ls2: Fn
    q_norm: Fn = torch.nn.Identity()
    k_norm: Fn = torch.nn.Identity()


def timm_block_parts(block: torch.nn.Module) -> BlockParts:
    """Parts of a timm ``Block`` whose ``attn`` is timm's ``Attention`` with a fused qkv."""
    from timm.layers import Attention

    attn = getattr(block, "attn", None)
    if not isinstance(attn, Attention) or not isinstance(attn.qkv, torch.nn.Linear):
        raise NotImplementedError("training-free read-outs need a timm Attention with a fused qkv")
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("training-free read-outs of gated timm attention")
    post = getattr(attn, "norm", torch.nn.Identity())
    return BlockParts(
        full=block,
        norm1=block.norm1,
        qkv_weight=attn.qkv.weight,
        qkv_bias=attn.qkv.bias,
        heads=attn.num_heads,
        out=lambda o: attn.proj(post(o)),
        ls1=block.ls1,
        norm2=block.norm2,
        mlp=block.mlp,
        ls2=block.ls2,
        q_norm=attn.q_norm,
        k_norm=attn.k_norm,
    )


def open_clip_block_parts(block: torch.nn.Module, batch_first: bool = True) -> BlockParts:
    """Parts of open_clip's ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` inside)."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention):
        raise NotImplementedError("training-free read-outs need nn.MultiheadAttention blocks")
    ln_attn = getattr(block, "ln_attn", torch.nn.Identity())

    def full(x: torch.Tensor) -> torch.Tensor:
        if batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    return BlockParts(
        full=full,
        norm1=block.ln_1,
        qkv_weight=attn.in_proj_weight,
        qkv_bias=attn.in_proj_bias,
        heads=attn.num_heads,
        out=lambda o: attn.out_proj(ln_attn(o)),
        ls1=block.ls_1,
        norm2=block.ln_2,
        mlp=block.mlp,
        ls2=block.ls_2,
    )


def neighbourhood_bias(grid: tuple[int, int], prefix: int, sigma: float) -> torch.Tensor:
    """``(T, T)`` NACLIP bias: a Gaussian of the patches' grid distance; 0 for prefix tokens."""
    if sigma <= 0:
        raise ValueError(f"naclip sigma must be > 0, got {sigma}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1).float()
    gauss = torch.exp(-torch.cdist(pos, pos).square() / (2 * sigma**2))
    bias = torch.zeros(prefix + gh * gw, prefix + gh * gw)
    bias[prefix:, prefix:] = gauss
    return bias


def last_block(
    parts: BlockParts,
    tokens: torch.Tensor,
    mode: str,
    grid: tuple[int, int],
    prefix: int,
    sigma: float = NACLIP_SIGMA,
) -> torch.Tensor:
    """``(B, T, C)`` batch-first tokens (``prefix`` class / register tokens, then the patches of
    ``grid`` in row-major order) -> the last block's output under ``mode``."""
    if mode not in DENSE_MODES:
        raise ValueError(f"dense read-out mode must be one of {DENSE_MODES}, got {mode!r}")
    if tokens.shape[1] != prefix + grid[0] * grid[1]:
        raise ValueError(f"{tokens.shape[1]} tokens for {prefix} + {grid[0]}x{grid[1]} patches")
    if mode == "raw":
        return parts.full(tokens)
    b, t, c = tokens.shape
    q, k, v = F.linear(parts.norm1(tokens), parts.qkv_weight, parts.qkv_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, parts.heads, -1).transpose(1, 2) for z in (q, k, v))
    if mode == "value":
        mixed = v
    else:
        q, k = parts.q_norm(q), parts.k_norm(k)
        scale = q.shape[-1] ** -0.5
        if mode == "sclip":
            attn = (q @ q.transpose(-2, -1) * scale).softmax(-1)
            attn = attn + (k @ k.transpose(-2, -1) * scale).softmax(-1)
        elif mode == "clearclip":
            attn = (q @ q.transpose(-2, -1) * scale).softmax(-1)
        else:  # naclip
            bias = neighbourhood_bias(grid, prefix, sigma).to(k)
            attn = (k @ k.transpose(-2, -1) * scale + bias).softmax(-1)
        mixed = attn @ v
    branch = parts.ls1(parts.out(mixed.transpose(1, 2).reshape(b, t, c)))
    if mode != "sclip":
        return branch
    x = tokens + branch
    return x + parts.ls2(parts.mlp(parts.norm2(x)))
