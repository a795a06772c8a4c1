"""The train stage under failure and at scale, on a real local Ray: reproducible DDP runs,
a SIGKILLed training worker, a SIGKILLed driver, checkpoints and cache on an S3-protocol server."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import s3fs
import torch

from pipeline.train import run_train
from tests.processes import pid_alive
from tests.synthetic_cache import write_cache
from zeroseg.checkpoint import read_final_config
from zeroseg.config import load_config
from zeroseg.models import create_student

pytestmark = pytest.mark.integration
ZEROSEG = os.path.join(os.path.dirname(sys.executable), "zeroseg")


def _overrides(root: str, *extra: str) -> list[str]:
    return [
        f"storage.root={root}",
        # the synthetic cache names no real teacher checkpoint for a teacher stem to load
        "student.overrides.stem=patch",
        "train.batch_size=8",
        "train.cpus_per_worker=1",
        "train.epochs=100",
        "train.warmup_epochs=1",
        "train.reader=stream",
        "train.shuffle_buffer=8",
        "train.log_every_steps=5",
        *extra,
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(str(tmp_path_factory.mktemp("cache") / "extract" / "fp"), n=48)


def _registered_checkpoint(root) -> bool:
    """Ray Train has recorded a checkpoint (not only started writing its folder)."""
    for path in glob.glob(f"{root}/train/*/checkpoint_manager_snapshot.json"):
        try:
            if json.load(open(path)).get("latest_checkpoint_result"):
                return True
        except ValueError:  # caught mid-write
            pass
    return False


def _history(final: str) -> list[dict]:
    with open(os.path.join(final, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_identical_runs_give_identical_weights(ray_local, cache, tmp_path):
    """Two workers (DDP), streaming reader, dataset-mean centre all-reduced: bit-identical."""
    finals = []
    for name in ("a", "b"):
        cfg = load_config(
            "jobs/demo.yaml",
            _overrides(
                str(tmp_path / name),
                "train.num_workers=2",
                "train.max_steps=8",
                "train.checkpoint_every_steps=100",
                "train.center_targets=true",
            ),
        )
        finals.append(run_train(cfg, cache, log=lambda *_: None))
    a, b = (open(os.path.join(f, "model.safetensors"), "rb").read() for f in finals)
    assert a == b
    # the centre goes with the weights, and the loaded student reads its patches out through it
    student, saved = create_student(pretrained=finals[0]), read_final_config(finals[0])
    assert len(saved["target_center"]) == saved["embed_dim"]
    assert torch.allclose(student.target_center, torch.tensor(saved["target_center"]))
    rows = _history(finals[0])
    assert rows[-1]["step"] == 8
    for key in ("loss", "loss_multiscale", "loss_matching", "loss_recon", "lr"):
        assert key in rows[-1]
    assert rows[-1]["samples_per_s"] > 0 and 0 <= rows[-1]["data_wait_fraction"] < 1


def test_killed_worker_resumes_from_its_last_checkpoint(ray_local, cache, tmp_path):
    root = tmp_path / "run"
    cfg = load_config(
        "jobs/demo.yaml",
        _overrides(str(root), "train.max_steps=40", "train.checkpoint_every_steps=10"),
    )
    killed: dict = {}

    def kill_after_first_checkpoint() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            markers = glob.glob(f"{root}/train/*/workers/rank-0.json")
            if markers and _registered_checkpoint(root):
                info = json.load(open(markers[0]))
                killed.update(info)
                os.kill(info["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    final = run_train(cfg, cache, log=lambda *_: None)
    watcher.join()
    assert killed, "no checkpoint appeared to kill the worker after"
    (marker,) = glob.glob(f"{root}/train/*/workers/rank-0.json")
    after = json.load(open(marker))
    assert after["pid"] != killed["pid"]  # a new worker process took over
    assert after["start_step"] > 0  # ... and started from a checkpoint, not from scratch
    rows = _history(final)
    assert rows[-1]["step"] == 40
    assert rows[-1]["resumed_from_step"] == after["start_step"]
    assert [r["step"] for r in rows] == list(range(5, 41, 5))  # no step lost or repeated
    config = json.load(open(os.path.join(final, "config.json")))
    assert config["steps"] == 40
    run = os.path.dirname(final)
    assert glob.glob(f"{run}/tensorboard/events.out.tfevents.*")
    assert os.path.getsize(f"{final}/loss_curve.png") > 1000


def test_killed_driver_rerun_resumes(cache, tmp_path):
    root = tmp_path / "run"
    args = [
        ZEROSEG,
        "train",
        "--config",
        "jobs/demo.yaml",
        "--cache",
        cache,
        *_overrides(str(root), "train.max_steps=40", "train.checkpoint_every_steps=10"),
        "ray.num_cpus=2",
    ]
    # its own session: the Ray processes it starts share the group, so the test can reap them
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _kill_and_rerun(proc, root, args)
    finally:
        try:  # whatever the killed driver's Ray left behind (e.g. its train controller)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_and_rerun(proc: subprocess.Popen, root, args: list[str]) -> None:
    deadline = time.time() + 240
    while not _registered_checkpoint(root):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (marker,) = glob.glob(f"{root}/train/*/workers/rank-0.json")
    first_pid = json.load(open(marker))["pid"]
    deadline = time.time() + 60
    while pid_alive(first_pid):  # Ray ends the orphaned worker after its driver is gone
        assert time.time() < deadline, "orphaned training worker did not exit"
        time.sleep(0.2)
    assert not glob.glob(f"{root}/train/*/final/model.safetensors")
    try:  # the killed driver's local Ray node (its GCS, raylet), so the rerun has the cores
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

    rerun = subprocess.run(args, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    start = json.load(open(marker))["start_step"]
    assert start > 0
    assert f"resumed from checkpoint at step {start}" in rerun.stdout + rerun.stderr
    (final,) = glob.glob(f"{root}/train/*/final")
    rows = _history(final)
    assert rows[-1]["step"] == 40 and rows[-1]["resumed_from_step"] == start


def test_checkpoints_and_metrics_on_s3(ray_local, s3_server, tmp_path):
    fs = s3fs.S3FileSystem()
    if not fs.exists("zeroseg-train"):
        fs.mkdir("zeroseg-train")
    cache = write_cache("s3://zeroseg-train/run/extract/fp", n=40)
    cfg = load_config(
        "jobs/demo.yaml",
        _overrides(
            "s3://zeroseg-train/run",
            "train.max_steps=9",
            "train.checkpoint_every_steps=3",
            "train.checkpoints_to_keep=2",
            "train.center_targets=true",
        ),
    )
    final = run_train(cfg, cache, log=lambda *_: None)
    assert final.startswith("s3://zeroseg-train/run/train/")
    run = final.removeprefix("s3://").rsplit("/", 1)[0]
    names = [p.rsplit("/", 1)[1] for p in fs.ls(run)]
    checkpoints = [n for n in names if n.startswith("checkpoint_") and "." not in n[-6:]]
    assert len(checkpoints) == 2  # every 3 steps, the newest two kept
    assert "checkpoint_manager_snapshot.json" in names
    for ckpt in checkpoints:
        assert fs.exists(f"{run}/{ckpt}/state.pt")
    rows = [json.loads(line) for line in fs.cat_file(f"{run}/metrics.jsonl").splitlines()]
    assert rows[-1]["step"] == 9
    assert fs.ls(f"{run}/tensorboard") and fs.exists(f"{run}/final/model.safetensors")
    logs: list[str] = []
    assert run_train(cfg, cache, log=logs.append) == final
    assert any("skipping" in line for line in logs)
