"""Which config changes invalidate which stage: training settings keep the teacher cache, the
teacher and the views re-extract (and so retrain)."""

from __future__ import annotations

from pipeline.extract import extract_fingerprint
from pipeline.inputs import InputPlan
from pipeline.train import train_fingerprint
from zeroseg.config import load_config

TEACHER = {"model": "zeroseg-toyclip", "pretrained": "openai"}
PLAN = InputPlan("folder", ["/d/a.png", "/d/b.png"], [None, None])


def _fps(overrides: list[str], teacher: dict = TEACHER) -> tuple[str, str]:
    cfg = load_config("jobs/demo.yaml", overrides)
    cache = extract_fingerprint(cfg, teacher, PLAN)
    return cache, train_fingerprint(cfg, cache)


def test_training_settings_keep_the_cache_and_change_the_run():
    cache, run = _fps([])
    # (a student without per-patch projections is read out through its segments only)
    small = ["student.preset=student-small", "eval.student_readout=segments"]
    for overrides in (["train.epochs=3"], ["train.lr=1e-3"], small):
        new_cache, new_run = _fps(overrides)
        assert new_cache == cache, overrides
        assert new_run != run, overrides


def test_teacher_and_views_change_the_cache_and_so_the_run():
    cache, run = _fps([])
    for override in ("views.levels=[1,2]", "views.crop_size=96", "teacher.normalize=false"):
        new_cache, new_run = _fps([override])
        assert new_cache != cache, override
        assert new_run != run, override
    other_teacher = {"model": "ViT-S-32", "pretrained": "openai"}
    new_cache, new_run = _fps([], other_teacher)
    assert new_cache != cache and new_run != run
