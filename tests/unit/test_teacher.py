import json

import fsspec
import open_clip
import pytest
import torch

from zeroseg.teacher import (
    Teacher,
    architecture_shape,
    dense_tower_features,
    fetch_weights,
    register_model_configs,
    resize_views,
)

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _random_checkpoint(tmp_path_factory, model_name: str) -> str:
    register_model_configs()
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(model_name)
    path = tmp_path_factory.mktemp("ckpt") / f"{model_name}.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    """The toy teacher (a timm hybrid ViT tower), random weights."""
    return _random_checkpoint(tmp_path_factory, "zeroseg-toyclip")


@pytest.fixture(scope="module")
def toy_cnn_ckpt(tmp_path_factory):
    """The earlier toy teacher with a CNN tower (timm ``test_resnet``, avg pool), random weights."""
    return _random_checkpoint(tmp_path_factory, "zeroseg-toyclip-cnn")


@pytest.fixture(scope="module")
def tiny_vit_name(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / "test-tinyvit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(d / "test-tinyvit.json")
    return "test-tinyvit"


def test_toy_teacher_shapes_and_norms(toy_ckpt):
    t = Teacher("zeroseg-toyclip", pretrained=toy_ckpt)
    assert t.image_size == 64 and t.embed_dim == 128
    x = torch.rand(3, 3, 40, 40)  # any size: resized to the model's input
    z = t.encode_images(x)
    assert z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    txt = t.encode_text(["circle", "star"], ["a photo of a {}.", "a {}."])
    assert txt.shape == (2, 128)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    d = t.dense_features(torch.rand(2, 3, 64, 64))
    assert d.shape[0] == 2 and d.shape[-1] == 128 and d.ndim == 4
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(d.shape[:-1]))
    fp = t.fingerprint()
    assert fp["model_name"] == "zeroseg-toyclip" and fp["embed_dim"] == 128
    assert len(fp["weights_sha256"]) == 64


def test_cnn_dense_features_pool_to_global(toy_cnn_ckpt):
    # avg pooling then a linear projection == projection per location then the mean
    t = Teacher("zeroseg-toyclip-cnn", pretrained=toy_cnn_ckpt, normalize=False)
    x = torch.rand(2, 3, 64, 64)
    dense = t.dense_features(x)
    torch.testing.assert_close(dense.mean(dim=(1, 2)), t.encode_images(x), atol=1e-5, rtol=1e-4)
    # a CNN has no value path: the raw read-out is the same per-location map
    torch.testing.assert_close(t.dense_features(x, mode="raw"), dense)


def _vit_teacher(ckpt: str) -> Teacher:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    t = Teacher("zeroseg-toyclip", pretrained=ckpt, normalize=False)
    assert isinstance(t.model.visual.trunk, TimmViT)
    return t


def test_timm_vit_raw_dense_features_are_the_trunks_patch_tokens(toy_ckpt):
    """raw: every block in full, the patch tokens through the trunk's final norm and the
    adapter's projection; the class token through the same layers is encode_image."""
    t = _vit_teacher(toy_ckpt)
    visual = t.model.visual
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens = visual.trunk.forward_features(t.preprocess(x))  # (B, 1 + 64, C), normed
        assert visual.trunk.num_prefix_tokens == 1 and tokens.shape[1] == 1 + 8 * 8
        expected = visual.head(tokens[:, 1:]).reshape(2, 8, 8, -1)
        cls = visual.head(tokens[:, 0])
    raw = t.dense_features(x, mode="raw")
    assert raw.shape == (2, 8, 8, 128)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cls, t.encode_images(x), atol=1e-5, rtol=1e-4)
    # the value path is another read-out, not the raw tokens under a new name
    assert not torch.allclose(t.dense_features(x, mode="value"), raw, atol=1e-3)


def test_timm_vit_value_dense_features_are_the_last_blocks_value_path(toy_ckpt):
    """value (MaskCLIP): the last block's input -> norm1 -> the v third of qkv (heads laid out
    as the attention lays them out) -> proj -> layer scale; no attention, residual or MLP; then
    the final norm and projection of each patch token."""
    t = _vit_teacher(toy_ckpt)
    visual = t.model.visual
    trunk, last = visual.trunk, visual.trunk.blocks[-1]
    seen = {}
    hook = last.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        visual(t.preprocess(x))
        hook.remove()
        inp = seen["x"]  # (B, 1 + N, C): what the last block receives
        b, n, c = inp.shape
        attn = last.attn
        qkv = attn.qkv(last.norm1(inp)).reshape(b, n, 3, attn.num_heads, attn.head_dim)
        v = attn.proj(qkv[:, :, 2].reshape(b, n, -1))
        expected = visual.head(trunk.norm(last.ls1(v))[:, 1:]).reshape(2, 8, 8, -1)
    value = t.dense_features(x)  # "value" is the default
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t.dense_features(x, mode="value"), value)
    # per token: a patch's value read-out ignores the other tokens at the last block
    moved = inp.clone()
    moved[:, 2:] += torch.randn_like(moved[:, 2:])
    with torch.no_grad():
        y = last.ls1(attn.proj(attn.qkv(last.norm1(moved))[..., 2 * c :]))
        again = visual.head(trunk.norm(y)[:, 1:2])
    torch.testing.assert_close(again[:, 0], expected[:, 0, 0], atol=1e-5, rtol=1e-4)


def test_timm_vit_dense_grid_follows_the_input_size(toy_ckpt):
    t = _vit_teacher(toy_ckpt)
    x = torch.rand(3, 3, 64, 64)
    for mode in ("value", "raw"):
        assert t.dense_features(x, mode=mode).shape == (3, 8, 8, 128)
        assert t.dense_features(x, input_size=128, mode=mode).shape == (3, 16, 16, 128)
    with pytest.raises(ValueError, match="mode"):
        t.dense_features(x, mode="attention")


def test_tiny_vit_dense_features(tiny_vit_name):
    t = Teacher(tiny_vit_name)
    assert t.image_size == 32 and t.embed_dim == 32
    x = torch.rand(2, 3, 32, 32)
    assert t.encode_images(x).shape == (2, 32)
    d = t.dense_features(x)
    assert d.shape == (2, 4, 4, 32)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 4, 4))
    # the value path: independent of the other tokens' content through attention
    value = dense_tower_features(t.model.visual, t.preprocess(x))
    assert value.shape == (2, 4, 4, 32)
    # raw: open_clip's own patch tokens (after ln_post) through the projection
    visual = t.model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = visual(t.preprocess(x))
    finally:
        visual.output_tokens = False
    raw = dense_tower_features(visual, t.preprocess(x), mode="raw")
    torch.testing.assert_close(raw, (tokens @ visual.proj).reshape(2, 4, 4, 32))
    assert not torch.allclose(raw, value, atol=1e-3)


def test_local_and_fsspec_weights_identical(toy_ckpt):
    with open(toy_ckpt, "rb") as f:
        data = f.read()
    uri = "memory://teacher-test/weights/toy.pt"
    fs, path = fsspec.core.url_to_fs(uri)
    fs.pipe_file(path, data)
    a = Teacher("zeroseg-toyclip", pretrained=toy_ckpt)
    b = Teacher("zeroseg-toyclip", pretrained=uri)
    c = Teacher("zeroseg-toyclip", pretrained="file://" + toy_ckpt)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(a.encode_images(x), b.encode_images(x))
    assert torch.equal(a.encode_images(x), c.encode_images(x))
    assert torch.equal(a.encode_text(["ring"]), b.encode_text(["ring"]))
    assert a.fingerprint()["weights_sha256"] == b.fingerprint()["weights_sha256"]
    local, temporary = fetch_weights(uri)
    assert temporary and local.endswith(".pt")


def test_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Teacher("zeroseg-toyclip", pretrained=str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError):
        Teacher("zeroseg-toyclip", pretrained="memory://nothing/here.pt")
    with pytest.raises(FileNotFoundError, match="tag"):
        Teacher("zeroseg-toyclip", pretrained="not-a-tag")


def test_resize_views_is_bilinear_antialiased():
    x = torch.rand(1, 3, 16, 16)
    up = resize_views(x, 64)
    ref = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref)
    assert resize_views(x, 16) is x


def test_project_vit_teacher_config_is_an_open_clip_vit():
    """`zeroseg-toyclip-vit` (the ViT teacher of bench/train.py) builds through open_clip as a
    real VisionTransformer with the toy teacher's embedding size, and gives global and dense
    embeddings of the sizes the cache and the dense baseline expect."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    t = Teacher("zeroseg-toyclip-vit", None)
    assert isinstance(t.model.visual, VisionTransformer)
    assert (t.image_size, t.embed_dim) == (64, 128)
    x = torch.rand(3, 3, 64, 64)
    z = t.encode_images(x)
    assert z.shape == (3, 128)
    assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert t.dense_features(x).shape == (3, 8, 8, 128)


def test_architecture_shape_matches_the_built_model_without_building_it():
    for name in ("zeroseg-toyclip", "zeroseg-toyclip-cnn", "zeroseg-toyclip-vit"):
        t = Teacher(name, None)
        assert architecture_shape(name) == (t.embed_dim, t.image_size)
    assert architecture_shape("ViT-L-14") == (768, 224)  # config only: no weights, no model
    assert architecture_shape("no-such-architecture") is None


def test_precision_is_checked_and_autocast_keeps_float32_outputs():
    with pytest.raises(ValueError, match="precision must be one of"):
        Teacher("zeroseg-toyclip", None, precision="int8")
    fp32 = Teacher("zeroseg-toyclip", None)
    bf16 = Teacher("zeroseg-toyclip", None, model=fp32.model, precision="bf16")
    x = torch.rand(4, 3, 64, 64)
    a, b = fp32.encode_images(x), bf16.encode_images(x)
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b) and torch.nn.functional.cosine_similarity(a, b).min() > 0.98
