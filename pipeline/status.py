"""``zeroseg status``: what an extract folder holds and how the run is going, without Ray."""

from __future__ import annotations

import time
from typing import Any

from zeroseg import storage

from .extract import RUN_INFO, failed_shards
from .runner import FAILED_DIR, StageDir


def stage_status(stage_dir: str, now_unix: float | None = None) -> dict[str, Any]:
    """Done / pending / failed shards, throughput, ETA and skip reasons of an extract folder.

    Throughput counts the shards finished since the latest run started (``run.json``), over the
    time from that start to the newest marker, so it includes start-up and every actor of the
    pool; the ETA divides the images still to do by it.
    """
    stage = StageDir(stage_dir)
    plan_uri = stage.path("plan.json")
    if not storage.exists(plan_uri):
        raise FileNotFoundError(f"{stage_dir} is not an extract stage folder (no plan.json)")
    plan = storage.read_json(plan_uri)
    total = int(plan["num_shards"])
    done = sorted(stage.done_units())
    markers = [stage.read_marker(s) for s in done]
    failed = failed_shards(stage)
    images_total = int(plan["num_images"])
    images = sum(m["ok"] + m["skipped"] for m in markers)
    busy = sum(m["seconds"]["total"] for m in markers)
    reasons: dict[str, int] = {}
    for m in markers:
        for k, v in m["skip_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    complete = stage.succeeded()
    run = storage.read_json(stage.path(RUN_INFO)) if storage.exists(stage.path(RUN_INFO)) else {}
    rate = None
    if run:
        start = float(run["started_unix"])
        recent = [m for m in markers if m.get("finished_unix", 0.0) >= start]
        if recent:
            span = max(m["finished_unix"] for m in recent) - start
            n = sum(m["ok"] + m["skipped"] for m in recent)
            rate = n / span if span > 0 else None
    remaining = images_total - images
    eta = None
    if rate and remaining and not complete:
        eta = remaining / rate
    return {
        "stage": stage_dir,
        "complete": complete,
        "shards_total": total,
        "shards_done": len(done),
        "shards_failed": sorted(failed),
        "shards_pending": total - len(done),
        "images_done": images,
        "images_total": images_total,
        "images_per_s": round(rate, 2) if rate else None,
        "images_per_s_per_worker": round(images / busy, 2) if busy > 0 else None,
        "eta_s": round(eta, 1) if eta is not None else None,
        "run_started_at": run.get("started_at"),
        "skip_reasons": reasons,
        "failures": {s: f.get("error", "").strip().splitlines()[-1:] for s, f in failed.items()},
        "checked_at": round(now_unix if now_unix is not None else time.time(), 3),
    }


def print_status(stage_dir: str) -> int:
    """Human-readable status; exit code 1 when shards are recorded as failed."""
    s = stage_status(stage_dir)
    state = "complete" if s["complete"] else "incomplete"
    print(f"{s['stage']}: {state}")
    failed = s["shards_failed"]
    print(
        f"  shards  {s['shards_done']}/{s['shards_total']} done, {s['shards_pending']} pending, "
        f"{len(failed)} failed"
    )
    rate = f"{s['images_per_s']} img/s" if s["images_per_s"] else "img/s unknown"
    per_worker = s["images_per_s_per_worker"]
    print(
        f"  images  {s['images_done']}/{s['images_total']} ({rate} in the latest run"
        + (f", {per_worker} img/s per worker" if per_worker else "")
        + ")"
    )
    if s["eta_s"] is not None:
        print(f"  ETA     {s['eta_s']:.0f} s at the latest run's rate")
    if s["skip_reasons"]:
        print("  skipped " + ", ".join(f"{k}: {v}" for k, v in sorted(s["skip_reasons"].items())))
    for shard in failed:
        last = s["failures"][shard]
        print(f"  failed  shard {shard}: {last[0] if last else '?'}")
    if failed:
        print(f"  tracebacks in {storage.join(stage_dir, FAILED_DIR)}/")
    return 1 if failed else 0
