"""``zeroseg eval --dry-run`` and the eval keys: checked without data, Ray or a checkpoint."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.evaluate import benchmark_root, pick_best_worst
from zeroseg.config import ConfigError, eval_benchmarks, load_config


def test_paper_eval_dry_run_reads_nothing(tmp_path, capsys):
    root = tmp_path / "not-there"
    rc = main(["eval", "--config", "jobs/eval_paper.yaml", "--dry-run", f"eval.data_root={root}"])
    assert rc == 0
    out = capsys.readouterr().out
    plan = json.loads(out.strip().splitlines()[-1])["dry_run"]
    by = {p["benchmark"]: p for p in plan}
    assert list(by) == ["voc", "context", "coco_object"]
    expect = {"voc": (21, "threshold:0.95", 1449), "context": (60, "threshold:0.05", 5105)}
    expect["coco_object"] = (81, "threshold:0.35", 5000)
    for name, (classes, rule, images) in expect.items():
        p = by[name]
        assert (p["classes"], p["background"], p["images"]["bench"]) == (classes, rule, images)
        assert (p["short_side"], p["window"], p["stride"]) == (448, 448, 224)
        assert p["tasks"] == -(-images // 100) and p["gpus_per_task"] == 0.25
    assert by["voc"]["reads"]["labels"] == f"{root}/VOCdevkit/VOC2012/SegmentationClass"
    assert by["coco_object"]["root"] == f"{root}/coco"
    assert "protocol voc" in out and "1449 -> 15 tasks" in out
    assert not root.exists()  # never touched


def test_eval_keys_fail_with_the_dotted_key(capsys):
    with pytest.raises(ConfigError, match="eval.benchmarks: unknown benchmark 'vocc'"):
        load_config("jobs/eval_paper.yaml", ["eval.benchmarks=[vocc]"])
    with pytest.raises(ConfigError, match="eval.data_root: benchmark 'voc' needs it"):
        load_config(None, ["eval.benchmark=voc"])
    with pytest.raises(ConfigError, match="eval.protocol"):
        load_config("jobs/eval_paper.yaml", ["eval.protocol=voc"])
    with pytest.raises(ConfigError, match="eval.data_roots.imagenet"):
        load_config("jobs/eval_paper.yaml", ["eval.data_roots={imagenet: /x}"])
    assert main(["eval", "--config", "jobs/eval_paper.yaml", "--dry-run", "eval.bogus=1"]) == 2
    assert "eval.bogus" in capsys.readouterr().err


def test_single_benchmark_key_and_per_benchmark_roots():
    cfg = load_config(None, ["eval.benchmark=voc", "eval.data_roots={voc: s3://b/voc}"])
    assert eval_benchmarks(cfg.eval) == ["voc"]
    assert benchmark_root(cfg, "voc") == "s3://b/voc"
    default = load_config(None, [])
    assert eval_benchmarks(default.eval) == ["shapes"]
    assert benchmark_root(default, "shapes") == default.data.bench


def test_best_and_worst_images_are_distinct():
    ids = ["a", "b", "c", "d", "e"]
    picks = pick_best_worst(ids, [0.5, 0.9, 0.1, 0.7, 0.3], 4)
    assert picks == [
        ("best", "b", 0.9),
        ("best", "d", 0.7),
        ("worst", "c", 0.1),
        ("worst", "e", 0.3),
    ]
    assert [p[1] for p in pick_best_worst(ids[:1], [0.2], 8)] == ["a"]


def test_quality_dry_run_plans_the_generalisation_split(tmp_path):
    from pipeline.eval_plan import plan_benchmark

    cfg = load_config("jobs/quality.yaml", [f"storage.root={tmp_path}"])
    plan = plan_benchmark(cfg, "shapes")
    assert plan["images"] == {"bench": 200, "val": 100, "generalisation": 200}
    assert plan["tasks"] == 4 + 2 + 4  # 50 images per task
    demo = plan_benchmark(load_config("jobs/demo.yaml", [f"storage.root={tmp_path}"]), "shapes")
    assert "generalisation" not in demo["images"]
