"""Extraction at scale on a real local Ray: tar shards and list files give the same cache as a
folder, the pool can be pinned to a resource label and resized without touching the cache, and
a shard that keeps failing is recorded with its traceback and shown by `zeroseg status`."""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from pipeline.cli import main
from pipeline.extract import extract_fingerprint, run_extract, stage_uri
from pipeline.inputs import InputPlan, plan_inputs, write_plan_table
from pipeline.status import stage_status
from pipeline.teachers import resolve_teacher
from tests.conftest import tiny_overrides
from zeroseg.config import load_config
from zeroseg.data.shapes import write_split

pytestmark = pytest.mark.integration
QUIET = {"log": lambda *_: None}


def _arrays(stage: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(os.path.join(stage, "cache.zarr"), mode="r")
    return {k: np.asarray(group[k][:]) for k in ("embeddings", "pixels", "valid")}


def _markers(stage: str) -> list[dict]:
    return [json.load(open(p)) for p in sorted(glob.glob(f"{stage}/shards/*.json"))]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("imgs")
    write_split(str(root / "train"), n=20, seed=3, labeled=False)
    files = sorted(glob.glob(f"{root}/train/**/*.png", recursive=True))
    with open(files[7], "wb") as f:  # a bad input travels through every format
        f.write(b"not an image")
    return files


def test_tar_shards_and_list_files_give_the_folder_cache(
    ray_local, tmp_path, teacher_cache, images
):
    base = tiny_overrides(str(tmp_path / "out"), teacher_cache)
    base += ["extract.images_per_shard=8", "extract.batch_size=60"]
    folder = os.path.dirname(images[0])
    tars = tmp_path / "tars"
    tars.mkdir()
    for t, chunk in enumerate((images[:12], images[12:])):
        with tarfile.open(tars / f"train-{t:06d}.tar", "w") as tar:
            for path in chunk:
                tar.add(path, arcname=f"{os.path.basename(path)[:-4]}.png")
                extra = tarfile.TarInfo(f"{os.path.basename(path)[:-4]}.json")
                extra.size = 2
                tar.addfile(extra, io.BytesIO(b"{}"))
    (tmp_path / "list.txt").write_text("\n".join(os.path.relpath(p, tmp_path) for p in images))
    pq.write_table(pa.table({"uri": images}), tmp_path / "list.parquet")

    stages = {}
    for name, uri, extra in (
        ("folder", folder, []),
        # pinned to the session node's custom resource, autoscaling 1..2 actors
        (
            "tars",
            str(tars),
            ["extract.resource_label=extract_worker", "extract.max_actors=2"],
        ),
        ("text", str(tmp_path / "list.txt"), []),
        ("parquet", str(tmp_path / "list.parquet"), []),
    ):
        cfg = load_config("jobs/demo.yaml", [*base, f"data.train={uri}", *extra])
        stages[name] = run_extract(cfg, **QUIET)
    assert len(set(stages.values())) == 4  # different inputs, different caches
    ref = _arrays(stages["folder"])
    assert ref["valid"].sum() == 19 and ref["valid"][7] == 0
    for name in ("tars", "text", "parquet"):
        got = _arrays(stages[name])
        for key in ref:
            assert np.array_equal(ref[key], got[key]), (name, key)
    index = pq.read_table(os.path.join(stages["tars"], "index.parquet")).to_pylist()
    assert index[0]["key"] == f"{tars}/train-000000.tar#{os.path.basename(images[0])}"
    assert index[7]["status"] == "skipped:not_an_image"
    assert index[12]["key"].startswith(f"{tars}/train-000001.tar#")
    plan = json.load(open(os.path.join(stages["tars"], "plan.json")))
    assert plan["input_kind"] == "folder" and plan["tar_members"] == plan["num_images"] == 20
    table = pq.ParquetFile(os.path.join(stages["tars"], "plan.parquet"))
    assert table.num_row_groups == 3  # one per shard: a worker reads only its shard's keys
    assert table.read().column("key").to_pylist() == [r["key"] for r in index]
    for marker in _markers(stages["tars"]):
        assert marker["resources"]["extract_worker"] == pytest.approx(0.001)
        assert marker["peak_rss_mb"] > 0
        assert set(marker["seconds"]) == {"read", "crop", "infer", "wait", "write", "total"}
    manifest = json.load(open(os.path.join(stages["tars"], "manifest.json")))
    assert [s["shard"] for s in manifest["shards"]] == [0, 1, 2]
    assert [s["images"] for s in manifest["shards"]] == [8, 8, 4]
    assert sum(s["ok"] for s in manifest["shards"]) == manifest["num_ok"] == 19
    assert manifest["shards"][0]["skip_reasons"] == {"not_an_image": 1}

    # resizing or re-placing the pool finds the same finished cache
    logs: list[str] = []
    cfg = load_config(
        "jobs/demo.yaml",
        [*base, f"data.train={tars}", "extract.num_actors=2", "extract.batch_size=30"],
    )
    assert run_extract(cfg, log=logs.append) == stages["tars"]
    assert any("cache complete, skipping" in line for line in logs)
    # an overwrite whose pool can never start fails before it clears the finished cache
    cfg = load_config(
        "jobs/demo.yaml",
        [*base, f"data.train={tars}", "extract.mode=overwrite", "extract.resource_label=nope"],
    )
    with pytest.raises(RuntimeError, match="extract.resource_label=nope: no Ray node"):
        run_extract(cfg, **QUIET)
    assert os.path.exists(os.path.join(stages["tars"], "_SUCCESS"))


def test_a_pool_pinned_to_a_missing_label_fails_before_work(
    ray_local, tmp_path, teacher_cache, images
):
    cfg = load_config(
        "jobs/demo.yaml",
        [
            *tiny_overrides(str(tmp_path / "out"), teacher_cache),
            f"data.train={os.path.dirname(images[0])}",
            "extract.resource_label=no_such_group",
        ],
    )
    with pytest.raises(RuntimeError, match="extract.resource_label=no_such_group: no Ray node"):
        run_extract(cfg, **QUIET)
    assert not os.path.exists(tmp_path / "out" / "extract")


def test_failed_shard_is_recorded_shown_and_cleared(
    ray_local, tmp_path, teacher_cache, images, capsys
):
    overrides = [
        *tiny_overrides(str(tmp_path / "out"), teacher_cache),
        f"data.train={os.path.dirname(images[0])}",
        "extract.images_per_shard=8",
        "extract.max_retries=1",
    ]
    cfg = load_config("jobs/demo.yaml", overrides)
    teacher = resolve_teacher(cfg, **QUIET)
    stage = stage_uri(cfg, extract_fingerprint(cfg, teacher, plan_inputs(cfg.data.train)))
    # A real storage fault: a folder sits where shard 1 of the `valid` array must be written.
    blocker = os.path.join(stage, "cache.zarr", "valid", "c", "1")
    os.makedirs(os.path.join(blocker, "in-the-way"))
    with pytest.raises(RuntimeError, match=r"1 shard\(s\) failed: \[1\].*cannot fix"):
        run_extract(cfg, teacher=teacher, **QUIET)
    record = json.load(open(os.path.join(stage, "failed", "00001.json")))
    # a folder in the way fails the same way every time: recorded, not retried
    assert record["attempts"] == 1 and not record["transient"]
    assert "IsADirectoryError" in record["error"]
    status = stage_status(stage)
    assert status["shards_failed"] == [1] and status["shards_done"] == 2
    assert status["shards_pending"] == 1 and not status["complete"]
    assert status["images_per_s"] > 0 and status["eta_s"] > 0
    assert status["skip_reasons"] == {"not_an_image": 1}
    capsys.readouterr()
    assert main(["status", stage]) == 1
    out = capsys.readouterr().out
    assert "2/3 done, 1 pending, 1 failed" in out
    assert "failed  shard 1: IsADirectoryError" in out and "ETA" in out

    os.rmdir(os.path.join(blocker, "in-the-way"))
    os.rmdir(blocker)
    logs: list[str] = []
    run_extract(cfg, teacher=teacher, log=logs.append)
    assert any("(2 done, 1 to run)" in line for line in logs)
    assert not os.path.exists(os.path.join(stage, "failed", "00001.json"))
    assert main(["status", stage]) == 0
    out = capsys.readouterr().out
    assert ": extract, complete" in out and "3/3 done, 0 pending, 0 failed" in out
    assert "not_an_image: 1" in out and "ETA" not in out
    _damage_then_repair(cfg, teacher, stage, capsys)


def _damage_then_repair(cfg, teacher, stage: str, capsys) -> None:
    """A finished cache loses a zarr shard's tail, a marker and the index's contents: status
    --verify names them, training refuses before Ray Train, a rerun recomputes the two shards
    and rewrites the index, to the same bytes as before."""
    from pipeline.cache_verify import CacheDamaged, verify_cache
    from pipeline.train import run_train

    before, index = _arrays(stage), open(os.path.join(stage, "index.parquet"), "rb").read()
    chunk = os.path.join(stage, "cache.zarr", "embeddings", "c", "0", "0", "0")
    data = open(chunk, "rb").read()
    open(chunk, "wb").write(data[: len(data) // 2])
    os.remove(os.path.join(stage, "shards", "00002.json"))
    open(os.path.join(stage, "index.parquet"), "wb").write(bytes(b ^ 1 for b in index))
    assert main(["status", stage, "--verify"]) == 1
    out = capsys.readouterr().out
    assert "damaged shard 0: embeddings/c/0/0/0 has" in out
    assert "damaged shard 2: its marker is missing" in out and "index.parquet" not in out
    assert "repair  rerun the extract stage" in out
    assert main(["status", stage, "--verify", "full"]) == 1
    assert "damaged index.parquet has other contents" in capsys.readouterr().out
    with pytest.raises(CacheDamaged, match="shard 0: embeddings/c/0/0/0 has .*Rerun the extract"):
        run_train(cfg, stage, **QUIET)
    logs: list[str] = []
    full = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, verify="full"))
    run_extract(full, teacher=teacher, log=logs.append)
    assert any("recomputing 1 shard(s) and finalizing again" in line for line in logs), logs
    assert any("(1 done, 2 to run)" in line for line in logs), logs
    after = _arrays(stage)
    for key in before:
        assert np.array_equal(before[key], after[key]), key
    assert open(os.path.join(stage, "index.parquet"), "rb").read() == index
    assert verify_cache(stage, "full").ok
    # the manifest and _SUCCESS lost: finalized again, no shard recomputed
    os.remove(os.path.join(stage, "manifest.json"))
    os.remove(os.path.join(stage, "_SUCCESS"))
    logs.clear()
    run_extract(cfg, teacher=teacher, log=logs.append)
    assert any("(3 done, 0 to run)" in line for line in logs), logs
    assert verify_cache(stage, "full").ok and main(["status", stage, "--verify"]) == 0


def test_a_failing_shard_does_not_stop_the_others_of_its_call(tmp_path, images):
    """Several shards per actor call (the reader runs ahead into the next shard): one that
    cannot be written fails alone, the shards before and after it get their markers. The actor
    class is used directly here, with a randomly initialised toy teacher."""
    stage = str(tmp_path / "stage")
    actor = _direct_extractor(stage, images, "")
    os.makedirs(os.path.join(stage, "cache.zarr", "valid", "c", "1", "in-the-way"))
    out = actor({"shard": np.asarray([0, 1, 2, 3])})
    errors = dict(zip(out["shard"].tolist(), out["error"].tolist(), strict=True))
    assert errors[0] == errors[2] == errors[3] == ""
    assert "IsADirectoryError" in errors[1]
    assert sorted(os.listdir(os.path.join(stage, "shards"))) == [
        "00000.json",
        "00002.json",
        "00003.json",
    ]
    valid = _arrays(stage)["valid"]
    assert valid[:6].all() and not valid[6:12].any() and valid[12:].all()
    second = json.load(open(os.path.join(stage, "shards", "00002.json")))
    assert second["rows"] == [12, 18] and second["ok"] == 6
    assert {"read", "crop", "infer", "wait", "write", "total"} == set(second["seconds"])


def _direct_extractor(stage: str, images: list[str], weights: str, **kwargs):
    """A ShardExtractor used directly (no Ray) over a fresh stage folder for ``images``."""
    from dataclasses import asdict

    from pipeline.cache import CacheLayout, create_arrays
    from pipeline.extract import ShardExtractor
    from zeroseg.toy_teacher import MODEL_NAME

    layout = CacheLayout(len(images), 30, 128, 64, 6)
    write_plan_table(
        os.path.join(stage, "plan.parquet"),
        InputPlan("folder", images, [None] * len(images)),
        layout.images_per_shard,
    )
    create_arrays(os.path.join(stage, "cache.zarr"), layout)
    return ShardExtractor(
        stage,
        {"model": MODEL_NAME, "pretrained": weights},
        True,
        [1, 2, 3, 4],
        64,
        60,
        asdict(layout),
        **kwargs,
    )


def test_views_cut_beside_the_teacher_equal_views_cut_by_the_reader(tmp_path, images):
    """The GPU path hands uint8 crops to the teacher's thread and cuts the views on the device;
    forced here on the CPU, it must give the reader-cut cache to float rounding, and bf16
    autocast must stay close to fp32."""
    import torch

    from zeroseg.teacher import Teacher
    from zeroseg.toy_teacher import MODEL_NAME

    weights = str(tmp_path / "teacher.pt")
    torch.save(Teacher(MODEL_NAME, None).model.state_dict(), weights)
    shards = np.arange(-(-len(images) // 6))
    caches = {}
    for name, kwargs, on_device in (
        ("reader", {}, False),
        ("device", {}, True),
        ("bf16", {"precision": "bf16"}, False),
    ):
        stage = str(tmp_path / name)
        actor = _direct_extractor(stage, images, weights, device="cpu", **kwargs)
        assert actor.cut_on_device is False and actor.teacher.device.type == "cpu"
        actor.cut_on_device = on_device
        out = actor({"shard": shards})
        assert out["error"].tolist() == [""] * len(shards)
        caches[name] = _arrays(stage)
    reader, device, bf16 = caches["reader"], caches["device"], caches["bf16"]
    assert reader["valid"].sum() == len(images) - 1  # one planted bad input
    np.testing.assert_array_equal(device["pixels"], reader["pixels"])
    np.testing.assert_allclose(
        device["embeddings"].astype(np.float32), reader["embeddings"].astype(np.float32), atol=2e-3
    )
    ok = reader["valid"].astype(bool)  # the bad input's rows stay zero
    a, b = reader["embeddings"][ok].astype(np.float32), bf16["embeddings"][ok].astype(np.float32)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert not np.array_equal(a, b) and cos.min() > 0.98
