"""``zeroseg status``: what a stage folder (extract, train run, eval) or a whole
``storage.root`` holds and how the run is going, read from storage alone (no Ray)."""

from __future__ import annotations

import sys
import time
from typing import Any

from zeroseg import storage

from .extract import RUN_INFO, failed_shards
from .runner import FAILED_DIR, StageDir

RUN_RECORD = "config.json"  # the run info every train run and eval folder holds


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
    complete = stage.succeeded() and len(done) == total  # a lost marker: not complete
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


def _jsonl(uri: str) -> list[dict[str, Any]]:
    if not storage.exists(uri):
        return []
    import json

    text = storage.read_bytes(uri).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _last_failure(record: dict[str, Any]) -> list[str]:
    return record.get("error", "").strip().splitlines()[-1:]


def train_status(run_dir: str) -> dict[str, Any]:
    """Steps done of a train run, its newest checkpoint, this run's samples/s and the ETA.

    The rate is the latest logged window's, and only when that window was trained by the run
    now going (after its ``start_step``): a resumed run does not count the steps it inherited.
    """
    stage = StageDir(run_dir, marker_dir="markers")
    rank0_uri = stage.path("workers", "rank-0.json")
    rank0 = storage.read_json(rank0_uri) if storage.exists(rank0_uri) else {}
    rows = _jsonl(stage.path("metrics.jsonl"))
    complete = stage.succeeded()
    last = rows[-1] if rows else {}
    start = int(rank0.get("start_step", 0))
    step = int(last.get("step", start))
    total = rank0.get("total_steps")
    checkpoint = None
    snapshot_uri = stage.path("checkpoint_manager_snapshot.json")
    if storage.exists(snapshot_uri):
        results = storage.read_json(snapshot_uri).get("checkpoint_results") or []
        if results:
            checkpoint = {
                "step": results[-1].get("metrics", {}).get("step"),
                "folder": results[-1].get("checkpoint_dir_name"),
            }
    samples_per_s = last.get("samples_per_s") if step > start else None
    eta = None
    if samples_per_s and total and not complete and rank0.get("global_batch"):
        eta = (int(total) - step) * int(rank0["global_batch"]) / samples_per_s
    return {
        "stage": run_dir,
        "kind": "train",
        "complete": complete,
        "started": bool(rank0),
        "steps_done": int(total) if complete and total else step,
        "steps_total": total,
        "resumed_from_step": start,
        "last_checkpoint": checkpoint,
        "samples_per_s": round(samples_per_s, 1) if samples_per_s else None,
        "eta_s": round(eta, 1) if eta is not None else None,
        "loss": last.get("loss"),
        "final": stage.path("final") if complete else None,
        "failures": {u: _last_failure(f) for u, f in stage.failed_units().items()},
    }


def eval_status(eval_dir: str) -> dict[str, Any]:
    """Parts done / pending / failed of an eval folder, and the scores once it is finished."""
    stage = StageDir(eval_dir, marker_dir="markers")
    info = storage.read_json(stage.path(RUN_RECORD))
    total = info.get("parts")
    done = len(stage.done_units())
    complete = stage.succeeded()
    scores = None
    if complete and storage.exists(stage.path("metrics.json")):
        metrics = storage.read_json(stage.path("metrics.json"))
        scores = {"student": metrics["student"]["miou"]}
        scores.update({m: v["miou"] for m, v in metrics.get("baselines", {}).items()})
    return {
        "stage": eval_dir,
        "kind": "eval",
        "complete": complete,
        "checkpoint": info.get("checkpoint"),
        "parts_total": total,
        "parts_done": done,
        "parts_pending": (total - done) if total is not None else None,
        "images": info.get("images"),
        "miou": scores,
        "failures": {u: _last_failure(f) for u, f in stage.failed_units().items()},
    }


def folder_kind(uri: str) -> str:
    """extract | train | eval | root (a ``storage.root`` with stage folders) | unknown;
    FileNotFoundError when nothing is there."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} does not exist")
    if storage.exists(storage.join(uri, "plan.json")):
        return "extract"
    if storage.exists(storage.join(uri, RUN_RECORD)):
        stage = storage.read_json(storage.join(uri, RUN_RECORD)).get("stage")
        if stage in ("train", "eval"):
            return stage
    if stage_folders(uri):
        return "root"
    return "unknown"


def stage_folders(root: str) -> list[tuple[str, str]]:
    """(kind, folder) of every stage folder below a ``storage.root``."""
    out = []
    for sub, depth in (("extract", 1), ("train", 1), ("eval", 2)):
        base = storage.join(root, sub)
        if not storage.exists(base):
            continue
        fs, path = storage.fs_and_path(base)
        level = [p for p in fs.ls(path, detail=False) if fs.isdir(p)]
        if depth == 2:
            level = [q for p in level for q in fs.ls(p, detail=False) if fs.isdir(q)]
        for p in sorted(level):
            uri = storage.join(base, p[len(path) :].lstrip("/"))
            kind = folder_kind(uri)
            if kind in ("extract", "train", "eval"):
                out.append((kind, uri))
    return out


def print_status(stage_dir: str, verify: str | None = None) -> int:
    """Human-readable status of a stage folder or of every stage below a ``storage.root``;
    exit code 1 when units are recorded as failed, 2 for a folder that holds no stage."""
    kind = folder_kind(stage_dir)
    if kind == "root":
        folders = stage_folders(stage_dir)
        codes = [_print_one(k, uri, verify) for k, uri in folders]
        return max(codes)
    if kind == "unknown":
        print(
            f"zeroseg status: {stage_dir} is not a stage folder and holds none: expected an "
            "extract folder (plan.json), a train run or eval folder (config.json), or a "
            "storage.root with some of them",
            file=sys.stderr,
        )
        return 2
    return _print_one(kind, stage_dir, verify)


def _print_verdict(uri: str, mode: str) -> int:
    from .cache_verify import verify_cache

    verdict = verify_cache(uri, mode)
    what = "checksums" if mode == "full" else "presence and sizes"
    if verdict.unverifiable:
        print("  verify  not possible: the cache was made before caches recorded their objects")
        return 0
    if verdict.ok:
        print(f"  verify  ok: {verdict.checked_objects} objects ({what})")
        return 0
    for shard, why in sorted(verdict.shards.items()):
        print(f"  damaged shard {shard}: {why}")
    for problem in verdict.stage:
        print(f"  damaged {problem}")
    print(
        "  repair  rerun the extract stage with the same config: it recomputes the damaged "
        "shards and finalizes the cache again"
    )
    return 1


def _print_one(kind: str, uri: str, verify: str | None = None) -> int:
    if kind == "train":
        code = _print_train(train_status(uri))
    elif kind == "eval":
        code = _print_eval(eval_status(uri))
    else:
        code = _print_extract(uri)
        if verify:
            code = max(code, _print_verdict(uri, verify))
    line = lease_line(uri)
    if line:
        print(f"  writer  {line}")
    return code


def lease_line(uri: str) -> str | None:
    """Who holds the folder's lease (the run writing it now), if anyone."""
    from .lease import LEASE, holder_gone

    path = storage.join(uri, LEASE)
    if not storage.exists(path):
        return None
    try:
        held = storage.read_json(path)
    except ValueError:
        return "a damaged lease (the next run takes it over)"
    age = time.time() - float(held.get("heartbeat_unix", 0))
    who = f"host {held.get('host')}, pid {held.get('pid')}, heartbeat {age:.0f} s ago"
    gone = holder_gone(held)
    return f"{who} (gone: {gone}; the next run takes over)" if gone else f"{who} (running)"


def _print_failures(s: dict[str, Any], unit: str) -> int:
    for u, last in sorted(s["failures"].items()):
        print(f"  failed  {unit} {u}: {last[0] if last else '?'}")
    if s["failures"]:
        print(f"  tracebacks in {storage.join(s['stage'], FAILED_DIR)}/")
    return 1 if s["failures"] else 0


def _print_train(s: dict[str, Any]) -> int:
    state = "complete" if s["complete"] else ("training" if s["started"] else "not started")
    print(f"{s['stage']}: train, {state}")
    total = s["steps_total"] if s["steps_total"] is not None else "?"
    resumed = f", resumed at step {s['resumed_from_step']}" if s["resumed_from_step"] else ""
    print(f"  steps   {s['steps_done']}/{total}{resumed}")
    if s["last_checkpoint"]:
        ck = s["last_checkpoint"]
        print(f"  checkpoint at step {ck['step']}: {ck['folder']}")
    if s["samples_per_s"]:
        print(f"  rate    {s['samples_per_s']} samples/s in this run")
    if s["eta_s"] is not None:
        print(f"  ETA     {s['eta_s']:.0f} s at this run's rate")
    if s["final"]:
        print(f"  final   {s['final']}")
    return _print_failures(s, "step")


def _print_eval(s: dict[str, Any]) -> int:
    state = "complete" if s["complete"] else "incomplete"
    print(f"{s['stage']}: eval, {state}")
    total = s["parts_total"] if s["parts_total"] is not None else "?"
    pending = s["parts_pending"] if s["parts_pending"] is not None else "?"
    print(f"  parts   {s['parts_done']}/{total} done, {pending} pending")
    if s["miou"]:
        print("  mIoU    " + ", ".join(f"{m} {v * 100:.1f}%" for m, v in s["miou"].items()))
    return _print_failures(s, "part")


def _print_extract(stage_dir: str) -> int:
    s = stage_status(stage_dir)
    state = "complete" if s["complete"] else "incomplete"
    print(f"{s['stage']}: extract, {state}")
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
