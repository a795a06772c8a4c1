"""Training keys: validation, what the run fingerprint ignores, MAE lr scaling, and the
paper-scale dry run (no Ray, no GPU, no cache)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.runner import fingerprint
from pipeline.train import train_fingerprint
from zeroseg.config import ConfigError, config_to_dict, load_config
from zeroseg.train_step import lr_at, peak_lr

OPERATIONAL = [
    "train.name=other",
    "train.cpus_per_worker=4",
    "train.use_gpu=true",
    "train.resource_label=train_worker",
    "train.checkpoint_every_steps=7",
    "train.checkpoint_every_minutes=15",
    "train.checkpoints_to_keep=5",
    "train.max_failures=-1",
    "train.reader=stream",
    "train.stream_above_mb=1",
    "train.shuffle_buffer=99",
    "train.prefetch_batches=9",
    "train.log_every_steps=3",
]


def test_operational_keys_leave_the_fingerprint_alone():
    base = train_fingerprint(load_config("jobs/demo.yaml"), "cachefp")
    for override in OPERATIONAL:
        assert train_fingerprint(load_config("jobs/demo.yaml", [override]), "cachefp") == base
    assert train_fingerprint(load_config("jobs/demo.yaml", OPERATIONAL), "cachefp") == base
    for recipe in ("train.lr_scaling=mae", "train.precision=fp32", "train.seed=1"):
        assert train_fingerprint(load_config("jobs/demo.yaml", [recipe]), "cachefp") != base


def test_the_worker_count_is_part_of_the_run():
    """Each rank's batch and row slice round down with the world size, so another worker count
    trains with another effective batch and data order: it must not resume the old run."""
    base = train_fingerprint(load_config("jobs/demo.yaml"), "cachefp")
    two = train_fingerprint(load_config("jobs/demo.yaml", ["train.num_workers=2"]), "cachefp")
    three = train_fingerprint(load_config("jobs/demo.yaml", ["train.num_workers=3"]), "cachefp")
    assert len({base, two, three}) == 3


def test_existing_configs_keep_their_run_folder():
    """New keys at their defaults do not move the fingerprint of configs written before them.
    (jobs/quality.yaml sets student.init, train.dense_levels and train.augment, so its recipe,
    and with it its run folder, changed on purpose; jobs/ablation.yaml builds on it.)"""
    for job in ("jobs/demo.yaml", "jobs/paper_exact.yaml"):
        cfg = load_config(job)
        t = config_to_dict(cfg)["train"]
        for k in ("name", "num_workers", "cpus_per_worker", "use_gpu", "checkpoint_every_steps"):
            t.pop(k)
        old_keys = set(t) - {
            "lr_scaling",
            "precision",
            "checkpoint_every_minutes",
            "checkpoints_to_keep",
            "max_failures",
            "resource_label",
            "reader",
            "stream_above_mb",
            "shuffle_buffer",
            "prefetch_batches",
            "log_every_steps",
            "seeds",
            "dense_levels",
            "augment",
            "w_region",
            "affinity_stride",
        }
        student = {k: v for k, v in config_to_dict(cfg)["student"].items() if k != "init"}
        old = fingerprint(
            {
                "cache": "c",
                "student": student,
                "train": {k: t[k] for k in old_keys},
            }
        )
        assert train_fingerprint(cfg, "c") == old, job


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr_scaling=linear", "train.lr_scaling"),
        ("train.precision=fp16", "train.precision"),
        ("train.reader=disk", "train.reader"),
        ("train.shuffle_buffer=0", "train.shuffle_buffer"),
        ("train.prefetch_batches=0", "train.prefetch_batches"),
        ("train.checkpoint_every_minutes=-1", "train.checkpoint_every_minutes"),
        ("train.max_failures=-2", "train.max_failures"),
        ("train.checkpoint_every_steps=0", "train.checkpoint_every_steps"),
        ("train.resource_labl=x", "train.resource_labl"),
        ("train.augment=rotate", "train.augment"),
        ("train.affinity_stride=3", "train.affinity_stride"),
    ],
)
def test_bad_train_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", "[.]")):
        load_config("jobs/demo.yaml", [override])


def test_mae_lr_scaling():
    assert peak_lr(1.5e-4, "mae", 4096) == pytest.approx(2.4e-3)
    assert peak_lr(1.5e-3, "none", 4096) == 1.5e-3
    assert lr_at(0, 100, 10, 2.4e-3) == pytest.approx(2.4e-4)
    assert lr_at(9, 100, 10, 2.4e-3) == pytest.approx(2.4e-3)
    assert lr_at(100, 100, 10, 2.4e-3) == pytest.approx(0.0)


def test_paper_config_loads():
    cfg = load_config("jobs/train_in1k_vitb16.yaml")
    assert cfg.teacher.model == "ViT-L-14" and cfg.student.preset == "zeroseg-vit-b16"
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.batch_size) == (80, 20, 4096)
    assert cfg.train.lr == 1.5e-4 and cfg.train.lr_scaling == "mae"


def test_paper_scale_dry_run_without_ray_gpu_or_cache():
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "rc = main(['train', '--config', 'jobs/train_in1k_vitb16.yaml', '--dry-run'])\n"
        "assert 'ray' not in sys.modules, 'the dry run must not start Ray'\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    est = json.loads(out.stdout.strip().splitlines()[-1])["dry_run"]
    assert est["embed_dim"] == 768  # from the ViT-L-14 architecture config, no weights
    assert 180e6 < est["params"] < 190e6  # ViT-B/16 encoder + decoder + grouping head
    assert est["micro_batch_per_worker"] * est["workers"] == est["global_batch"] == 4096
    assert est["peak_lr"] == pytest.approx(2.4e-3)
    assert est["steps_per_epoch"] == 1281167 // 4096
    assert est["total_steps"] == est["steps_per_epoch"] * 80
    assert est["optimizer_state_bytes"] == 8 * est["params"]
    # forward+backward is about 3x the forward; the paper's 40-50 GMACs per image
    assert 2.5 < est["flops_per_worker_step"] / est["forward_flops_per_worker_step"] < 3.5
    assert 80e9 < est["flops_per_image"] < 100e9
    assert 0 < est["activation_bytes"] < est["memory_per_worker_bytes"] < 80 * 2**30
    assert est["est_step_seconds"] == pytest.approx(
        est["flops_per_worker_step"] / (312e12 * 0.4), rel=1e-6
    )
    assert "memory per worker" in out.stdout and "s/step" in out.stdout


def test_dry_run_of_an_unknown_teacher_names_the_key(tmp_path):
    from pipeline.cli import main

    assert main(["train", "--config", "jobs/demo.yaml", "--dry-run", "teacher.model=nope"]) == 2


def test_a_student_init_is_fingerprinted_by_its_file_not_its_spelling(tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mae").mkdir()
    (tmp_path / "mae" / "encoder.safetensors").write_bytes(b"one")
    rel = load_config(None, ["student.init=mae/encoder.safetensors"])
    absolute = load_config(None, [f"student.init={tmp_path}/mae/encoder.safetensors"])
    first = train_fingerprint(rel, "c")
    assert first == train_fingerprint(absolute, "c")
    assert first != train_fingerprint(load_config(None, []), "c")
    (tmp_path / "mae" / "encoder.safetensors").write_bytes(b"other weights")  # re-pretrained
    os.utime(tmp_path / "mae" / "encoder.safetensors", (1, 1))
    assert train_fingerprint(rel, "c") != first
