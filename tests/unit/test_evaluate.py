"""The eval stage's bookkeeping without Ray or models: which splits are scored, how the
generalisation split is scored (with the rules chosen on val, for every method), and what the
summary, the results table and the report make of it."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from pipeline.evaluate import GENERALISATION, finalize_eval, plan_splits
from pipeline.run import ensure_world, format_table, summarize
from pipeline.runner import StageDir
from zeroseg import storage
from zeroseg.config import ConfigError, load_config
from zeroseg.predict import BASELINES, METHODS
from zeroseg.report import render_report

CLASSES = ["background", "thing"]
RULES = ["prompt", "threshold:0.5"]
PERFECT = [[10, 0], [0, 10]]  # mIoU 1
WRONG = [[0, 10], [10, 0]]  # mIoU 0
HALF = [[5, 5], [0, 10]]  # IoU 0.5 and 2/3


def _write_part(stage: StageDir, split: str, conf: dict[str, list], ids: list[str]) -> None:
    arrays = {m: np.array(conf[m], np.int64) for m in METHODS}
    arrays["_student_miou"] = np.zeros((len(ids), len(RULES)))
    arrays["_ids"] = np.array(ids, dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.write_bytes(stage.path("parts", f"{split}-0000.npz"), buf.getvalue())


def _protocol() -> dict:
    return {
        "name": "shapes",
        "version": 2,
        "classes": CLASSES,
        "background_rules": RULES,
        "tune_on_val": True,
        "prob_scale": 100.0,
        "input_size": "the student's",
        "methods": list(METHODS),
    }


@pytest.fixture
def scored(tmp_path):
    """metrics.json of a finished shapes eval whose generalisation split would prefer another
    rule than val for every method but dense_raw (whose val prefers the other rule)."""
    cfg = load_config(None, [f"storage.root={tmp_path}", "eval.overlays=0"])
    stage = StageDir(str(tmp_path / "eval"), marker_dir="parts")
    val_pick = {m: [PERFECT, WRONG] for m in METHODS}
    val_pick["dense_raw"] = [WRONG, PERFECT]
    _write_part(stage, "bench", {m: [HALF, PERFECT] for m in METHODS}, ["b0", "b1"])
    _write_part(stage, "val", val_pick, ["v0"])
    _write_part(stage, GENERALISATION, {m: [HALF, PERFECT] for m in METHODS}, ["g0", "g1", "g2"])
    units = [
        ("bench", 0, ["b0", "b1"]),
        ("val", 0, ["v0"]),
        (GENERALISATION, 0, ["g0", "g1", "g2"]),
    ]
    roots = {"bench": "b", "val": "v", GENERALISATION: "g"}
    metrics = finalize_eval(
        stage, units, 50, CLASSES, _protocol(), cfg, "final", 1.0, lambda _: None, "shapes", roots
    )
    return cfg, stage, metrics


def test_generalisation_split_is_scored_by_every_method_with_its_val_rule(scored):
    _, stage, metrics = scored
    assert metrics["num_generalisation_images"] == 3
    assert set(metrics["baselines"]) == set(BASELINES)
    half = (0.5 + 10 / 15) / 2
    for name in METHODS:
        m = metrics["student"] if name == "student" else metrics["baselines"][name]
        # the rule comes from val alone: rule 1 would be perfect on the generalisation split
        want_rule = RULES[1] if name == "dense_raw" else RULES[0]
        assert m["rule"] == want_rule, name
        want = 1.0 if name == "dense_raw" else half
        assert m[GENERALISATION]["miou"] == pytest.approx(want), name
        assert m["miou"] == pytest.approx(want), name  # the benchmark split: the same rule
    assert storage.read_json(stage.path("metrics.json"))["student"]["rule"] == "prompt"


def test_summary_table_and_report_show_the_generalisation_split(scored):
    _, _, metrics = scored
    teacher = {"pretrained": "", "model": "zeroseg-toyclip"}
    summary = summarize(metrics, teacher, "final", {"total": 1.0}, job="no-such-job")
    gen = summary[GENERALISATION]
    assert gen["num_images"] == 3 and set(gen["baselines_miou"]) == set(BASELINES)
    assert gen["student_retention"] == pytest.approx(1.0)
    assert gen["baselines_miou"]["dense_raw"] == pytest.approx(1.0)
    table = format_table(summary)
    assert "generalisation split (3 scenes" in table
    gen_rows = table.split("generalisation split")[1].splitlines()
    assert any(r.split()[:2] == ["dense_raw", "100.0%"] for r in gen_rows)
    report = render_report(metrics, "confusion.png")
    assert "## Generalisation split (3 images)" in report
    assert "| dense_raw | 100.0 | 100.0 |" in report


def test_the_generalisation_split_is_scored_whenever_it_exists(tmp_path):
    cfg = load_config(None, [f"storage.root={tmp_path}"])
    assert plan_splits(cfg, "shapes", tune=True) == {"bench": cfg.data.bench, "val": cfg.data.val}
    storage.write_json(storage.join(cfg.data.generalisation, "classes.json"), CLASSES)
    assert plan_splits(cfg, "shapes", tune=False) == {
        "bench": cfg.data.bench,
        GENERALISATION: cfg.data.generalisation,
    }
    voc = load_config(None, [f"storage.root={tmp_path}", f"eval.data_root={tmp_path}"])
    assert GENERALISATION not in plan_splits(voc, "voc", tune=False)


def test_ensure_world_draws_the_generalisation_split_from_the_held_out_world(tmp_path):
    from PIL import Image

    from zeroseg.data.shapes import generalisation_world

    sizes = ["world.n_train=2", "world.n_val=2", "world.n_bench=2"]
    cfg = load_config(
        None,
        [f"storage.root={tmp_path}", *sizes, "world.n_generalisation=2"]
        + ["world.generalisation_image_size=48"],
    )
    ensure_world(cfg, log=lambda _: None)
    meta = storage.read_json(storage.join(cfg.data.generalisation, "world.json"))
    want = json.loads(json.dumps(generalisation_world(48).to_dict()))
    assert meta["n"] == 2 and meta["settings"] == want
    images = sorted(os.listdir(os.path.join(cfg.data.generalisation, "images")))
    with Image.open(os.path.join(cfg.data.generalisation, "images", images[0])) as im:
        assert im.size == (48, 48)
    ensure_world(cfg, log=lambda _: None)  # the same settings: reused
    without = load_config(None, [f"storage.root={tmp_path / 'none'}", *sizes])
    ensure_world(without, log=lambda _: None)
    assert not os.path.exists(without.data.generalisation)


def test_world_object_sizes_draw_the_splits_and_a_split_of_other_sizes_is_refused(tmp_path):
    sizes = ["world.n_train=3", "world.n_val=2", "world.n_bench=2"]
    big = load_config(None, [f"storage.root={tmp_path}", *sizes, "world.object_sizes=[0.5,0.6]"])
    ensure_world(big, log=lambda _: None)
    for split in (big.data.train, big.data.val, big.data.bench):
        meta = storage.read_json(storage.join(split, "world.json"))
        assert meta["settings"]["size_range"] == [0.5, 0.6]
    # the world's own range on the same folders: the finished splits are not silently reused
    default = load_config(None, [f"storage.root={tmp_path}", *sizes])
    with pytest.raises(ValueError, match="other world settings"):
        ensure_world(default, log=lambda _: None)


@pytest.mark.parametrize("sizes", ["[0.5]", "[0.6,0.5]", "[0,0.5]", "[0.31,0.37]"])
def test_impossible_object_sizes_are_named_before_any_work(sizes):
    with pytest.raises(ConfigError, match="world[.]object_sizes"):
        load_config(None, [f"world.object_sizes={sizes}"])


def test_seeds_are_single_seed_runs_summarised_by_mean_and_spread(scored):
    import copy

    from pipeline.run import seed_config, seed_summary

    cfg, _, metrics = scored
    seeded = load_config(None, ["train.seeds=[3,1,2]"])
    one = seed_config(seeded, 1, baselines=False)
    assert (
        one.train.seed == 1 and one.train.seeds == [] and one.eval.baselines == ["all_background"]
    )
    # the seed's run folder is the one `train.seed=1` alone gives
    from pipeline.train import train_fingerprint

    plain = load_config(None, ["train.seed=1"])
    assert train_fingerprint(one, "c") == train_fingerprint(plain, "c")
    assert seed_config(seeded, 3, baselines=True).eval.baselines == seeded.eval.baselines
    per_seed = {}
    for seed, miou in ((3, 0.30), (1, 0.34), (2, 0.32)):
        m = copy.deepcopy(metrics)
        m["student"]["miou"] = miou
        m["student"][GENERALISATION]["miou"] = miou - 0.1
        per_seed[seed] = m
    over = seed_summary(per_seed)
    assert over["seeds"] == [3, 1, 2]
    assert over["student_miou"]["per_seed"] == [0.30, 0.34, 0.32]
    assert over["student_miou"]["mean"] == pytest.approx(0.32)
    assert over["student_miou"]["std"] == pytest.approx(0.02)
    assert over["generalisation_student_miou"]["min"] == pytest.approx(0.20)
    teacher = {"pretrained": "", "model": "zeroseg-toyclip"}
    summary = summarize(per_seed[3], teacher, "final", {"total": 1.0}, job="no-such-job")
    summary["seeds"] = over
    table = format_table(summary)
    assert "student (3 seeds)   32.0% mean, std 2.0, range 30.0-34.0" in table
    assert "(seeds 3, 1, 2: 30.0, 34.0, 32.0; the row above is seed 3)" in table


def test_seeds_must_be_distinct_and_non_negative():
    with pytest.raises(ConfigError, match="train.seeds"):
        load_config(None, ["train.seeds=[1,1]"])
    with pytest.raises(ConfigError, match="train.seeds"):
        load_config(None, ["train.seeds=[-1]"])
