import dataclasses
import hashlib
import json

import pytest
import torch

from zeroseg.models import (
    STUDENT_LAYOUT,
    GroupingBlock,
    StudentConfig,
    build_student,
    count_parameters,
    flat_student_config,
    list_students,
    nested_student_config,
    parameter_breakdown,
    random_masking,
    sincos_pos_embed_2d,
    student_config,
)
from zeroseg.models.grouping import straight_through_onehot
from zeroseg.student_config import CONFIG_DIR

D = 32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_student("student-tiny", D)


def test_presets_listed():
    names = list_students()
    assert {"student-tiny", "student-tiny-dense", "student-small", "zeroseg-vit-b16"} <= set(names)


def test_masking_exact_count_unique_and_seeded():
    n, ratio = 64, 0.6
    keep, restore = random_masking(8, n, ratio, generator=torch.Generator().manual_seed(1))
    assert keep.shape == (8, round((1 - ratio) * n))
    for row in keep:
        assert len(set(row.tolist())) == keep.shape[1]
        assert row.tolist() == sorted(row.tolist())
    # restore is a permutation; visible patches land in the first positions
    assert (restore.sort(dim=1).values == torch.arange(n)).all()
    assert (restore.gather(1, keep) < keep.shape[1]).all()
    keep2, _ = random_masking(8, n, ratio, generator=torch.Generator().manual_seed(1))
    keep3, _ = random_masking(8, n, ratio, generator=torch.Generator().manual_seed(2))
    assert torch.equal(keep, keep2)
    assert not torch.equal(keep, keep3)
    for r in (0.0, 0.25, 0.75, 0.9):
        k, _ = random_masking(2, 196, r)
        assert k.shape[1] == max(1, round((1 - r) * 196))


def test_sincos_shape_and_rescaling():
    pe = sincos_pos_embed_2d(4, 4, 16)
    assert pe.shape == (16, 16)
    assert len({tuple(r.tolist()) for r in pe}) == 16
    # a 2x larger grid rescaled to the 4x4 range reproduces it on even positions
    big = sincos_pos_embed_2d(8, 8, 16, base_grid=(4, 4)).reshape(8, 8, 16)
    assert torch.allclose(big[::2, ::2].reshape(16, 16), pe, atol=1e-6)


def test_forward_shapes_and_diagnostics(tiny):
    tiny.train()
    x = torch.rand(3, 3, 64, 64)
    out = tiny(x, mask_ratio=0.6, generator=torch.Generator().manual_seed(0))
    assert out["z"].shape == (3, D)
    assert out["segments"].shape == (3, 8, D)
    assert out["recon_loss"].ndim == 0 and out["recon_loss"].item() > 0
    for k in ("assign_logit_std", "groups_used", "assign_logit_std_1", "groups_used_2"):
        assert out[k].ndim == 0 and not out[k].requires_grad
    assert 1 <= out["groups_used"].item() <= 8
    # eval mode: nothing masked, no reconstruction
    tiny.eval()
    with torch.no_grad():
        out = tiny(x)
    assert out["recon_loss"].item() == 0
    assert out["segments"].shape == (3, 8, D)
    tiny.train()


def test_forward_reproducible_with_generator(tiny):
    tiny.train()
    x = torch.rand(2, 3, 64, 64)
    a = tiny(x, mask_ratio=0.6, generator=torch.Generator().manual_seed(5))
    b = tiny(x, mask_ratio=0.6, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a["z"], b["z"]) and torch.allclose(a["recon_loss"], b["recon_loss"])


def test_segment_outputs(tiny):
    x = torch.rand(2, 3, 64, 64)
    tiny.train()
    segs, pg = tiny.segment(x)
    assert tiny.training  # segment() does not change the module's mode
    assert segs.shape == (2, 8, D) and pg.shape == (2, 8, 64, 64)
    assert torch.allclose(pg.sum(dim=1), torch.ones(2, 64, 64), atol=1e-4)
    # other sizes (multiple of the patch) work through rescaled positions
    segs, pg = tiny.segment(torch.rand(1, 3, 96, 128))
    assert pg.shape == (1, 8, 96, 128)


def test_backward_reaches_every_parameter(tiny):
    tiny.train()
    tiny.zero_grad()
    out = tiny(torch.rand(2, 3, 64, 64), mask_ratio=0.6)
    (out["z"].sum() + out["segments"].sum() + out["recon_loss"]).backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None]
    assert not missing, missing
    for g in tiny.group_tokens:
        assert g.grad.abs().sum() > 0


def _block(**kw):
    torch.manual_seed(0)
    return GroupingBlock(16, 2, assign=kw.pop("assign", "dot"), **kw)


@pytest.mark.parametrize("assign", ["dot", "cosine"])
def test_grouping_hard_in_train_soft_sums_to_one(assign):
    blk = _block(assign=assign)
    tokens, groups = torch.randn(2, 10, 16), torch.randn(2, 4, 16)
    out, a = blk(tokens, groups, stochastic=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 16)
    hard = a.hard.detach()
    assert torch.all((hard == 0) | (hard == 1))
    assert torch.allclose(hard.sum(dim=1), torch.ones(2, 10))
    assert torch.allclose(a.soft.sum(dim=1), torch.ones(2, 10), atol=1e-5)
    _, a_eval = blk(tokens, groups, stochastic=False)
    assert torch.equal(a_eval.hard.detach().argmax(1), a_eval.soft.argmax(1))


def test_straight_through_gradient_reaches_groups():
    blk = _block(gumbel=True, pre_assign_attn=False)
    tokens = torch.randn(2, 10, 16)
    groups = torch.randn(2, 4, 16, requires_grad=True)
    out, a = blk(tokens, groups, stochastic=True)
    (out * torch.randn_like(out)).sum().backward()
    assert groups.grad is not None and groups.grad.abs().sum() > 0
    # the straight-through estimator: forward one-hot, backward softmax gradient
    p = torch.softmax(torch.randn(3, 5, requires_grad=True), dim=1)
    h = straight_through_onehot(p, dim=1)
    assert torch.equal(h.detach(), torch.nn.functional.one_hot(p.argmax(1), 5).float())
    g = torch.randn(3, 5)
    (ga,) = torch.autograd.grad((h * g).sum(), p, retain_graph=True)
    assert torch.allclose(ga, g)


def test_assign_logit_gradient_through_straight_through():
    # assign_q/assign_k only influence the output through the logits, so a gradient there
    # proves the straight-through path carries gradient from the hard assignment to the groups
    blk = _block(gumbel=True, pre_assign_attn=False)
    tokens, groups = torch.randn(2, 10, 16), torch.randn(2, 4, 16)
    out, _ = blk(tokens, groups, stochastic=True)
    (out * torch.randn_like(out)).sum().backward()
    assert blk.assign_q.weight.grad.abs().sum() > 0
    assert blk.assign_k.weight.grad.abs().sum() > 0


def test_registry_round_trip_through_json():
    cfg = student_config("student-tiny")
    again = json.loads(json.dumps(cfg))
    a = build_student("student-tiny", D)
    b = build_student(again, D)
    assert count_parameters(a) == count_parameters(b)
    assert b.cfg.to_dict() == cfg
    assert build_student(cfg, D, width=64, num_heads=2).cfg.width == 64
    with pytest.raises(KeyError):
        build_student({**cfg, "widht": 3}, D)
    with pytest.raises(KeyError):
        student_config("student-nope")


def test_param_groups_cover_all_parameters(tiny):
    groups = tiny.param_groups(0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(tiny.parameters()))


def test_paper_preset_parameter_count():
    with torch.device("meta"):
        model = build_student("zeroseg-vit-b16", 768)
    counts = parameter_breakdown(model)
    print("zeroseg-vit-b16 parameters:", counts)
    # ViT-B/16 encoder without cls token / head: about 85.8M
    assert 85e6 < counts["encoder"] < 87e6
    assert model.cfg.num_groups == [32, 8] and model.cfg.head_depth == 5


def test_centered_assignment_ignores_a_shared_token_component():
    blk = _block(assign="centered", pre_assign_attn=False)
    groups, keys = torch.randn(1, 4, 16), torch.randn(1, 10, 16)
    shift = 50 * torch.randn(1, 1, 16)
    # logits only see assign_k(tokens) minus its mean over tokens: a shared offset drops out
    a = blk.logits(groups, keys)
    b = blk.logits(groups, keys + shift @ torch.linalg.pinv(blk.assign_k.weight).T)
    assert torch.allclose(a, b, atol=1e-3)
    assert a.abs().max() <= blk.cosine_scale + 1e-5


def test_conv_stem_patch_proj_and_dense_outputs():
    torch.manual_seed(0)
    m = build_student("student-tiny", D, stem="conv", patch_proj=True, assign="centered")
    m.train()
    out = m(torch.rand(2, 3, 64, 64), mask_ratio=0.6, generator=torch.Generator().manual_seed(0))
    n_vis = round(0.4 * 64)
    assert out["patch_groups"].shape == (2, n_vis, 8)
    assert torch.allclose(out["patch_groups"].sum(-1), torch.ones(2, n_vis), atol=1e-5)
    assert out["patch_groups"].requires_grad
    assert out["patch_index"].shape == (2, n_vis) and out["grid_hw"].tolist() == [8, 8]
    assert out["patch_embeds"].shape == (2, n_vis, D)
    full = m(torch.rand(2, 3, 64, 64), mask_ratio=0.0)
    assert full["patch_index"][0].tolist() == list(range(64))
    segs, pg = m.segment(torch.rand(1, 3, 64, 64))
    assert segs.shape == (1, 8, D) and pg.shape == (1, 8, 64, 64)
    assert parameter_breakdown(m)["total"] == count_parameters(m)
    with pytest.raises(ValueError):
        build_student("student-tiny", D, stem="conv", patch_size=6, image_size=60)


def test_dense_preset_keeps_groups_apart_at_init():
    # the shared token component makes every patch pick one group with plain cosine logits;
    # centred logits spread an untrained student's patches over several final groups
    torch.manual_seed(0)
    m = build_student("student-tiny-dense", D)
    m.eval()
    out = m(torch.rand(4, 3, 64, 64))
    assert "patch_embeds" in out
    assert out["groups_used"].item() > 1


@pytest.mark.parametrize(
    "teacher_model, scale",
    [("zeroseg-toyclip", 1), ("zeroseg-toyclip-cnn", 4)],  # ViT tower stride 8, CNN stride 32
)
def test_teacher_stem_tokens_are_the_teachers_dense_features(tmp_path, teacher_model, scale):
    """The teacher stem embeds patches with the trained teacher tower's per-location embeddings
    (the value read-out) of the image enlarged ``teacher_scale`` times: the tokens equal one
    linear map of Teacher.dense_features at that side; only that map learns, the tower stays
    frozen and in eval mode, and the weights round-trip."""
    import open_clip
    import torch.nn.functional as F

    from zeroseg.teacher import Teacher, register_model_configs

    register_model_configs()
    torch.manual_seed(1)
    trained, _, _ = open_clip.create_model_and_transforms(teacher_model)
    ckpt = tmp_path / "teacher.pt"
    torch.save(trained.state_dict(), ckpt)

    model = build_student(
        "student-tiny-dense", 128, stem="teacher", teacher_model=teacher_model, teacher_scale=scale
    )
    model.patch_embed.load_teacher(teacher_model, str(ckpt))
    model.train()
    stem = model.patch_embed
    assert not stem.visual.training and all(not p.requires_grad for p in stem.visual.parameters())

    images = torch.rand(2, 3, 64, 64)
    x = (images - model.pixel_mean) / model.pixel_std
    teacher = Teacher(teacher_model, str(ckpt))
    dense = teacher.dense_features(images, input_size=64 * scale, mode="value")
    expected = stem.proj(F.normalize(dense, dim=-1).flatten(1, 2))
    assert torch.allclose(stem(x), expected, atol=1e-4)
    if teacher_model == "zeroseg-toyclip":  # a ViT: the raw patch tokens are another map
        raw = teacher.dense_features(images, input_size=64 * scale, mode="raw").clone()
        with torch.no_grad():
            assert not torch.allclose(stem(x), stem.proj(raw.flatten(1, 2)), atol=1e-3)

    model(x, mask_ratio=0.0)["patch_embeds"].sum().backward()
    assert stem.proj.weight.grad is not None
    assert all(p.grad is None for p in stem.visual.parameters())

    again = build_student(model.cfg.to_dict(), 128)  # how a saved student is rebuilt
    again.load_state_dict(model.state_dict())
    rebuilt, original = again.patch_embed.visual.state_dict(), stem.visual.state_dict()
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)


def test_teacher_stem_refuses_a_scale_that_misses_the_patch_grid():
    with pytest.raises(ValueError, match="patch grid"):
        build_student(
            "student-tiny-dense",
            128,
            stem="teacher",
            teacher_model="zeroseg-toyclip",
            teacher_scale=2,
        )
    with pytest.raises(ValueError, match="teacher_model"):
        build_student("student-tiny-dense", 128, stem="teacher")


def test_teacher_stem_with_pixels_adds_a_linear_pixel_embedding():
    """stem_pixels: tokens = the tower's tokens + a linear embedding of each patch's pixels,
    which learns; a patch-only stem refuses the option."""
    torch.manual_seed(2)
    model = build_student(
        "student-tiny-dense",
        128,
        stem="teacher",
        teacher_model="zeroseg-toyclip",
        teacher_scale=1,  # the ViT tower has stride 8, the student's patch size
        stem_pixels=True,
    )
    stem = model.patch_embed
    x = torch.randn(2, 3, 64, 64)
    tower_only = stem.proj(stem.features(x).flatten(1, 2))
    pixels = stem.pixels.proj(x).flatten(2).transpose(1, 2)  # one linear map per 8x8 patch
    assert torch.allclose(stem(x), tower_only + pixels, atol=1e-5)
    changed = x.clone()
    changed[:, :, :8, :8] += 1.0  # only the first patch's pixels
    moved = (stem(changed) - stem(x)).abs().sum(-1)[0]
    assert moved[0] > 0 and moved[2:].max() < moved[0]  # the tower still mixes a little
    model(x, mask_ratio=0.0)["patch_embeds"].sum().backward()
    assert stem.pixels.proj.weight.grad is not None
    with pytest.raises(ValueError, match="stem_pixels"):
        build_student("student-tiny-dense", 128, stem_pixels=True)


def test_precomputed_teacher_stem_features_give_the_same_forward():
    """Training computes the frozen tower's features once per image and passes them back in;
    the outputs, and the gradients of the learning parts, are those of the full forward."""
    torch.manual_seed(3)
    model = build_student(
        "student-tiny-dense", 128, stem="teacher", teacher_model="zeroseg-toyclip", teacher_scale=1
    ).train()
    x = torch.rand(2, 3, 64, 64)
    feats = model.stem_features(x)
    assert feats.shape == (2, 8, 8, model.patch_embed.proj.in_features)
    assert not feats.requires_grad
    outs, grads = [], []
    for given in (None, feats):
        model.zero_grad()
        out = model(
            x, mask_ratio=0.0, generator=torch.Generator().manual_seed(0), stem_features=given
        )
        out["patch_embeds"].sum().backward()
        outs.append(out["patch_embeds"].detach())
        grads.append(model.patch_embed.proj.weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
    with pytest.raises(ValueError, match="teacher"):
        build_student("student-tiny-dense", 128).stem_features(x)


def test_mask_ratio_is_the_recipes_not_the_architectures():
    # the training recipe (train.mask_ratio) says how much is hidden; a saved config.json of an
    # earlier run still holds the architecture's old field, which loading ignores
    saved = student_config("student-tiny") | {"mask_ratio": 0.6}
    assert "mask_ratio" not in build_student(saved, D).cfg.to_dict()
    model = build_student("student-tiny", D).train()
    x = torch.rand(2, 3, 64, 64)
    assert model(x)["patch_index"].shape == (2, 64)  # nothing hidden unless asked
    assert model(x, mask_ratio=0.5)["patch_index"].shape == (2, 32)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(x, mask_ratio=1.0)


# sha256 of each preset's state_dict key names, one per line, as trained runs saved them: a
# change of how the architecture is configured must leave every parameter where it was.
STATE_KEYS = {
    "student-small": (295, "0fd9b958436c8a19"),
    "student-tiny": (247, "73472527214839c0"),
    "student-tiny-dense": (249, "e9c0b6ae0c92b19a"),
    "zeroseg-vit-b16": (415, "8caa930eedfda344"),
}


def _key_digest(model: torch.nn.Module) -> tuple[int, str]:
    keys = list(model.state_dict())
    return len(keys), hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def test_every_field_has_one_nested_key_and_back():
    flat_fields = [f.name for f in dataclasses.fields(StudentConfig)]
    mapped = [flat for keys in STUDENT_LAYOUT.values() for flat in keys.values()]
    assert sorted(mapped) == sorted(flat_fields)  # onto, and no field twice
    assert set(STUDENT_LAYOUT) == {"stem", "encoder", "decoder", "head"}
    for name in list_students():
        flat = student_config(name)
        nested = nested_student_config(flat)
        assert list(nested) == list(STUDENT_LAYOUT)
        assert flat_student_config(nested) == flat
        assert nested_student_config(flat_student_config(nested)) == nested
        assert StudentConfig.from_dict(nested) == StudentConfig.from_dict(flat)
        assert StudentConfig.from_dict(flat).to_nested_dict() == nested
        assert sum(len(g) for g in nested.values()) == len(flat_fields)


def test_presets_are_written_nested_and_resolve_as_before():
    for name in list_students():
        raw = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert set(raw) <= set(STUDENT_LAYOUT) and all(isinstance(g, dict) for g in raw.values())
        assert student_config(name) == StudentConfig.from_dict(flat_student_config(raw)).to_dict()
    tiny = student_config("student-tiny")
    assert (tiny["stem"], tiny["patch_size"], tiny["width"], tiny["head_depth"]) == (
        "patch",
        8,
        128,
        5,
    )
    # a flat preset file (as written before) still reads the same
    assert flat_student_config(tiny) == tiny


@pytest.mark.parametrize("name", sorted(STATE_KEYS))
def test_presets_keep_their_parameter_names(name):
    with torch.device("meta"):
        model = build_student(name, 64)
        again = build_student(nested_student_config(student_config(name)), 64)
    assert _key_digest(model) == _key_digest(again) == STATE_KEYS[name]


def test_nested_and_flat_overrides_build_the_same_student():
    nested = build_student("student-tiny", D, encoder={"depth": 2}, stem={"kind": "conv"})
    flat = build_student("student-tiny", D, depth=2, stem="conv")
    assert nested.cfg == flat.cfg and nested.cfg.depth == 2 and nested.cfg.stem == "conv"
    assert build_student("student-tiny", D, head={"num_groups": [4, 2]}).cfg.num_groups == [4, 2]
    mixed = flat_student_config({"depth": 2, "decoder": {"depth": 1}, "stem": "teacher"})
    assert mixed == {"depth": 2, "decoder_depth": 1, "stem": "teacher"}
    # partial overrides stay partial, and legacy fields of saved configs pass to from_dict
    assert nested_student_config({"num_heads": 2}) == {"encoder": {"heads": 2}}
    assert flat_student_config({"mask_ratio": 0.6}) == {"mask_ratio": 0.6}


def test_bad_nested_keys_are_named():
    with pytest.raises(KeyError, match=r"student\.overrides\.encoder\.dpeth"):
        flat_student_config({"encoder": {"dpeth": 6}}, "student.overrides")
    with pytest.raises(KeyError, match=r"'decoder\.kind'.*width"):
        build_student("student-tiny", D, decoder={"kind": "x"})
    with pytest.raises(KeyError, match="'widht'"):
        flat_student_config({"widht": 3})
    with pytest.raises(ValueError, match="'encoder' is a group"):
        flat_student_config({"encoder": 6})
    with pytest.raises(ValueError, match="'depth' twice: also as 'encoder.depth'"):
        flat_student_config({"depth": 2, "encoder": {"depth": 4}})
