"""Known answers for the training-free last blocks (MaskCLIP, SCLIP, ClearCLIP, NACLIP)."""

import math

import numpy as np
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from timm.models.vision_transformer import Block

from zeroseg.last_block import (
    DENSE_MODES,
    last_block,
    neighbourhood_bias,
    open_clip_block_parts,
    timm_block_parts,
)
from zeroseg.teacher import Teacher

WIDTH, HEADS = 8, 2


def _open_clip_block(seed: int = 0) -> ResidualAttentionBlock:
    torch.manual_seed(seed)
    blk = ResidualAttentionBlock(WIDTH, HEADS, mlp_ratio=2.0).eval()
    with torch.no_grad():  # non-trivial norms and biases, so every part is exercised
        for p in blk.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return blk


def _timm_block(seed: int = 0) -> Block:
    torch.manual_seed(seed)
    blk = Block(WIDTH, HEADS, mlp_ratio=2.0, qkv_bias=True).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return blk


BLOCKS = {
    "open_clip": lambda: open_clip_block_parts(_open_clip_block()),
    "timm": lambda: timm_block_parts(_timm_block()),
}


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * ln.weight.detach().numpy() + ln.bias.detach().numpy()


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference(blk, tokens, mode, grid, prefix, sigma):
    """The table of :mod:`zeroseg.last_block`, written out with numpy loops over heads."""
    if isinstance(blk, ResidualAttentionBlock):
        ln1, ln2, attn = blk.ln_1, blk.ln_2, blk.attn
        w, b = attn.in_proj_weight.detach().numpy(), attn.in_proj_bias.detach().numpy()
        wo, bo = attn.out_proj.weight.detach().numpy(), attn.out_proj.bias.detach().numpy()
        fc1, fc2 = blk.mlp.c_fc, blk.mlp.c_proj
    else:
        ln1, ln2, attn = blk.norm1, blk.norm2, blk.attn
        w, b = attn.qkv.weight.detach().numpy(), attn.qkv.bias.detach().numpy()
        wo, bo = attn.proj.weight.detach().numpy(), attn.proj.bias.detach().numpy()
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
    x = tokens[0].double().numpy()
    y = _layer_norm(x, ln1)
    qkv = y @ w.T + b
    q, k, v = qkv[:, :WIDTH], qkv[:, WIDTH : 2 * WIDTH], qkv[:, 2 * WIDTH :]
    hd = WIDTH // HEADS
    t = x.shape[0]
    bias = np.zeros((t, t))
    cells = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    for i, (ri, ci) in enumerate(cells):
        for j, (rj, cj) in enumerate(cells):
            d2 = (ri - rj) ** 2 + (ci - cj) ** 2
            bias[prefix + i, prefix + j] = math.exp(-d2 / (2 * sigma**2))
    heads = []
    for h in range(HEADS):
        sl = slice(h * hd, (h + 1) * hd)
        qh, kh, vh = q[:, sl], k[:, sl], v[:, sl]
        s = hd**-0.5
        if mode == "value":
            a = np.eye(t)
        elif mode == "raw":
            a = _softmax(qh @ kh.T * s)
        elif mode == "sclip":
            a = _softmax(qh @ qh.T * s) + _softmax(kh @ kh.T * s)
        elif mode == "clearclip":
            a = _softmax(qh @ qh.T * s)
        else:
            a = _softmax(kh @ kh.T * s + bias)
        heads.append(a @ vh)
    branch = np.concatenate(heads, 1) @ wo.T + bo
    if mode in ("value", "clearclip", "naclip"):
        return branch
    x = x + branch
    hidden = _layer_norm(x, ln2) @ fc1.weight.detach().numpy().T + fc1.bias.detach().numpy()
    hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))  # exact GELU
    return x + hidden @ fc2.weight.detach().numpy().T + fc2.bias.detach().numpy()


@pytest.mark.parametrize("kind", ["open_clip", "timm"])
@pytest.mark.parametrize("mode", DENSE_MODES)
def test_every_mode_matches_the_written_out_table(kind, mode):
    grid, prefix = (2, 3), 1
    blk = _open_clip_block() if kind == "open_clip" else _timm_block()
    parts = open_clip_block_parts(blk) if kind == "open_clip" else timm_block_parts(blk)
    torch.manual_seed(1)
    tokens = torch.randn(1, prefix + 6, WIDTH)
    with torch.no_grad():
        got = last_block(parts, tokens, mode, grid, prefix, sigma=1.5)
    want = _reference(blk, tokens, mode, grid, prefix, 1.5)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["open_clip", "timm"])
def test_raw_is_the_block_itself_and_every_method_differs_from_it(kind):
    parts = BLOCKS[kind]()
    tokens = torch.randn(2, 5, WIDTH)
    with torch.no_grad():
        raw = last_block(parts, tokens, "raw", (2, 2), 1)
        torch.testing.assert_close(raw, parts.full(tokens))
        for mode in DENSE_MODES[:1] + DENSE_MODES[2:]:
            other = last_block(parts, tokens, mode, (2, 2), 1)
            assert not torch.allclose(other, raw, atol=1e-3), mode


def _hand_block() -> ResidualAttentionBlock:
    """One head of width 2: queries and keys are zero, values and the output are the identity,
    so every attention is decided by its logits' constant part alone."""
    blk = ResidualAttentionBlock(2, 1, mlp_ratio=1.0).eval()
    with torch.no_grad():
        blk.attn.in_proj_weight.zero_()
        blk.attn.in_proj_weight[4:] = torch.eye(2)
        blk.attn.in_proj_bias.zero_()
        blk.attn.out_proj.weight.copy_(torch.eye(2))
        blk.attn.out_proj.bias.zero_()
    return blk


# width-2 tokens: the layer norm maps (a, b) with a > b to (1, -1) and a < b to (-1, 1)
HAND_TOKENS = torch.tensor([[[3.0, 1.0], [0.0, 2.0], [5.0, 4.0]]])  # a class token, 1x2 patches
NORMED = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]])


def test_value_path_by_hand():
    out = last_block(open_clip_block_parts(_hand_block()), HAND_TOKENS, "value", (1, 2), 1)
    np.testing.assert_allclose(out[0].detach().numpy(), NORMED, atol=1e-3)


def test_zero_queries_and_keys_attend_uniformly_by_hand():
    parts = open_clip_block_parts(_hand_block())
    mean = NORMED.mean(0)  # (1/3, -1/3) for every token
    clear = last_block(parts, HAND_TOKENS, "clearclip", (1, 2), 1)[0].detach().numpy()
    np.testing.assert_allclose(clear, np.tile(mean, (3, 1)), atol=1e-3)
    # SCLIP: two uniform softmaxes, the residual, then the block's FFN on top
    blk = _hand_block()
    sclip = last_block(open_clip_block_parts(blk), HAND_TOKENS, "sclip", (1, 2), 1)
    x = HAND_TOKENS + torch.from_numpy(2 * mean).float()
    with torch.no_grad():
        torch.testing.assert_close(sclip, x + blk.mlp(blk.ln_2(x)), atol=1e-3, rtol=1e-3)


def test_naclip_neighbourhood_by_hand():
    sigma = 2.0
    near = math.exp(-1 / (2 * sigma**2))  # the two patches are one apart
    out = last_block(
        open_clip_block_parts(_hand_block()), HAND_TOKENS, "naclip", (1, 2), 1, sigma=sigma
    )
    # zero keys: the logits are the bias alone. Class token: no bias, uniform.
    weights = np.array(
        [
            [1.0, 1.0, 1.0],
            [1.0, math.e, math.exp(near)],  # patch 1: itself exp(1), its neighbour exp(near)
            [1.0, math.exp(near), math.e],
        ]
    )
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(out[0].detach().numpy(), weights @ NORMED, atol=1e-3)


def test_neighbourhood_bias_and_bad_inputs():
    bias = neighbourhood_bias((2, 2), 1, 1.0)
    assert bias.shape == (5, 5) and bias[0].abs().sum() == 0 and bias[:, 0].abs().sum() == 0
    assert bias[1, 1] == 1.0 and bias[1, 4] == pytest.approx(math.exp(-1.0))  # diagonal: d^2 = 2
    with pytest.raises(ValueError, match="sigma"):
        neighbourhood_bias((2, 2), 1, 0.0)
    parts = BLOCKS["timm"]()
    with pytest.raises(ValueError, match="mode"):
        last_block(parts, torch.randn(1, 5, WIDTH), "attention", (2, 2), 1)
    with pytest.raises(ValueError, match="tokens"):
        last_block(parts, torch.randn(1, 6, WIDTH), "sclip", (2, 2), 1)


def test_the_lab_teacher_has_every_read_out_and_they_differ():
    teacher = Teacher("zeroseg-toyclip", "shipped")
    assert teacher.dense_modes == DENSE_MODES
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = {m: teacher.dense_features(x, mode=m) for m in DENSE_MODES}
    for m, d in maps.items():
        assert d.shape == (2, 8, 8, 128), m
        if m != "raw":
            assert not torch.allclose(d, maps["raw"], atol=1e-2), m
    wide = teacher.dense_features(x, mode="naclip", sigma=50.0)
    assert not torch.allclose(wide, maps["naclip"], atol=1e-3)  # sigma is used
