"""run: world -> teacher -> extract -> train -> eval, each skipped when already done."""

from __future__ import annotations

import json
import time
from typing import Any

from zeroseg import storage
from zeroseg.config import Config, config_to_dict

from .runner import SUCCESS, code_version, write_run_info


def ensure_world(cfg: Config, log=print) -> None:
    """Generate the shapes-world splits the config points at, unless they already exist."""
    from zeroseg.data.shapes import WorldSettings, generalisation_world, write_split

    if not cfg.world.generate:
        return
    w = cfg.world
    settings = WorldSettings(image_size=w.image_size)
    splits = [
        ("train", cfg.data.train, w.n_train, w.seed, False, settings),
        ("val", cfg.data.val, w.n_val, w.seed + 1, True, settings),
        ("bench", cfg.data.bench, w.n_bench, w.seed + 2, True, settings),
    ]
    if w.n_generalisation > 0:
        held_out = generalisation_world(w.generalisation_image_size)
        splits.append(
            (
                "generalisation",
                cfg.data.generalisation,
                w.n_generalisation,
                w.seed + 3,
                True,
                held_out,
            )
        )
    for name, uri, n, seed, labeled, world in splits:
        if storage.exists(storage.join(uri, SUCCESS)):
            _check_existing_split(name, uri, n, seed, world)
            continue
        log(f"[world] writing {n} {'labeled' if labeled else 'unlabeled'} {name} scenes -> {uri}")
        write_split(uri, n=n, seed=seed, labeled=labeled, settings=world, progress=True)
        storage.write_text(storage.join(uri, SUCCESS), f"{n}\n")


def generalisation_summary(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """mIoU of every method on the generalisation split (each with the rule it got on val) and
    how much of the benchmark mIoU the student keeps there."""
    student = metrics["student"]
    if "generalisation" not in student:
        return None
    return {
        "num_images": metrics.get("num_generalisation_images"),
        "student_miou": student["generalisation"]["miou"],
        "student_per_class": student["generalisation"]["per_class"],
        "baselines_miou": {n: b["generalisation"]["miou"] for n, b in metrics["baselines"].items()},
        "student_retention": student["generalisation"]["miou"] / max(student["miou"], 1e-9),
    }


def _check_existing_split(name: str, uri: str, n: int, seed: int, settings) -> None:
    """A finished split written with other world settings must not be reused silently."""
    meta_uri = storage.join(uri, "world.json")
    if not storage.exists(meta_uri):
        return
    meta = storage.read_json(meta_uri)
    want = {"n": n, "seed": seed, "settings": settings.to_dict()}
    have = {k: meta.get(k) for k in want}
    if json.loads(json.dumps(have)) != json.loads(json.dumps(want)):
        diff = sorted(k for k in want if json.dumps(have[k]) != json.dumps(want[k]))
        raise ValueError(
            f"the {name} split at {uri} was generated with other world settings ({', '.join(diff)} "
            "differ from this config); remove that folder to regenerate it, or use another "
            "storage.root"
        )


def summarize(
    metrics: dict[str, Any],
    teacher: dict[str, Any],
    final_uri: str,
    timings: dict[str, float],
    job: str | None = None,
) -> dict[str, Any]:
    out = {
        "job": job,
        "student": {
            "miou": metrics["student"]["miou"],
            "per_class": metrics["student"]["per_class"],
            "pixel_accuracy": metrics["student"]["pixel_accuracy"],
            "rule": metrics["student"]["rule"],
        },
        "baselines": {
            name: {"miou": m["miou"], "per_class": m["per_class"], "rule": m["rule"]}
            for name, m in metrics["baselines"].items()
        },
        "checkpoint": final_uri,
        "teacher": teacher["pretrained"],
        "teacher_model": teacher["model"],
        "teacher_accuracy": teacher.get("accuracy", {}),
        "benchmark": metrics["benchmark"],
        "num_images": metrics["num_images"],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "code": code_version(),
    }
    generalisation = generalisation_summary(metrics)
    if generalisation:
        out["generalisation"] = generalisation
    return out


def format_table(summary: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """The results table ``zeroseg run`` prints. ``ref``: the recorded run of the same job
    (``zeroseg/assets/reference_results.json``, looked up by ``summary["job"]`` unless
    ``reference`` is given), ``-`` where it has no number."""
    from zeroseg.reference import format_reference, reference_for, reference_results

    job = summary.get("job")
    if reference is None:
        reference = reference_for(job) or {}
    ref = reference.get("miou_pct") or {}
    rows = [("student", summary["student"]["miou"], summary["student"]["rule"])]
    rows += [(n, b["miou"], b["rule"]) for n, b in summary["baselines"].items()]
    lines = [f"{'method':<16} {'mIoU':>7} {'ref':>7}  background rule (chosen on val)", "-" * 60]
    lines += [f"{n:<16} {m * 100:6.1f}% {format_reference(ref.get(n)):>7}  {r}" for n, m, r in rows]
    if any(v is not None for v in ref.values()):
        machine = reference_results()["source"].get("machine") or "machine not recorded"
        lines.append(f"ref: the recorded fresh-clone run of job {job!r} ({machine})")
    else:
        lines.append(f"ref: no recorded numbers for job {job!r} yet")
    per = summary["student"]["per_class"]
    lines.append(
        "student per-class IoU: "
        + ", ".join(f"{k} {'-' if v is None else f'{v * 100:.0f}%'}" for k, v in per.items())
    )
    gen = summary.get("generalisation")
    if gen:
        gref = reference.get("generalisation_miou_pct") or {}
        lines += [
            "",
            f"generalisation split ({gen['num_images']} scenes: held-out colours, backgrounds "
            "and object sizes, another resolution; rules chosen on val)",
            f"{'method':<16} {'mIoU':>7} {'ref':>7}",
        ]
        gen_rows = {"student": gen["student_miou"], **gen["baselines_miou"]}
        lines += [
            f"{n:<16} {m * 100:6.1f}% {format_reference(gref.get(n)):>7}"
            for n, m in gen_rows.items()
        ]
        lines.append(f"the student keeps {gen['student_retention']:.0%} of its benchmark mIoU")
    acc = summary.get("teacher_accuracy") or {}
    if acc:
        lines.append(
            f"teacher zero-shot accuracy: single {acc['single']:.1%}, cell {acc['cell']:.1%}"
        )
    lines.append(
        "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in summary["timings_s"].items())
    )
    return "\n".join(lines)


def run_all(cfg: Config, log=print) -> dict[str, Any]:
    from .cluster import ensure_ray
    from .evaluate import run_eval
    from .extract import run_extract
    from .teachers import resolve_teacher
    from .train import run_train

    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - t0
        return out

    write_run_info(cfg.storage.root, "run", config_to_dict(cfg))
    timed("world", ensure_world, cfg, log)
    teacher = timed("teacher", resolve_teacher, cfg, log)
    timed("ray_start", ensure_ray, cfg)
    cache = timed("extract", run_extract, cfg, log, teacher)
    final = timed("train", run_train, cfg, cache, log)
    metrics = timed("eval", run_eval, cfg, final, log)
    timings["total"] = time.perf_counter() - t_all
    summary = summarize(metrics, teacher, final, timings, job=cfg.train.name)
    storage.write_json(storage.join(cfg.storage.root, "summary.json"), summary)
    log("\n" + format_table(summary))
    log(f"\nsummary: {storage.join(cfg.storage.root, 'summary.json')}")
    return summary
