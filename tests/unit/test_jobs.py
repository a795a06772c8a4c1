"""Every job config loads and resolves as it always has, the paper-scale configs agree with each
other, and the runtime env keeps the packaged working dir small."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.extract import extract_fingerprint
from pipeline.inputs import InputPlan
from pipeline.submit import STAGE_SECTIONS, config_fingerprint
from pipeline.train import train_fingerprint
from zeroseg.config import Config, config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted(p for p in (ROOT / "jobs").glob("*.yaml") if p.name != "runtime_env.yaml")
RAY_WORKING_DIR_LIMIT = 100 * 1024 * 1024
# What every job resolved to when each file still spelled out its whole recipe. Finished runs
# are found by fingerprints of these values, so a job may be restructured but never resolve
# differently; a deliberate recipe change updates this file in the same commit.
RESOLVED = json.loads((ROOT / "tests" / "resolved_jobs.json").read_text())


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.storage.root


def test_every_job_is_pinned():
    assert sorted(RESOLVED) == [p.name for p in JOBS]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_resolves_as_before(path):
    cfg = load_config(str(path))
    assert config_to_dict(cfg) == RESOLVED[path.name]
    # and so every fingerprint that finds its finished outputs again
    before = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), RESOLVED[path.name]))
    for stage in STAGE_SECTIONS:
        assert config_fingerprint(cfg, stage) == config_fingerprint(before, stage), stage
    assert train_fingerprint(cfg, "cache") == train_fingerprint(before, "cache")
    teacher = {"model": cfg.teacher.model, "pretrained": ""}
    plan = InputPlan("folder", ["/data/a.png"], [None])
    assert extract_fingerprint(cfg, teacher, plan) == extract_fingerprint(before, teacher, plan)


def test_paper_scale_configs_exist_and_share_one_cache():
    names = {p.name for p in JOBS}
    for name in ("extract_in1k_vitl14.yaml", "train_in1k_vitb16.yaml", "run_in1k.yaml"):
        assert name in names
    # everything the cache fingerprint reads must agree, or training would not find the cache
    cache_keys = ("storage", "data", "teacher", "views")
    configs = {
        n: config_to_dict(load_config(str(ROOT / "jobs" / n)))
        for n in ("extract_in1k_vitl14.yaml", "train_in1k_vitb16.yaml", "run_in1k.yaml")
    }
    first = configs["run_in1k.yaml"]
    for name, cfg in configs.items():
        for key in cache_keys:
            assert cfg[key] == first[key], (name, key)
        assert cfg["extract"]["images_per_shard"] == first["extract"]["images_per_shard"], name
        assert cfg["extract"]["precision"] == first["extract"]["precision"], name
        assert cfg["teacher"]["model"] == "ViT-L-14", name
    assert configs["extract_in1k_vitl14.yaml"]["extract"] == first["extract"]
    # and so the cache address itself (the data read from a local copy: no credentials here)
    teacher = {"model": "ViT-L-14", "pretrained": ""}  # the weights are compared above
    plan = InputPlan("folder", ["/data/imagenet/train/n01/a.JPEG"], [None])
    local = ["data.train=/data/imagenet/train"]
    fps = {
        extract_fingerprint(load_config(str(ROOT / "jobs" / n), local), teacher, plan)
        for n in configs
    }
    assert len(fps) == 1
    assert configs["train_in1k_vitb16.yaml"]["train"] == first["train"]
    assert first["student"]["preset"] == "zeroseg-vit-b16"
    paper_eval = config_to_dict(load_config(str(ROOT / "jobs" / "eval_paper.yaml")))["eval"]
    for key in ("benchmarks", "images_per_task", "num_cpus_per_task", "gpus_per_task"):
        assert first["eval"][key] == paper_eval[key], key


def _runtime_env() -> dict:
    return yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())


def test_runtime_env_excludes_history_data_outputs_and_virtualenvs():
    env = _runtime_env()
    assert env["working_dir"] == "."
    excludes = set(env["excludes"])
    for needed in (".git", ".venv", "/runs", "/data", "**/__pycache__", "*.zarr"):
        assert needed in excludes, needed
    # credentials are never shipped with a job
    text = (ROOT / "jobs" / "runtime_env.yaml").read_text()
    for word in ("AWS_SECRET", "AWS_ACCESS_KEY", "RAY_AUTH_TOKEN", "password"):
        assert word not in text


def test_packaged_working_dir_stays_under_rays_limit(tmp_path):
    """Ray's own packager, without .gitignore help, with only the runtime env's excludes."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / "working_dir.zip"
    create_package(
        str(ROOT), target, include_gitignore=False, excludes=list(_runtime_env()["excludes"])
    )
    size = target.stat().st_size
    assert size < RAY_WORKING_DIR_LIMIT, f"{size / 2**20:.1f} MiB"
    names = zipfile.ZipFile(target).namelist()
    assert "pipeline/cli.py" in names and "jobs/run_in1k.yaml" in names
    # top-level data/ is excluded, the library's data package is not
    assert "zeroseg/data/shapes.py" in names
    # other weight files stay out, the teacher the package ships travels with the code
    assert "zeroseg/assets/zeroseg-toyclip.safetensors" in names
    assert "zeroseg/assets/zeroseg-toyclip.json" in names
    for name in names:
        top = name.split("/", 1)[0]
        assert top not in {".git", ".venv", "runs", "data"}, name
        assert "__pycache__" not in name, name


def test_paper_exact_job_switches_every_beyond_the_paper_option_off():
    from zeroseg.models.registry import student_config

    cfg = load_config(str(ROOT / "jobs" / "paper_exact.yaml"))
    t = cfg.train
    assert (t.w_multiscale, t.w_matching, t.w_recon) == (1, 1, 1)
    assert (t.w_dense, t.w_patch, t.w_affinity) == (0, 0, 0) and not t.center_targets
    assert t.mask_ratio == 0.6 and t.multiscale_views == "all"
    assert cfg.eval.student_readout == "segments" and not cfg.student.overrides
    arch = student_config(cfg.student.preset)
    assert arch.get("stem", "patch") == "patch" and not arch.get("patch_proj", False)
    assert arch.get("gumbel", True) and arch.get("hard_assignment", True)
    # the demo differs only in the student and training recipe: the same world, views, cache
    demo = config_to_dict(load_config(str(ROOT / "jobs" / "demo.yaml")))
    mine = config_to_dict(cfg)
    for key in ("world", "teacher", "views"):
        assert mine[key] == demo[key], key
