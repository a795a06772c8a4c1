"""Interrupt the extract driver (Ctrl-C), then SIGKILL its rerun part-way, rerun once more: the
interrupt exits 130 with a resume hint and leaves no Ray process, the cache equals a clean run's
bit for bit, no row is missing or duplicated, and finished shards are not recomputed."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from pipeline.teachers import resolve_teacher
from tests.conftest import tiny_overrides
from tests.processes import pid_alive
from zeroseg.config import load_config

pytestmark = pytest.mark.integration
ZEROSEG = os.path.join(os.path.dirname(sys.executable), "zeroseg")


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,comm="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if int(line.split()[1]) == sid]


def _interrupt_after_two_shards(args: list[str], root: str, log) -> tuple[int, str, list[str]]:
    """Ctrl-C as a terminal sends it: SIGINT to the command's whole process group."""
    # default SIGINT handling in the child, as in a terminal: a shell that starts the tests
    # in the background hands its children SIGINT ignored, and Python then installs no handler
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while len(glob.glob(f"{root}/extract/*/shards/*.json")) < 2:
        assert proc.poll() is None, "extraction finished before it could be interrupted"
        assert time.time() < deadline, "no shard finished in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=120)
    while _session_processes(proc.pid) and time.time() < deadline + 30:
        time.sleep(0.2)  # Ray's processes exit once the driver has shut its node down
    left = _session_processes(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever did not exit, so the rerun has the cores
    except ProcessLookupError:
        pass
    log.seek(0)
    return rc, log.read().decode(errors="replace"), left


def _cache(root: str) -> tuple[str, dict[str, np.ndarray]]:
    (stage,) = glob.glob(f"{root}/extract/*")
    group = zarr.open_group(f"{stage}/cache.zarr", mode="r")
    return stage, {k: np.asarray(group[k][:]) for k in ("embeddings", "pixels", "valid")}


def test_sigkill_then_resume_equals_clean_run(tmp_path, teacher_cache):
    data = tmp_path / "data"
    subprocess.run(
        [ZEROSEG, "data", "shapes", "--out", str(data), "--n", "64", "--seed", "5"],
        check=True,
        capture_output=True,
    )
    base = tiny_overrides(str(tmp_path / "unused"), teacher_cache)
    teacher = resolve_teacher(load_config("jobs/demo.yaml", base), log=lambda *_: None)
    args = [
        ZEROSEG,
        "extract",
        "--config",
        "jobs/demo.yaml",
        f"data.train={data}",
        f"teacher.pretrained={teacher['pretrained']}",
        "extract.images_per_shard=4",
        "extract.batch_size=30",
        "extract.cpus_per_actor=1",
        "ray.num_cpus=2",
    ]
    killed = str(tmp_path / "killed")
    with open(tmp_path / "interrupted.log", "w+b") as log:
        rc, text, left = _interrupt_after_two_shards([*args, f"storage.root={killed}"], killed, log)
    assert rc == 130, text[-3000:]
    assert "zeroseg extract: interrupted — rerun the same command to resume" in text
    assert "Traceback" not in text, text[-3000:]
    assert left == [], left  # no Ray process outlives the interrupted command
    interrupted = len(glob.glob(f"{killed}/extract/*/shards/*.json"))
    # its own session: the local Ray node it starts shares the group, so the test can reap it
    proc = subprocess.Popen(
        [*args, f"storage.root={killed}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while len(glob.glob(f"{killed}/extract/*/shards/*.json")) < interrupted + 2:
        assert proc.poll() is None, "extraction finished before it could be killed"
        assert time.time() < deadline, "no shard finished in time"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray kills the driver's actors a moment later; until then an orphaned actor may still
    # finish a shard, which is harmless. Wait for the actor processes named in the markers.
    (stage,) = glob.glob(f"{killed}/extract/*")
    actors = {
        int(json.load(open(p))["worker"].rsplit(":", 1)[1])
        for p in glob.glob(f"{stage}/shards/*.json")
    }
    while any(pid_alive(pid) for pid in actors):
        assert time.time() < deadline + 60, "orphaned actors did not exit"
        time.sleep(0.2)
    try:  # what is left of the killed driver's Ray node, so the rerun has the cores
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert not os.path.exists(f"{stage}/_SUCCESS")
    before = {os.path.basename(p): json.load(open(p)) for p in glob.glob(f"{stage}/shards/*.json")}
    num_shards = json.load(open(f"{stage}/plan.json"))["num_shards"]
    assert interrupted + 2 <= len(before) < num_shards

    rerun = subprocess.run([*args, f"storage.root={killed}"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"({len(before)} done, {num_shards - len(before)} to run)" in rerun.stdout
    for name, marker in before.items():  # finished shards were not recomputed
        assert json.load(open(f"{stage}/shards/{name}")) == marker

    clean = subprocess.run(
        [*args, f"storage.root={tmp_path / 'clean'}"], capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr[-2000:]
    stage_a, a = _cache(killed)
    stage_b, b = _cache(str(tmp_path / "clean"))
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    rows_a = pq.read_table(f"{stage_a}/index.parquet").to_pylist()
    rows_b = pq.read_table(f"{stage_b}/index.parquet").to_pylist()
    assert [r["row"] for r in rows_a] == list(range(64))
    assert rows_a == rows_b
