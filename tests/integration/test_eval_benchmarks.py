"""Evaluation on a real-benchmark layout: a tiny PASCAL VOC tree, real local Ray tasks."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.evaluate import run_eval
from tests.eval_fixtures import write_random_checkpoint, write_voc
from zeroseg.config import load_config
from zeroseg.metrics import scores_from_confusion

pytestmark = pytest.mark.integration


def test_voc_under_the_sclip_protocol_scores_synonyms_with_its_sizes(ray_local, tmp_path):
    """eval.protocol=sclip: the class file, the 80 templates, windows of 224 over short side 336
    for the teacher's read-outs too, the argmax rule; chosen baselines only; PAMR on."""
    final = write_random_checkpoint(str(tmp_path / "final"))
    write_voc(str(tmp_path / "bench"), n=1)
    args = [f"storage.root={tmp_path / 'runs'}", f"eval.data_root={tmp_path / 'bench'}"]
    args += ["eval.benchmark=voc", "eval.protocol=sclip", "eval.overlays=0"]
    args += ["eval.baselines=[naclip,all_background]", "eval.pamr=true"]
    metrics = run_eval(load_config(None, args), final, lambda *_: None)
    proto = metrics["protocol"]
    assert metrics["protocol_name"] == "voc_sclip" and proto["pinned"]["family"] == "sclip"
    assert proto["background_rules"] == ["argmax:0.1"] and proto["prob_scale"] == 40.0
    assert (proto["pinned"]["short_side"], proto["pinned"]["window"]) == (336, 224)
    assert proto["teacher_windows"] and proto["pamr"] and len(proto["templates"]) == 80
    assert proto["class_synonyms"][15][:2] == ["person", "man"]
    assert set(metrics["baselines"]) == {"naclip", "all_background"}
    assert 0.0 <= metrics["baselines"]["naclip"]["miou"] <= 1.0


def test_voc_eval_parts_metrics_report_and_resume(ray_local, tmp_path, capsys):
    final = write_random_checkpoint(str(tmp_path / "final"))
    ids = write_voc(str(tmp_path / "bench"), n=5)
    args = [f"storage.root={tmp_path / 'runs'}", f"eval.data_root={tmp_path / 'bench'}"]
    args += ["eval.benchmarks=[voc]", "eval.images_per_task=2", "eval.overlays=2"]
    assert main(["eval", "--checkpoint", final, *args]) == 0
    out = capsys.readouterr().out
    (fp,) = os.listdir(tmp_path / "runs" / "eval")
    edir = tmp_path / "runs" / "eval" / fp / "voc"
    assert f"report at {edir / 'report.md'}" in out and "voc: student mIoU" in out

    metrics = json.loads((edir / "metrics.json").read_text())
    assert metrics["protocol_name"] == metrics["protocol"]["name"] == "voc"
    assert metrics["protocol_version"] == metrics["protocol"]["version"] >= 2
    assert metrics["protocol"]["background_rules"] == ["threshold:0.95"]
    assert metrics["num_images"] == 5 and len(metrics["protocol"]["classes"]) == 21
    # the toy teacher is a ViT: every training-free method is scored by default
    assert set(metrics["baselines"]) == {
        "grid_crop",
        "multigrid_crop",
        "maskclip_dense",
        "dense_raw",
        "sclip",
        "clearclip",
        "naclip",
        "all_background",
    }
    # three tasks of <= 2 images; their sum is what metrics.json reports
    parts = sorted(os.listdir(edir / "parts"))
    assert parts == ["bench-0000.npz", "bench-0001.npz", "bench-0002.npz"]
    total = sum(np.load(io.BytesIO((edir / "parts" / p).read_bytes()))["student"] for p in parts)
    assert total.sum() == 5 * 24 * 31  # every pixel but the ignore column
    names = metrics["protocol"]["classes"]
    assert metrics["student"]["miou"] == pytest.approx(
        scores_from_confusion(total[0], names)["miou"]
    )
    seen = {str(s) for p in parts for s in np.load(edir / "parts" / p)["_ids"]}
    assert seen == set(ids)

    report = (edir / "report.md").read_text()
    assert "| student |" in report and "| maskclip_dense |" in report and "| aeroplane |" in report
    assert "| dense_raw |" in report
    assert "![confusion matrix](confusion.png)" in report
    assert (edir / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    overlays = sorted(os.listdir(edir / "overlays"))
    assert [o.split("-")[0] for o in overlays] == ["best", "worst"]
    assert all(f"overlays/{o}" in report for o in overlays)

    # a rerun after losing one part and the final outputs recomputes only that part
    (edir / "parts" / parts[1]).unlink()
    (edir / "_SUCCESS").unlink()
    logs: list[str] = []
    cfg = load_config(None, args)
    again = run_eval(cfg, final, logs.append)
    assert any("3 tasks (2 already done)" in line for line in logs)
    assert again["student"]["miou"] == pytest.approx(metrics["student"]["miou"])
