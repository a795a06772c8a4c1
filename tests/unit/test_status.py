"""``zeroseg status`` on train and eval folders, laid out as the stages write them (the
integration tests read real ones): what counts as this run's rate, what a folder is."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.status import eval_status, folder_kind, train_status


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _train_run(tmp_path, rows):
    run = tmp_path / "train" / "demo-abc"
    _write(run / "config.json", {"stage": "train", "config": {}})
    _write(
        run / "workers" / "rank-0.json",
        {"rank": 0, "start_step": 20, "total_steps": 40, "global_batch": 8},
    )
    _write(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write(
        run / "checkpoint_manager_snapshot.json",
        {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_b", "metrics": {"step": 20}}]},
    )
    return run


def test_a_resumed_run_reports_only_its_own_rate(tmp_path, capsys):
    inherited = [{"step": s, "samples_per_s": 99.0, "loss": 2.0} for s in (5, 10, 15, 20)]
    run = _train_run(tmp_path, inherited)
    s = train_status(str(run))
    assert (s["steps_done"], s["steps_total"], s["resumed_from_step"]) == (20, 40, 20)
    assert s["samples_per_s"] is None and s["eta_s"] is None  # nothing trained since the resume
    assert s["last_checkpoint"] == {"step": 20, "folder": "checkpoint_b"}
    run = _train_run(tmp_path, [*inherited, {"step": 25, "samples_per_s": 16.0, "loss": 1.5}])
    s = train_status(str(run))
    assert s["samples_per_s"] == 16.0 and s["eta_s"] == pytest.approx((40 - 25) * 8 / 16)
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "train, training" in out and "steps   25/40, resumed at step 20" in out
    assert "16.0 samples/s in this run" in out and "ETA     8 s" in out
    import os
    import time

    _write(
        run / "_LEASE.json",
        {"owner": "x", "host": "elsewhere", "pid": os.getpid(), "heartbeat_unix": time.time()},
    )
    main(["status", str(run)])
    assert "writer  host elsewhere, pid" in capsys.readouterr().out


def test_eval_parts_and_failures(tmp_path, capsys):
    d = tmp_path / "eval" / "fp" / "shapes"
    _write(d / "config.json", {"stage": "eval", "checkpoint": "x/final", "parts": 5})
    for u in (0, 1, 3):
        _write(d / "markers" / f"{u:05d}.json", {"part": ["bench", u]})
    _write(d / "failed" / "00002.json", {"error": "Traceback ...\nValueError: bad image"})
    s = eval_status(str(d))
    assert (s["parts_done"], s["parts_pending"], s["complete"]) == (3, 2, False)
    assert main(["status", str(d)]) == 1  # a recorded failure
    out = capsys.readouterr().out
    assert "eval, incomplete" in out and "parts   3/5 done, 2 pending" in out
    assert "failed  part 2: ValueError: bad image" in out
    assert folder_kind(str(tmp_path)) == "root"
    assert main(["status", str(tmp_path)]) == 1
    assert "eval, incomplete" in capsys.readouterr().out
