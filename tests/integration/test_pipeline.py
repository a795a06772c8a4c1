"""The three stages on a real local Ray with a tiny shapes world, end to end."""

from __future__ import annotations

import glob
import io
import json
import os
import shlex

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image

from pipeline.cli import main
from pipeline.run import ensure_world, run_all
from tests.conftest import tiny_overrides
from zeroseg import storage
from zeroseg.config import BASELINE_METHODS, load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory, teacher_cache):
    root = str(tmp_path_factory.mktemp("run"))
    cfg = load_config(
        "jobs/demo.yaml", [*tiny_overrides(root, teacher_cache), "world.n_generalisation=6"]
    )
    ensure_world(cfg)
    train_dir = cfg.data.train
    # bad inputs next to good ones: recorded with a reason, never a crash
    with open(os.path.join(train_dir, "images", "zz_empty.png"), "wb"):
        pass
    with open(os.path.join(train_dir, "images", "zz_corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    Image.new("RGB", (2, 2)).save(os.path.join(train_dir, "images", "zz_tiny.png"))
    logs: list[str] = []
    summary = run_all(cfg, log=logs.append)
    return cfg, summary, logs


def _extract_dir(cfg) -> str:
    (fp,) = os.listdir(os.path.join(cfg.storage.root, "extract"))
    return os.path.join(cfg.storage.root, "extract", fp)


def test_summary_has_student_and_all_baselines(demo):
    cfg, summary, _ = demo
    on_disk = json.loads(open(os.path.join(cfg.storage.root, "summary.json")).read())
    assert on_disk["student"]["miou"] == pytest.approx(summary["student"]["miou"])
    # the shipped teacher is a ViT: every training-free method is scored
    assert set(summary["baselines"]) == set(BASELINE_METHODS)
    for entry in [summary["student"], *summary["baselines"].values()]:
        assert 0.0 <= entry["miou"] <= 1.0
    assert set(summary["student"]["per_class"]) >= {"background", "circle"}
    assert {"single", "cell"} <= set(summary["teacher_accuracy"])
    assert summary["checkpoint"].endswith("final")
    assert {"extract", "train", "eval", "total"} <= set(summary["timings_s"])
    # all-background floor: background IoU = background pixel share, 0 elsewhere
    floor = summary["baselines"]["all_background"]["per_class"]
    assert 0.5 < floor["background"] < 1.0
    assert all(v in (0.0, None) for k, v in floor.items() if k != "background")


def test_cache_layout_and_bad_inputs(demo):
    cfg, _, _ = demo
    d = _extract_dir(cfg)
    for name in ("manifest.json", "index.parquet", "plan.json", "config.json", "_SUCCESS"):
        assert os.path.exists(os.path.join(d, name)), name
    manifest = json.load(open(os.path.join(d, "manifest.json")))
    n = cfg.world.n_train + 3
    assert manifest["num_images"] == n and manifest["num_views"] == 30
    assert manifest["num_ok"] == cfg.world.n_train
    assert manifest["skip_reasons"] == {"empty_file": 1, "corrupt": 1, "too_small": 1}
    assert manifest["code"]["zeroseg"]
    root = zarr.open_group(os.path.join(d, "cache.zarr"), mode="r")
    emb = np.asarray(root["embeddings"][:])
    assert emb.shape == (n, 30, manifest["teacher"]["embed_dim"]) and emb.dtype == np.float16
    assert root["pixels"].shape == (n, 64, 64, 3)
    index = pq.read_table(os.path.join(d, "index.parquet")).to_pylist()
    assert [r["row"] for r in index] == list(range(n))
    status = {os.path.basename(r["key"]): r["status"] for r in index}
    assert status["zz_empty.png"] == "skipped:empty_file"
    assert status["zz_corrupt.jpg"] == "skipped:corrupt"
    assert status["zz_tiny.png"] == "skipped:too_small"
    ok_rows = [r["row"] for r in index if r["status"] == "ok"]
    norms = np.linalg.norm(emb[ok_rows].astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # L2-normalised teacher space
    bad_rows = [r["row"] for r in index if r["status"] != "ok"]
    assert not emb[bad_rows].any()
    # one marker per shard, written with timings
    shards = sorted(os.listdir(os.path.join(d, "shards")))
    assert len(shards) == manifest["num_shards"] == -(-n // 16)
    marker = json.load(open(os.path.join(d, "shards", shards[0])))
    assert {"read", "crop", "infer", "write"} <= set(marker["seconds"])


def test_train_outputs_and_eval_outputs(demo):
    cfg, summary, _ = demo
    final = summary["checkpoint"]
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "loss_curve.png"):
        assert os.path.exists(os.path.join(final, name)), name
    conf = json.load(open(os.path.join(final, "config.json")))
    assert conf["teacher"]["model"] == "zeroseg-toyclip" and conf["code"]["zeroseg"]
    rows = [json.loads(line) for line in open(os.path.join(final, "metrics.jsonl"))]
    assert rows and {"loss_multiscale", "loss_matching", "loss_recon"} <= set(rows[-1])
    assert os.path.exists(os.path.join(os.path.dirname(final), "config.json"))
    (efp,) = os.listdir(os.path.join(cfg.storage.root, "eval"))
    edir = os.path.join(cfg.storage.root, "eval", efp, "shapes")
    metrics = json.load(open(os.path.join(edir, "metrics.json")))
    assert metrics["protocol"]["version"] >= 1
    assert len(os.listdir(os.path.join(edir, "overlays"))) == cfg.eval.overlays
    parts = os.listdir(os.path.join(edir, "parts"))
    n_parts = sum(
        -(-n // 4) for n in (cfg.world.n_bench, cfg.world.n_val, cfg.world.n_generalisation)
    )
    assert len(parts) == n_parts
    assert os.path.exists(os.path.join(edir, "config.json"))


def test_generalisation_split_is_scored_with_the_val_rule(demo):
    from zeroseg.data.shapes import generalisation_world

    cfg, summary, _ = demo
    gen_dir = cfg.data.generalisation
    with Image.open(storage.list_files(os.path.join(gen_dir, "images"))[0]) as im:
        assert im.size == (cfg.world.generalisation_image_size,) * 2  # another resolution
    meta = json.load(open(os.path.join(gen_dir, "world.json")))
    held_out = generalisation_world(cfg.world.generalisation_image_size).to_dict()
    assert json.loads(json.dumps(meta["settings"])) == json.loads(json.dumps(held_out))
    gen = summary["generalisation"]
    assert gen["num_images"] == cfg.world.n_generalisation
    assert gen["student_retention"] == pytest.approx(
        gen["student_miou"] / summary["student"]["miou"]
    )
    assert set(gen["baselines_miou"]) == set(summary["baselines"])
    (efp,) = os.listdir(os.path.join(cfg.storage.root, "eval"))
    metrics = json.load(open(os.path.join(cfg.storage.root, "eval", efp, "shapes", "metrics.json")))
    # the split never picks its own rule: every method is scored with the one chosen on val
    assert metrics["num_generalisation_images"] == 6
    for m in [metrics["student"], *metrics["baselines"].values()]:
        assert "generalisation" in m


def test_ablation_trains_every_variant_on_one_cache(demo, capsys):
    """Two recipes and an alias of one of them (the table's verdict on the paper's four-way
    ordering is checked on known rows in tests/unit/test_ablation_table.py)."""
    cfg, _, _ = demo
    args = [
        "ablate",
        "--config",
        "jobs/demo.yaml",
        *tiny_overrides(cfg.storage.root, cfg.teacher.cache_dir),
        "world.n_generalisation=6",
        "train.max_steps=3",
        "ablation.variants.both=[]",
        "ablation.variants.base=[train.multiscale_views=global,train.w_matching=0]",
        # the demo's own mask ratio: the same recipe as "both", so not trained again
        f"ablation.variants.same_mask=[train.mask_ratio={cfg.train.mask_ratio}]",
        # only the read-out differs from "both": its checkpoint is scored again, not retrained
        "ablation.variants.readout_segments=[eval.student_readout=segments]",
    ]
    same = "same_mask"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("teacher cache extracted once") == 1
    assert out.count("reusing cache") == 3
    assert "'same_mask': the same recipe as 'both'" in out
    assert "'readout_segments': evaluates 'both''s checkpoint" in out
    assert len(os.listdir(os.path.join(cfg.storage.root, "extract"))) == 1  # one cache
    result = json.load(open(os.path.join(cfg.storage.root, "ablation", "ablation.json")))
    names = ["both", "base", "same_mask", "readout_segments"]
    assert result["order"] == names and set(result["variants"]) == set(names)
    assert result["variants"][same]["same_as"] == "both"
    assert result["variants"][same]["miou"] == result["variants"]["both"]["miou"]
    assert result["variants"]["base"]["checkpoint"] != result["variants"]["both"]["checkpoint"]
    for row in result["variants"].values():
        assert 0.0 <= row["miou"] <= 1.0 and row["samples_per_s"] > 0
    assert result["paper_orderings"] == {}  # no family of the paper's variants was run whole
    readout = result["variants"]["readout_segments"]
    assert readout["checkpoint_of"] == "both"
    assert readout["checkpoint"] == result["variants"]["both"]["checkpoint"]
    assert result["segment_readout"] == {
        "variant": "readout_segments",
        "baseline": "grid_crop",
        "miou": readout["miou"],
        "bar": result["baselines"]["grid_crop"],
        "beats": readout["miou"] > result["baselines"]["grid_crop"],
    }
    assert set(result["baselines"]) >= {"grid_crop", "all_background"}
    table = open(os.path.join(cfg.storage.root, "ablation", "ablation.md")).read()
    assert "(same run as both)" in table and "Paper ordering" not in table
    assert table.index("| both |") < table.index("| base |") < table.index("| same_mask |")
    assert (
        "| readout_segments | `eval.student_readout=segments` (evaluates both's checkpoint)"
        in table
    )
    assert "- The segment read-out alone (readout_segments, " in table
    # every distinct training is its own run, and a read-out variant is none
    runs = [r.split("-")[1] for r in os.listdir(os.path.join(cfg.storage.root, "train"))]
    assert sorted(r for r in runs if r in names) == ["base", "both"]


def test_scaling_extracts_each_world_size_once_and_reuses_its_cache(
    ray_local, tmp_path, teacher_cache, capsys
):
    """The scaling job's shape on a tiny world: two world sizes, one of them at two epoch
    counts. Each size is extracted once; its variants train on that cache, and the table, the
    scaling verdict and the plot come out."""
    root = str(tmp_path)
    args = [
        "ablate",
        "--config",
        "jobs/demo.yaml",
        *tiny_overrides(root, teacher_cache),
        "world.n_generalisation=0",
        "eval.overlays=0",
        "eval.baselines=[grid_crop]",
        "data.train=${storage.root}/data/train-${world.n_train}",
        "ablation.variants.scenes_1x=[]",
        "ablation.variants.scenes_1x_epochs_2x=[train.epochs=4]",
        "ablation.variants.scenes_2x=[world.n_train=80]",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("teacher cache extracted once") == 2
    assert "extracted once for 40 scenes" in out and "extracted once for 80 scenes" in out
    assert out.count("reusing cache") == 3
    caches = os.listdir(os.path.join(root, "extract"))
    assert len(caches) == 2  # one per world size, none for the second epoch count
    result = json.load(open(os.path.join(root, "ablation", "ablation.json")))
    rows = result["variants"]
    assert rows["scenes_1x"]["cache"] == rows["scenes_1x_epochs_2x"]["cache"]
    assert rows["scenes_2x"]["cache"] != rows["scenes_1x"]["cache"]
    assert {os.path.basename(r["cache"]) for r in rows.values()} == set(caches)
    assert rows["scenes_1x"]["samples_seen"] == 10 * 8  # 40 scenes / batch 8 x 2 epochs
    assert rows["scenes_1x_epochs_2x"]["samples_seen"] == 2 * rows["scenes_1x"]["samples_seen"]
    assert rows["scenes_2x"]["samples_seen"] == 2 * rows["scenes_1x"]["samples_seen"]
    checks = result["scaling"]["checks"]  # one chain of scenes, one of epochs
    assert sorted(checks) == [
        "epochs at scenes=40: scenes_1x -> scenes_1x_epochs_2x",
        "scenes at epochs=2: scenes_1x -> scenes_2x",
    ]
    png = open(os.path.join(root, "ablation", "scaling.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    table = open(os.path.join(root, "ablation", "ablation.md")).read()
    assert all(os.path.join(root, "extract", c) in table for c in caches)
    # a rerun finds every variant done: nothing trains again, the table keeps its numbers
    assert main(args) == 0
    again = json.load(open(os.path.join(root, "ablation", "ablation.json")))["variants"]
    assert len(os.listdir(os.path.join(root, "extract"))) == 2
    for name, row in rows.items():
        assert again[name]["checkpoint"] == row["checkpoint"]
        assert again[name]["miou"] == row["miou"]
        assert again[name]["train_s"] == row["train_s"] > 0  # the run's own, not the rerun's


def test_ablation_refuses_a_variant_that_changes_the_cache(tmp_path, capsys):
    args = [
        "ablate",
        "--config",
        "jobs/demo.yaml",
        f"storage.root={tmp_path}",
        "ablation.variants.bad=[views.crop_size=32]",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ablation.variants.bad" in err and "views.crop_size" in err
    assert not os.listdir(tmp_path)  # nothing was started


def test_a_split_from_other_world_settings_is_not_reused(demo):
    cfg, _, _ = demo
    overrides = [
        *tiny_overrides(cfg.storage.root, cfg.teacher.cache_dir),
        "world.n_generalisation=6",
    ]
    ensure_world(load_config("jobs/demo.yaml", overrides))  # same settings: reused silently
    other = load_config("jobs/demo.yaml", [*overrides, "world.n_train=41"])
    with pytest.raises(ValueError, match="train split .* other world settings .*n"):
        ensure_world(other)


def test_rerun_skips_every_finished_stage(demo):
    cfg, summary, _ = demo
    logs: list[str] = []
    again = run_all(cfg, log=logs.append)
    text = "\n".join(logs)
    assert "[extract] cache complete, skipping" in text
    assert "[train] finished run found, skipping" in text
    assert "[eval] finished evaluation found, skipping" in text
    assert again["student"]["miou"] == summary["student"]["miou"]


def test_run_evaluates_every_listed_benchmark(demo, teacher_cache, tmp_path):
    """`zeroseg run` scores each entry of eval.benchmarks, not only the first."""
    from tests.eval_fixtures import write_voc

    cfg, summary, _ = demo
    write_voc(str(tmp_path / "voc"), n=3)
    both = load_config(
        "jobs/demo.yaml",
        [
            *tiny_overrides(cfg.storage.root, teacher_cache),
            "world.n_generalisation=6",
            "eval.benchmarks=[shapes,voc]",
            f"eval.data_root={tmp_path / 'voc'}",
        ],
    )
    logs: list[str] = []
    again = run_all(both, log=logs.append)
    text = "\n".join(logs)
    assert "[train] finished run found, skipping" in text
    assert set(again["benchmarks"]) == {"shapes", "voc"}
    assert again["benchmarks"]["voc"]["num_images"] == 3
    assert again["benchmarks"]["shapes"]["student_miou"] == summary["student"]["miou"]
    assert again["student"]["miou"] == summary["student"]["miou"]  # the first stays in full
    (voc,) = [d for d in os.listdir(os.path.join(cfg.storage.root, "eval")) if _has(cfg, d, "voc")]
    assert os.path.exists(os.path.join(cfg.storage.root, "eval", voc, "voc", "_SUCCESS"))
    assert "benchmark voc (3 images)" in text


def _has(cfg, fp: str, benchmark: str) -> bool:
    return os.path.isdir(os.path.join(cfg.storage.root, "eval", fp, benchmark))


def test_train_writes_its_marker_and_success(demo):
    cfg, summary, _ = demo
    run = os.path.dirname(summary["checkpoint"])
    assert os.path.exists(os.path.join(run, "_SUCCESS"))
    marker = json.load(open(os.path.join(run, "markers", "00000.json")))
    assert marker["final"] == summary["checkpoint"] and marker["steps"] > 0


def test_extract_resume_recomputes_only_missing_shards(demo):
    from pipeline.extract import run_extract

    cfg, _, _ = demo
    d = _extract_dir(cfg)
    before = np.asarray(zarr.open_group(os.path.join(d, "cache.zarr"), mode="r")["embeddings"][:])
    kept = json.load(open(os.path.join(d, "shards", "00000.json")))
    os.remove(os.path.join(d, "shards", "00001.json"))
    os.remove(os.path.join(d, "_SUCCESS"))
    logs: list[str] = []
    run_extract(cfg, log=logs.append)
    assert any("(2 done, 1 to run)" in line for line in logs), logs
    assert json.load(open(os.path.join(d, "shards", "00000.json"))) == kept
    after = np.asarray(zarr.open_group(os.path.join(d, "cache.zarr"), mode="r")["embeddings"][:])
    assert np.array_equal(before, after)
    assert os.path.exists(os.path.join(d, "_SUCCESS"))


def test_status_command(demo, capsys):
    """Every stage folder, and a whole storage.root, from storage alone."""
    cfg, summary, _ = demo
    assert main(["status", _extract_dir(cfg)]) == 0
    out = capsys.readouterr().out
    assert "extract, complete" in out and "shards" in out and "too_small: 1" in out
    final = summary["checkpoint"]
    run = os.path.dirname(final)
    assert main(["status", run]) == 0
    out = capsys.readouterr().out
    steps = json.load(open(os.path.join(final, "config.json")))["steps"]
    assert f"{run}: train, complete" in out and f"steps   {steps}/{steps}" in out
    assert "checkpoint at step" in out and f"final   {final}" in out
    records = glob.glob(os.path.join(cfg.storage.root, "eval", "*", "shapes", "config.json"))
    (evaluation,) = [
        os.path.dirname(r) for r in records if json.load(open(r))["checkpoint"] == final
    ]
    assert main(["status", evaluation]) == 0
    out = capsys.readouterr().out
    parts = json.load(open(os.path.join(evaluation, "config.json")))["parts"]
    assert "eval, complete" in out and f"parts   {parts}/{parts} done, 0 pending" in out
    assert f"student {summary['student']['miou'] * 100:.1f}%" in out
    assert main(["status", cfg.storage.root]) == 0  # the whole root: one block per stage
    out = capsys.readouterr().out
    assert out.count(": extract, ") >= 1 and out.count(": train, ") >= 1
    assert out.count(": eval, ") >= 1
    missing = os.path.join(cfg.storage.root, "no-such-stage")
    assert main(["status", missing]) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err
    assert main(["status", os.path.join(cfg.storage.root, "data")]) == 2
    assert "is not a stage folder" in capsys.readouterr().err


def test_segment_command_any_size_and_mode(demo, tmp_path):
    _, summary, _ = demo
    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), np.uint8)).save(wide)
    gray = tmp_path / "gray.png"
    Image.new("L", (33, 47), 128).save(gray)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(wide),
            str(gray),
            str(broken),
            "--classes",
            "circle, star",
            "--checkpoint",
            summary["checkpoint"],
            "-o",
            str(out),
            "--save-labels",
        ]
    )
    assert rc == 1  # one unreadable image reported, the others written
    for stem, shape in (("wide", (50, 90)), ("gray", (47, 33))):
        labels = np.load(out / f"{stem}.npy")
        assert labels.shape == shape
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert Image.open(out / f"{stem}.png").size[0] > shape[1]
    assert not (out / "broken.png").exists()


def test_data_shapes_command(tmp_path):
    assert (
        main(
            ["data", "shapes", "--out", str(tmp_path / "b"), "--n", "3", "--seed", "1", "--labels"]
        )
        == 0
    )
    assert len(os.listdir(tmp_path / "b" / "masks")) == 3
    mask = Image.open(
        io.BytesIO(
            (tmp_path / "b" / "masks" / os.listdir(tmp_path / "b" / "masks")[0]).read_bytes()
        )
    )
    assert mask.mode == "P"
    assert main(["data", "shapes", "--out", str(tmp_path / "u"), "--n", "2"]) == 0
    assert not (tmp_path / "u" / "masks").exists()
    assert storage.list_files(str(tmp_path / "u"), (".png",))


def test_a_stage_without_its_upstream_names_what_to_run_first(
    demo, tmp_path, capsys, teacher_cache
):
    cfg, _, _ = demo
    args = [
        "--config",
        "jobs/demo.yaml",
        *tiny_overrides(str(tmp_path / "empty"), teacher_cache),
        f"data.train={cfg.data.train}",
        f"data.val={cfg.data.val}",
        f"data.bench={cfg.data.bench}",
    ]
    extract = shlex.join(["zeroseg", "extract", *args])
    train = shlex.join(["zeroseg", "train", *args])
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "no finished teacher cache for this config" in err
    assert f"run `{extract}` first" in err
    assert main(["eval", *args]) == 1
    err = capsys.readouterr().err
    assert f"run `{extract}` first, then `{train}`" in err
    # a named cache or checkpoint that is not finished is refused the same way
    assert main(["train", *args, "--cache", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is not finished (no _SUCCESS)" in err and f"run `{extract}` first" in err
    assert main(["eval", *args, "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors is missing" in err and f"run `{train}` first" in err


def test_run_reruns_only_what_a_config_change_invalidates(demo, teacher_cache):
    from pipeline.extract import run_extract

    cfg, summary, _ = demo
    demo_overrides = [*tiny_overrides(cfg.storage.root, teacher_cache), "world.n_generalisation=6"]
    logs: list[str] = []
    changed = load_config("jobs/demo.yaml", [*demo_overrides, "train.epochs=1"])
    again = run_all(changed, log=logs.append)
    text = "\n".join(logs)
    assert "[extract] cache complete, skipping" in text  # a training setting keeps the cache
    assert "[train] finished run found, skipping" not in text
    assert "[eval] finished evaluation found, skipping" not in text
    assert again["checkpoint"] != summary["checkpoint"]
    # the views are part of the cache: changing them extracts a new one beside the old
    before = set(os.listdir(os.path.join(cfg.storage.root, "extract")))
    views = load_config("jobs/demo.yaml", [*demo_overrides, "views.levels=[1,2]"])
    logs.clear()
    new_cache = run_extract(views, log=logs.append)
    assert not any("cache complete, skipping" in line for line in logs)
    after = set(os.listdir(os.path.join(cfg.storage.root, "extract")))
    assert before < after and os.path.basename(new_cache) in after - before


def test_a_label_free_init_starts_students_of_several_seeds(demo, teacher_cache, capsys):
    """`zeroseg student-pretrain` (MAE on data.train, bad images skipped with their reason),
    then one `zeroseg run` training two seeds from it on the one cache: each worker loads the
    init, each seed is its own run, and the summary gives their mean and spread."""
    cfg, _, _ = demo
    base = [*tiny_overrides(cfg.storage.root, teacher_cache), "world.n_generalisation=6"]
    standalone = [*base, "student.overrides.stem.kind=patch"]
    out = os.path.join(cfg.storage.root, "mae")
    argv = ["student-pretrain", "--config", "jobs/demo.yaml", "--out", out, "--steps", "6"]
    assert main([*argv, "--batch", "8", *standalone]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 images" in printed and "empty_file" in printed and "corrupt" in printed
    record = json.loads(open(os.path.join(out, "pretrain.json")).read())
    assert record["recipe"]["steps"] == 6 and record["recipe"]["images"] == 40
    init = os.path.join(out, "encoder.safetensors")
    seeded = load_config(
        "jobs/demo.yaml", [*standalone, f"student.init={init}", "train.seeds=[0,1]"]
    )
    logs: list[str] = []
    summary = run_all(seeded, log=logs.append)
    over = summary["seeds"]
    assert over["seeds"] == [0, 1] and len(over["student_miou"]["per_seed"]) == 2
    assert summary["student"]["miou"] == pytest.approx(over["student_miou"]["per_seed"][0])
    assert len(over["generalisation_student_miou"]["per_seed"]) == 2
    text = "\n".join(logs)
    assert "[run] seed 1 (2/2)" in text
    runs = glob.glob(os.path.join(cfg.storage.root, "train", "demo-*", "final", "config.json"))
    inits = [p for p in runs if os.path.getmtime(p) >= os.path.getmtime(init)]
    assert len(inits) == 2  # one run folder per seed, both after the init was written
