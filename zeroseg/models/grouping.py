"""GroupViT-style grouping: image tokens are assigned to learnable group (segment) tokens.

A grouping stage has two halves. Its transformer blocks (owned by the segmentation head) run
self-attention over ``[group tokens; image tokens]`` so the groups can look at the image. Then a
:class:`GroupingBlock` assigns every image token to one group (softmax over the *group* axis) and
replaces the image tokens by one embedding per group: the assignment-weighted average of the image
token values, plus an MLP.

The assignment logits are the fragile part: with plain dot products they can be driven flat during
training, at which point Gumbel noise decides the assignment and the groups collapse. ``cosine``
logits (cosine similarity times a fixed scale) keep the logit range fixed, so they can only lose
spread by the directions aligning, not by the norms shrinking (e.g. under weight decay).
``centered`` logits subtract, per image, the mean key over tokens and the mean query over groups
before the cosine: a component shared by every token (on small worlds it dominates, so every
token picks the same group from the first step) cannot decide the assignment; only how a token
differs from the rest of its image does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from zeroseg.student_config import ASSIGN_MODES


@dataclass
class Assignment:
    """What one grouping stage decided, kept for pixel maps and training diagnostics."""

    soft: torch.Tensor  # (B, S, N) softmax over groups (no Gumbel noise), columns sum to 1
    hard: torch.Tensor  # (B, S, N) the assignment actually used (one-hot or soft)
    logits: torch.Tensor  # (B, S, N) pre-softmax logits (no noise)

    def logit_std(self) -> torch.Tensor:
        """Spread of each token's logits across groups, averaged; near zero means collapse."""
        return self.logits.detach().float().std(dim=1).mean()

    def groups_used(self) -> torch.Tensor:
        """Mean number of groups that win at least one token, from the noise-free argmax."""
        winner = self.soft.detach().argmax(dim=1)  # (B, N)
        onehot = F.one_hot(winner, self.soft.shape[1]).amax(dim=1)  # (B, S)
        return onehot.sum(dim=1).float().mean()


def straight_through_onehot(probs: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot of the argmax in the forward pass, gradient of ``probs`` in the backward pass."""
    index = probs.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(probs).scatter_(dim, index, 1.0)
    return hard - probs.detach() + probs


def gumbel_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise; drawn on CPU when a CPU generator is given."""
    if generator is not None and generator.device.type != x.device.type:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    else:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    eps = torch.finfo(u.dtype).tiny
    neg_log_u = (-torch.log(u.clamp_min(eps))).clamp_min(eps)
    return -torch.log(neg_log_u)


class CrossAttention(nn.Module):
    """Queries from one token set attend to another (group tokens reading the image)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, s, c = query.shape
        h = self.num_heads
        q = self.q(query).reshape(b, s, h, c // h).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, s, c))


class CrossAttnBlock(nn.Module):
    """Pre-norm cross-attention + MLP block for the groups before assignment."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        query = query + self.attn(self.norm_q(query), self.norm_kv(context))
        return query + self.mlp(self.norm2(query))


class GroupProjector(nn.Module):
    """MLP-mixer style token-axis projection: seeds S_out new group tokens from S_in segments."""

    def __init__(self, dim: int, in_tokens: int, out_tokens: int, hidden_ratio: float = 0.5):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        hidden = max(1, int(round(in_tokens * hidden_ratio)))
        self.token_mlp = Mlp(in_tokens, hidden, out_tokens)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        # (B, S_in, C) -> mix along the token axis -> (B, S_out, C)
        return self.token_mlp(self.norm(segments).transpose(1, 2)).transpose(1, 2)


class GroupingBlock(nn.Module):
    """Assign image tokens to group tokens and pool them into one embedding per group.

    Training uses a straight-through hard assignment (one-hot forward, softmax gradient), with
    Gumbel noise on the logits when ``gumbel``; evaluation uses the noise-free argmax.
    ``hard=False`` keeps the soft assignment everywhere (an ablation knob).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        assign: str = "dot",
        cosine_scale: float = 10.0,
        gumbel: bool = True,
        gumbel_tau: float = 1.0,
        hard: bool = True,
        pre_assign_attn: bool = True,
        assign_eps: float = 1.0,
    ) -> None:
        super().__init__()
        if assign not in ASSIGN_MODES:
            raise ValueError(f"assign must be one of {ASSIGN_MODES}, got {assign!r}")
        self.assign = assign
        self.cosine_scale = float(cosine_scale)
        self.gumbel = gumbel
        self.gumbel_tau = float(gumbel_tau)
        self.hard = hard
        self.assign_eps = float(assign_eps)
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_groups = nn.LayerNorm(dim)
        self.pre_assign = CrossAttnBlock(dim, num_heads, mlp_ratio) if pre_assign_attn else None
        self.norm_assign = nn.LayerNorm(dim)
        # Assignment projections: the names ``assign_q`` / ``assign_k`` let optimisers single
        # them out (see Student.param_groups).
        self.assign_q = nn.Linear(dim, dim)
        self.assign_k = nn.Linear(dim, dim)
        self.assign_v = nn.Linear(dim, dim)
        self.assign_proj = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.mlp_out = Mlp(dim, int(dim * mlp_ratio))

    def logits(self, groups: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Patch-to-group logits (B, S, N)."""
        q = self.assign_q(groups)
        k = self.assign_k(tokens)
        if self.assign == "centered":
            q = q - q.mean(dim=1, keepdim=True)
            k = k - k.mean(dim=1, keepdim=True)
        if self.assign in ("cosine", "centered"):
            q = F.normalize(q, dim=-1)
            k = F.normalize(k, dim=-1)
            return self.cosine_scale * q @ k.transpose(1, 2)
        return (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5

    def forward(
        self,
        tokens: torch.Tensor,
        groups: torch.Tensor,
        stochastic: bool,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Assignment]:
        """tokens (B, N, C), groups (B, S, C) -> (new segment tokens (B, S, C), assignment)."""
        tokens = self.norm_tokens(tokens)
        groups = self.norm_groups(groups)
        if self.pre_assign is not None:
            groups = self.pre_assign(groups, tokens)
        groups_n = self.norm_assign(groups)
        logits = self.logits(groups_n, tokens)  # (B, S, N)
        soft = logits.softmax(dim=1)
        if stochastic and self.gumbel:
            noisy = (logits + gumbel_like(logits, generator)) / self.gumbel_tau
            probs = noisy.softmax(dim=1)
        else:
            probs = soft
        if self.hard:
            used = straight_through_onehot(probs, dim=1)
        else:
            used = probs
        values = self.assign_v(tokens)  # (B, N, C)
        pooled = used @ values / (used.sum(dim=2, keepdim=True) + self.assign_eps)
        out = groups + self.assign_proj(pooled)
        out = out + self.mlp_out(self.norm_out(out))
        return out, Assignment(soft=soft, hard=used, logits=logits)
