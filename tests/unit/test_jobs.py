"""Every job config loads and resolves as it always has, the jobs are overlays of the paper's
recipe, the paper-scale jobs share one cache config, and the runtime env keeps the packaged
working dir small."""

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
from zeroseg.config import Config, config_files, config_to_dict, load_config, paper_deviations

ROOT = Path(__file__).resolve().parents[2]
JOBS_DIR = ROOT / "jobs"
# Runnable jobs; jobs/recipes/ holds overlays that jobs name in their `defaults:` lists.
JOBS = sorted(p for p in JOBS_DIR.glob("*.yaml") if p.name != "runtime_env.yaml")
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


def test_paper_scale_jobs_build_on_one_cache_config():
    """The IN-1K jobs name the cache config in their defaults and no file after it sets a key
    the cache depends on, so training always finds the cache that extraction wrote."""
    cache = JOBS_DIR / "extract_in1k_vitl14.yaml"
    schedule = JOBS_DIR / "recipes" / "in1k_vitb16.yaml"
    for name in ("train_in1k_vitb16.yaml", "run_in1k.yaml"):
        files = config_files(JOBS_DIR / name)
        assert files[0] == JOBS_DIR / "paper_exact.yaml", name  # the paper's recipe first
        assert cache in files and schedule in files, name
        for later in files[files.index(cache) + 1 :]:
            raw = yaml.safe_load(later.read_text())
            assert not {"storage", "data", "world", "teacher", "views"} & set(raw), later
            assert not {"images_per_shard", "precision"} & set(raw.get("extract", {})), later
    assert config_files(cache) == [cache]
    assert load_config(str(cache)).teacher.model == "ViT-L-14"
    # and so the cache address itself (the data read from a local copy: no credentials here)
    teacher = {"model": "ViT-L-14", "pretrained": ""}  # the weights are compared above
    plan = InputPlan("folder", ["/data/imagenet/train/n01/a.JPEG"], [None])
    local = ["data.train=/data/imagenet/train"]
    names = ("extract_in1k_vitl14.yaml", "train_in1k_vitb16.yaml", "run_in1k.yaml")
    fps = {extract_fingerprint(load_config(str(JOBS_DIR / n), local), teacher, plan) for n in names}
    assert len(fps) == 1
    # the whole run evaluates what the paper's evaluation job does
    assert JOBS_DIR / "eval_paper.yaml" in config_files(JOBS_DIR / "run_in1k.yaml")
    assert load_config(str(JOBS_DIR / "run_in1k.yaml")).student.preset == "zeroseg-vit-b16"


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
    from zeroseg.student_config import student_config

    cfg = load_config(str(JOBS_DIR / "paper_exact.yaml"))
    assert paper_deviations(cfg) == {}
    assert config_files(JOBS_DIR / "paper_exact.yaml") == [JOBS_DIR / "paper_exact.yaml"]
    t = cfg.train
    assert (t.w_multiscale, t.w_matching, t.w_recon) == (1, 1, 1)
    assert (t.w_dense, t.w_patch, t.w_affinity) == (0, 0, 0) and not t.center_targets
    assert t.mask_ratio == 0.6 and t.multiscale_views == "all"
    assert cfg.eval.student_readout == "segments" and not cfg.student.overrides
    arch = student_config(cfg.student.preset)
    assert arch.get("stem", "patch") == "patch" and not arch.get("patch_proj", False)
    assert arch.get("gumbel", True) and arch.get("hard_assignment", True)


def test_shapes_jobs_are_the_paper_plus_one_overlay():
    """demo = paper_exact + recipes/beyond_paper; quality and ablation build on the demo. The
    overlay holds every beyond-the-paper setting: what the demo adds to the paper is in it."""
    overlay = JOBS_DIR / "recipes" / "beyond_paper.yaml"
    paper = JOBS_DIR / "paper_exact.yaml"
    demo = JOBS_DIR / "demo.yaml"
    assert config_files(demo) == [paper, overlay, demo]
    quality = JOBS_DIR / "quality.yaml"
    assert config_files(quality) == [paper, overlay, demo, quality]
    ablation = JOBS_DIR / "ablation.yaml"  # the ablations vary the quality job's student
    assert config_files(ablation) == [paper, overlay, demo, quality, ablation]
    raw = yaml.safe_load(overlay.read_text())
    assert set(raw) == {"student", "train", "eval"}  # a recipe: no world, teacher or cache
    deviations = paper_deviations(load_config(str(demo)))
    assert {k for k in deviations if not k.startswith("student.")} == {
        f"{section}.{key}" for section in ("train", "eval") for key in raw[section]
    }
    assert deviations["student.stem"] == "teacher"
    # the demo differs from the paper only in the overlay's sections and its own name
    d, p = (config_to_dict(load_config(str(f))) for f in (demo, paper))
    for key in ("world", "teacher", "views", "extract", "ray", "ablation"):
        assert d[key] == p[key], key
    assert load_config([paper, overlay], ["storage.root=runs/demo", "train.name=demo"]) == (
        load_config(str(demo))
    )


def test_the_cli_takes_one_job_file(capsys):
    from pipeline.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--config", "jobs/demo.yaml", "train.epochs=1"])
    assert args.config == "jobs/demo.yaml" and args.overrides == ["train.epochs=1"]
    # a second file is refused, not silently preferred: a job composes through `defaults:`
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "-c", "jobs/paper_exact.yaml", "-c", "jobs/demo.yaml"])
    assert "defaults:" in capsys.readouterr().err
