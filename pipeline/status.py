"""``zeroseg status``: what a stage folder holds, without touching Ray."""

from __future__ import annotations

from . import storage
from .runner import StageDir


def stage_status(stage_dir: str) -> dict:
    """Done / pending shards, skip reasons and throughput of an extract folder."""
    stage = StageDir(stage_dir)
    plan_uri = stage.path("plan.json")
    if not storage.exists(plan_uri):
        raise FileNotFoundError(f"{stage_dir} is not an extract stage folder (no plan.json)")
    plan = storage.read_json(plan_uri)
    total = int(plan["num_shards"])
    done = sorted(stage.done_units())
    markers = [stage.read_marker(s) for s in done]
    images = sum(m["ok"] + m["skipped"] for m in markers)
    busy = sum(m["seconds"]["total"] for m in markers)
    reasons: dict[str, int] = {}
    for m in markers:
        for k, v in m["skip_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    rate = images / busy if busy > 0 else 0.0
    remaining = len(plan["keys"]) - images
    return {
        "stage": stage_dir,
        "complete": stage.succeeded(),
        "shards_total": total,
        "shards_done": len(done),
        "shards_pending": total - len(done),
        "images_done": images,
        "images_total": len(plan["keys"]),
        "images_per_s_per_worker": round(rate, 2),
        "eta_s_one_worker": round(remaining / rate, 1) if rate else None,
        "skip_reasons": reasons,
    }


def print_status(stage_dir: str) -> int:
    s = stage_status(stage_dir)
    state = "complete" if s["complete"] else "incomplete"
    print(f"{s['stage']}: {state}")
    print(f"  shards  {s['shards_done']}/{s['shards_total']} done, {s['shards_pending']} pending")
    print(
        f"  images  {s['images_done']}/{s['images_total']} "
        f"({s['images_per_s_per_worker']} img/s per worker)"
    )
    if s["eta_s_one_worker"] and not s["complete"]:
        print(f"  ETA     {s['eta_s_one_worker']:.0f} s at one worker")
    if s["skip_reasons"]:
        print("  skipped " + ", ".join(f"{k}: {v}" for k, v in sorted(s["skip_reasons"].items())))
    return 0
