"""student.init: timm / MAE / open_clip ViT checkpoints become the student's encoder."""

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from zeroseg.mae_pretrain import MAESettings, encoder_state_dict, mae_pretrain
from zeroseg.models import build_student
from zeroseg.models.encoder_init import (
    InitMismatch,
    checkpoint_kind,
    load_encoder_init,
    read_state_dict,
)
from zeroseg.teacher import register_model_configs

D = 16
TINY = dict(
    image_size=32,
    patch_size=8,
    width=64,
    depth=2,
    num_heads=2,
    decoder_width=32,
    decoder_depth=1,
    decoder_heads=2,
)


def timm_vit(**kw) -> VisionTransformer:
    torch.manual_seed(1)
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0)
    return VisionTransformer(**{**args, **kw})


def test_a_timm_vit_becomes_the_students_encoder_exactly(tmp_path):
    """No class token, learned positions: the student's encoder computes what timm's does."""
    vit = timm_vit(class_token=False, global_pool="avg", fc_norm=False, num_classes=0).eval()
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    student = build_student("student-tiny-dense", D, **TINY, pos_embed="learned").eval()
    report = load_encoder_init(student, str(tmp_path / "vit.safetensors"))
    assert report.kind == "timm" and not report.left_out and not report.decoder_loaded
    x = torch.randn(2, 3, 32, 32)
    tokens = student.encode(x, 0.0)[0]
    torch.testing.assert_close(tokens, vit.forward_features(x), atol=1e-4, rtol=1e-4)
    # a name mapping that went wrong would have left a tensor as built
    assert torch.equal(student.encoder[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert torch.equal(student.encoder_norm.weight, vit.norm.weight)


def test_a_registered_timm_architecture_with_another_patch_size(tmp_path):
    """vit_small's layout from timm's registry at patch 16 (class token, classifier), loaded
    into a patch-8 student: kernel resampled, position grid resampled, the rest reported."""
    vit = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=64,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=5,
    )
    torch.save({"model": vit.state_dict()}, tmp_path / "vit.pth")  # MAE's container
    student = build_student("student-tiny-dense", D, **TINY, pos_embed="learned")
    report = load_encoder_init(student, str(tmp_path / "vit.pth"))
    assert set(report.left_out) == {"cls_token", "head.weight", "head.bias"}
    assert student.patch_embed.proj.weight.shape == (64, 3, 8, 8)
    assert student.pos_embed.shape == (1, 16, 64)
    assert torch.equal(student.encoder[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_a_fixed_sincos_student_says_it_leaves_a_learned_table_out(tmp_path):
    vit = timm_vit(class_token=False, global_pool="avg", fc_norm=False, num_classes=0)
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    student = build_student("student-tiny-dense", D, **TINY)
    report = load_encoder_init(student, str(tmp_path / "vit.safetensors"))
    assert "pos_embed" in report.left_out and "sin-cos" in report.left_out["pos_embed"]
    assert "left out: pos_embed" in report.summary()


def test_open_clip_vit_names_map_through_timms_converter(tmp_path):
    register_model_configs()
    torch.manual_seed(0)
    clip = open_clip.create_model("zeroseg-toyclip-vit", pretrained=None)  # ViT, patch 8
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    arch = dict(image_size=64, patch_size=8, width=128, depth=4, num_heads=4)
    student = build_student("student-tiny-dense", D, **arch, pos_embed="learned", norm_pre=True)
    report = load_encoder_init(student, str(tmp_path / "clip.pt"))
    assert report.kind == "open_clip"
    v = clip.visual
    assert torch.equal(
        student.encoder[2].attn.qkv.weight, v.transformer.resblocks[2].attn.in_proj_weight
    )
    assert torch.equal(student.encoder[3].mlp.fc1.bias, v.transformer.resblocks[3].mlp.c_fc.bias)
    assert torch.equal(student.norm_pre.weight, v.ln_pre.weight)
    assert torch.equal(student.encoder_norm.bias, v.ln_post.bias)
    assert torch.equal(student.patch_embed.proj.weight, v.conv1.weight)
    assert not student.patch_embed.proj.bias.any()  # CLIP's patch conv has none
    assert torch.equal(student.pos_embed[0], v.positional_embedding[1:])  # class slot dropped
    assert {"cls_token", "head.weight"} <= set(report.left_out)
    # without a pre-norm the student would compute something else: refused, with the setting
    plain = build_student("student-tiny-dense", D, **arch, pos_embed="learned")
    with pytest.raises(InitMismatch, match="norm_pre=true"):
        load_encoder_init(plain, str(tmp_path / "clip.pt"))


def test_an_encoder_of_another_size_is_refused_with_the_settings_to_change(tmp_path):
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8)
    save_file(vit.state_dict(), tmp_path / "small.safetensors")
    student = build_student("student-tiny-dense", D, **TINY)
    before = student.encoder[0].attn.qkv.weight.clone()
    with pytest.raises(InitMismatch) as err:
        load_encoder_init(student, str(tmp_path / "small.safetensors"))
    assert "encoder.depth=12" in str(err.value) and "encoder.width=384" in str(err.value)
    assert torch.equal(student.encoder[0].attn.qkv.weight, before)  # nothing half-loaded


def test_unreadable_and_non_vit_checkpoints_are_named(tmp_path):
    student = build_student("student-tiny-dense", D, **TINY)
    with pytest.raises(FileNotFoundError, match="student.init"):
        load_encoder_init(student, str(tmp_path / "absent.safetensors"))
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InitMismatch, match="neither safetensors nor"):
        load_encoder_init(student, str(tmp_path / "junk.bin"))
    save_file({"conv.weight": torch.zeros(3, 3)}, tmp_path / "cnn.safetensors")
    with pytest.raises(InitMismatch, match="not a ViT checkpoint"):
        checkpoint_kind(read_state_dict(str(tmp_path / "cnn.safetensors")))


def test_mae_pretraining_learns_and_its_output_starts_a_student(tmp_path):
    """The label-free init: reconstruction loss falls, the weights (timm / MAE names) load
    into a fresh student whole, decoder included, and the same seed gives the same weights."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(24, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    images[:, :, 8:24, 8:24] = 200  # something reconstructable: a flat square on noise
    student = build_student("student-tiny-dense", D, **TINY).cfg.to_dict()
    settings = MAESettings(steps=30, batch=8, lr=3e-3, warmup_steps=3, threads=1)
    state, record = mae_pretrain(images, student, settings, progress=False, log=lambda m: None)
    curve = record["curve"]
    assert curve[-1]["step"] == 30
    assert record["recipe"]["images"] == 24 and record["recipe"]["mask_ratio"] == 0.75
    again, _ = mae_pretrain(images, student, settings, progress=False, log=lambda m: None)
    assert all(torch.equal(state[k], again[k]) for k in state)
    save_file(state, tmp_path / "encoder.safetensors")
    fresh = build_student("student-tiny-dense", D, **TINY)
    report = load_encoder_init(fresh, str(tmp_path / "encoder.safetensors"))
    assert report.kind == "timm" and report.decoder_loaded and not report.left_out
    assert torch.equal(fresh.decoder_pred.weight, state["decoder_pred.weight"])
    assert torch.equal(
        encoder_state_dict(fresh)["blocks.1.attn.proj.weight"], state["blocks.1.attn.proj.weight"]
    )


def test_mae_loss_falls(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    for i in range(16):  # one flat colour per image: the masked patches are predictable
        images[i] = (torch.rand(3, 1, 1, generator=g) * 255).to(torch.uint8)
    student = build_student("student-tiny-dense", D, **TINY).cfg.to_dict()
    settings = MAESettings(steps=60, batch=8, lr=3e-3, warmup_steps=5, threads=1)
    _, record = mae_pretrain(images, student, settings, progress=False, log=lambda m: None)
    losses = [p["loss"] for p in record["curve"]]
    first = mae_pretrain(
        images,
        student,
        MAESettings(steps=1, batch=8, threads=1),
        progress=False,
        log=lambda m: None,
    )[1]["curve"][0]["loss"]
    assert losses[-1] < 0.5 * first


def test_the_lab_teachers_tower_starts_a_hybrid_student():
    """A toy CLIP's hybrid ViT (open_clip around a timm trunk): conv stem, blocks and norm load
    into a student with the same stem; a linear-patch student is told which stem to use."""
    from zeroseg.teacher import load_teacher_model
    from zeroseg.toy_assets import SHIPPED_WEIGHTS
    from zeroseg.toy_teacher import MODEL_NAME

    shipped = str(SHIPPED_WEIGHTS)
    arch = dict(stem="hybrid", pos_embed="learned", depth=5, mlp_ratio=3.0)
    student = build_student("student-tiny-dense", 128, **arch).eval()
    report = load_encoder_init(student, shipped)
    assert report.kind == "open_clip_timm"
    assert set(report.left_out) == {"cls_token", "head.proj.weight"}
    trunk = load_teacher_model(MODEL_NAME, shipped)[0].visual.trunk.eval()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(
        student.patch_embed(x), trunk.patch_embed(x).flatten(1, 2), atol=1e-5, rtol=1e-5
    )
    assert torch.equal(student.encoder[4].attn.qkv.weight, trunk.blocks[4].attn.qkv.weight.float())
    with pytest.raises(InitMismatch, match="stem.kind=hybrid"):
        load_encoder_init(build_student("student-tiny-dense", 128, depth=5, mlp_ratio=3.0), shipped)
