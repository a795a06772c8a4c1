"""The stage protocol on a small real stage: units are files in a local folder, so skipping,
resuming, retry rules and failure records are checked without Ray."""

from __future__ import annotations

import os

import pytest

from pipeline.runner import Stage, StageDir, StageFailed, UnitFailure, is_transient, run_stage
from zeroseg import storage


class Squares(Stage):
    """Unit i writes i*i to ``out/i.txt``, then its marker. ``faults`` maps a unit to the
    exceptions its next attempts raise, one per attempt."""

    name = "squares"
    unit_name = "square"

    def __init__(self, uri: str, n: int, faults=None, max_retries: int = 2, redo=()):
        self.dir = StageDir(uri)
        self.n, self.faults = n, {k: list(v) for k, v in (faults or {}).items()}
        self.max_retries = max_retries
        self._redo = list(redo)
        self.ran: list[int] = []
        self.finalized = 0

    def locate(self) -> StageDir:
        return self.dir

    def redo(self) -> list[int]:
        return self._redo

    def prepare(self) -> None:
        storage.makedirs(self.dir.path("out"))

    def units(self) -> list[int]:
        return list(range(self.n))

    def run_units(self, pending: list[int]) -> dict[int, UnitFailure]:
        failed = {}
        for u in pending:
            self.ran.append(u)
            try:
                if self.faults.get(u):
                    raise self.faults[u].pop(0)
                storage.write_text(self.dir.path("out", f"{u}.txt"), str(u * u))
                self.dir.write_marker(u, {"unit": u})
            except Exception as exc:
                failed[u] = UnitFailure.of(exc)
        return failed

    def finalize(self, seconds: float) -> None:
        self.finalized += 1
        total = sum(
            int(storage.read_bytes(self.dir.path("out", f"{u}.txt"))) for u in range(self.n)
        )
        storage.write_text(self.dir.path("total.txt"), str(total))

    def result(self) -> int:
        return int(storage.read_bytes(self.dir.path("total.txt")).decode())


def test_runs_every_unit_once_then_skips(tmp_path):
    logs: list[str] = []
    stage = Squares(str(tmp_path / "s"), 4)
    assert run_stage(stage, logs.append) == 0 + 1 + 4 + 9
    assert stage.ran == [0, 1, 2, 3] and stage.finalized == 1
    assert StageDir(str(tmp_path / "s")).succeeded()
    again = Squares(str(tmp_path / "s"), 4)
    assert run_stage(again, logs.append) == 14
    assert again.ran == [] and again.finalized == 0
    assert any("[squares] finished, skipping" in line for line in logs)


def test_transient_failures_are_retried_and_their_records_cleared(tmp_path):
    stage = Squares(str(tmp_path / "s"), 3, faults={1: [ConnectionError("reset"), TimeoutError()]})
    assert run_stage(stage, lambda *_: None) == 5
    assert stage.ran == [0, 1, 2, 1, 1]  # only the failed unit is run again
    assert not os.path.exists(tmp_path / "s" / "failed" / "00001.json")


def test_a_deterministic_failure_is_not_retried_and_a_rerun_resumes(tmp_path):
    stage = Squares(str(tmp_path / "s"), 3, faults={2: [ZeroDivisionError("bad value")]})
    with pytest.raises(StageFailed, match=r"1 square\(s\) failed: \[2\].*cannot fix"):
        run_stage(stage, lambda *_: None)
    assert stage.ran == [0, 1, 2]  # no retry
    record = storage.read_json(str(tmp_path / "s" / "failed" / "00002.json"))
    assert record["attempts"] == 1 and not record["transient"]
    assert "ZeroDivisionError: bad value" in record["error"]
    assert StageDir(str(tmp_path / "s")).failed_units().keys() == {2}
    assert not StageDir(str(tmp_path / "s")).succeeded()

    rerun = Squares(str(tmp_path / "s"), 3)
    assert run_stage(rerun, lambda *_: None) == 5
    assert rerun.ran == [2]  # finished units are kept
    assert StageDir(str(tmp_path / "s")).failed_units() == {}


def test_retries_are_bounded(tmp_path):
    faults = {0: [OSError("flaky")] * 5}
    stage = Squares(str(tmp_path / "s"), 1, faults=faults, max_retries=2)
    with pytest.raises(StageFailed, match="after 3 attempts"):
        run_stage(stage, lambda *_: None)
    assert stage.ran == [0, 0, 0]
    assert storage.read_json(str(tmp_path / "s" / "failed" / "00000.json"))["attempts"] == 3


def test_redo_recomputes_named_units_only(tmp_path):
    run_stage(Squares(str(tmp_path / "s"), 3), lambda *_: None)
    redo = Squares(str(tmp_path / "s"), 3, redo=[1])
    assert run_stage(redo, lambda *_: None) == 5
    assert redo.ran == [1] and redo.finalized == 1
    with pytest.raises(ValueError, match="do not exist"):
        run_stage(Squares(str(tmp_path / "s"), 3, redo=[7]), lambda *_: None)


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError("network unreachable"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError(), False),
        (IsADirectoryError(), False),
        (ValueError(), False),
        (ZeroDivisionError(), False),
        (RuntimeError("wrapped"), False),
    ],
)
def test_what_counts_as_transient(exc, transient):
    assert is_transient(exc) is transient


def test_wrapped_errors_are_judged_by_their_cause():
    try:
        try:
            raise ConnectionError("dropped")
        except ConnectionError as inner:
            raise RuntimeError("shard failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    import ray.exceptions

    assert is_transient(ray.exceptions.WorkerCrashedError())
    assert is_transient(ray.exceptions.ActorDiedError())


HOLD_LEASE = """
import sys, time
from pipeline.lease import Lease
with Lease(sys.argv[1], "squares", log=lambda *_: None):
    print("held", flush=True)
    time.sleep(600)
"""


def _lease_record(host: str, age_s: float, pid: int = 1) -> dict:
    import time

    return {"owner": "someone", "host": host, "pid": pid, "heartbeat_unix": time.time() - age_s}


def test_a_live_run_keeps_the_folder_and_a_dead_one_hands_it_over(tmp_path):
    """Another process holds the lease (heartbeating): refused, nothing written; once that
    process is killed, the next run takes over at once (same host, its pid is gone)."""
    import subprocess
    import sys

    from pipeline.lease import LEASE, StageBusy

    uri = str(tmp_path / "s")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEASE, uri], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        stage = Squares(uri, 3)
        busy = f"another run is writing {uri}: host .*pid {holder.pid}"
        with pytest.raises(StageBusy, match=busy):
            run_stage(stage, lambda *_: None)
        assert stage.ran == [] and not os.path.exists(os.path.join(uri, "out"))
    finally:
        holder.kill()
        holder.wait()
    logs: list[str] = []
    assert run_stage(Squares(uri, 3), logs.append) == 5
    assert any("taking over the lease" in line and "has exited" in line for line in logs), logs
    assert not os.path.exists(os.path.join(uri, LEASE))  # released at the end


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_lease_without_heartbeat_is_taken_over_a_fresh_one_is_not(where, tmp_path, request):
    from pipeline.lease import LEASE, StageBusy

    if where == "s3":
        import s3fs

        request.getfixturevalue("s3_server")
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("zeroseg-lease")
        uri = f"s3://zeroseg-lease/{tmp_path.name}/s"
    else:
        uri = str(tmp_path / "s")
    storage.write_json(storage.join(uri, LEASE), _lease_record("another-host", age_s=5))
    with pytest.raises(StageBusy, match=r"host another-host, pid 1, last heartbeat [5-9] s ago"):
        run_stage(Squares(uri, 2), lambda *_: None)
    storage.write_json(storage.join(uri, LEASE), _lease_record("another-host", age_s=120))
    logs: list[str] = []
    assert run_stage(Squares(uri, 2), logs.append) == 1
    assert any("taking over" in line and "no heartbeat for 120 s" in line for line in logs), logs
    assert not storage.exists(storage.join(uri, LEASE))
