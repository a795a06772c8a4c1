"""student.init=shipped: the packaged small toy CLIP's image tower, checked before it is used."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.preflight import PreflightError, preflight
from pipeline.ship_init import export_image_tower
from pipeline.train import init_uri, train_fingerprint
from zeroseg import toy_assets
from zeroseg.config import load_config, student_architecture
from zeroseg.models import build_student
from zeroseg.models.encoder_init import load_encoder_init
from zeroseg.toy_assets import SHIPPED_INIT_WEIGHTS, shipped_init_record, verified_shipped_init

SMALL_ARCH = [
    "student.overrides.stem.kind=hybrid",
    "student.overrides.stem.pos_embed=learned",
    "student.overrides.encoder.depth=3",
    "student.overrides.encoder.mlp_ratio=3.0",
]


def test_the_packaged_tower_is_the_small_clip_its_record_describes():
    record = shipped_init_record()
    assert record["model"] == "zeroseg-toyclip-small"
    assert record["recipe"]["steps"] == record["steps"] == 3000
    assert record["accuracy"]["single"] > 0.85  # a tower that recognises shapes, label-free
    assert SHIPPED_INIT_WEIGHTS.stat().st_size <= 2 * 2**20
    tower = load_file(verified_shipped_init(record))
    assert tower and all(k.startswith("visual.") for k in tower)
    assert {v.dtype for v in tower.values()} == {torch.float16, torch.int64}  # as trained


def test_shipped_loads_every_encoder_tensor_of_the_small_student(tmp_path):
    cfg = load_config("jobs/quality.yaml", ["student.init=shipped", *SMALL_ARCH])
    student = build_student(student_architecture(cfg), embed_dim=128)
    report = load_encoder_init(student, "shipped")
    assert report.kind == "open_clip_timm" and len(report.loaded) > 30
    tower = load_file(str(SHIPPED_INIT_WEIGHTS))
    qkv = tower["visual.trunk.blocks.2.attn.qkv.weight"]
    assert torch.equal(student.encoder[2].attn.qkv.weight, qkv)
    preflight(
        load_config(None, [f"storage.root={tmp_path}", "student.init=shipped", *SMALL_ARCH]), "run"
    )
    # the name stays a name for the workers; a path would pin one machine's install
    assert init_uri("shipped") == "shipped"
    assert init_uri("enc.safetensors").startswith("/")


def test_a_student_the_tower_does_not_fit_is_refused_before_any_work(tmp_path):
    cfg = load_config(
        None,
        [f"storage.root={tmp_path}", "student.init=shipped", "student.overrides.stem.kind=hybrid"],
    )
    with pytest.raises(PreflightError, match="student.init=shipped"):
        preflight(cfg, "train")


def test_a_damaged_packaged_tower_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / "tower.safetensors"
    data = bytearray(SHIPPED_INIT_WEIGHTS.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(toy_assets, "SHIPPED_INIT_WEIGHTS", damaged)
    with pytest.raises(toy_assets.ShippedAssetError, match="not the shipped student init"):
        verified_shipped_init()
    cfg = load_config(None, [f"storage.root={tmp_path}/out", "student.init=shipped", *SMALL_ARCH])
    with pytest.raises(PreflightError, match="student.init=shipped: .*not the shipped"):
        preflight(cfg, "run")


def test_shipped_is_fingerprinted_by_the_towers_bytes(monkeypatch):
    cfg = load_config(None, ["student.init=shipped", *SMALL_ARCH])
    first = train_fingerprint(cfg, "c")
    assert first != train_fingerprint(load_config(None, SMALL_ARCH), "c")
    other = {**shipped_init_record(), "sha256": "0" * 64}
    monkeypatch.setattr("pipeline.train.shipped_init_record", lambda: other)
    assert train_fingerprint(cfg, "c") != first


def test_export_keeps_only_the_image_tower_and_records_its_hash(tmp_path):
    src = tmp_path / "clip"
    src.mkdir()
    tower = load_file(str(SHIPPED_INIT_WEIGHTS))
    save_file({**tower, "text_projection": torch.zeros(4, 4)}, str(src / "model.safetensors"))
    info = {**shipped_init_record(), "pretrained": str(src / "model.safetensors")}
    (src / "teacher.json").write_text(json.dumps(info))
    out = export_image_tower(str(src), tmp_path / "t.safetensors", tmp_path / "t.json")
    written = load_file(str(tmp_path / "t.safetensors"))
    assert set(written) == set(tower)
    assert out["sha256"] == toy_assets.sha256_file(tmp_path / "t.safetensors")
    assert json.loads((tmp_path / "t.json").read_text())["sha256"] == out["sha256"]
    assert "pretrained" not in out  # no path of the machine that made it
    (src / "teacher.json").write_text(json.dumps({**info, "model": "zeroseg-toyclip"}))
    with pytest.raises(SystemExit, match="not a 'zeroseg-toyclip-small'"):
        export_image_tower(str(src), tmp_path / "u.safetensors", tmp_path / "u.json")
