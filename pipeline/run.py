"""The one runner: world -> teacher -> extract -> train -> eval (every benchmark), each stage
driven through the stage protocol of :mod:`pipeline.runner` and skipped when finished.

``zeroseg run`` runs every stage; ``zeroseg extract`` / ``train`` / ``eval`` run one, finding
their finished upstream for the same config (or being told where it is); ``zeroseg ablate``
extracts once and trains and evaluates each variant; a submitted job runs these same commands
on the cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zeroseg import storage
from zeroseg.config import Config, config_to_dict

from .runner import SUCCESS, StageDir, code_version, write_run_info

STAGES = ("extract", "train", "eval")


def ensure_world(cfg: Config, log=print) -> None:
    """Generate the shapes-world splits the config points at, unless they already exist."""
    from zeroseg.data.shapes import WorldSettings, generalisation_world, write_split

    if not cfg.world.generate:
        return
    w = cfg.world
    sizes = {"size_range": tuple(w.object_sizes)} if w.object_sizes else {}
    settings = WorldSettings(image_size=w.image_size, **sizes)
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
    benchmarks: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``summary.json``: the first benchmark in full (student, baselines, generalisation);
    with several benchmarks, ``benchmarks`` holds every one's mIoUs."""
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
    if benchmarks and len(benchmarks) > 1:
        out["benchmarks"] = {
            name: {
                "num_images": m["num_images"],
                "student_miou": m["student"]["miou"],
                "baselines_miou": {n: b["miou"] for n, b in m["baselines"].items()},
            }
            for name, m in benchmarks.items()
        }
    return out


def _in_method_order(baselines: dict[str, Any]) -> list[tuple[str, Any]]:
    """metrics.json sorts its keys; tables list the methods in :data:`BASELINE_METHODS` order."""
    from zeroseg.config import BASELINE_METHODS

    order = {m: i for i, m in enumerate(BASELINE_METHODS)}
    return sorted(baselines.items(), key=lambda kv: order.get(kv[0], len(order)))


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
    rows += [(n, b["miou"], b["rule"]) for n, b in _in_method_order(summary["baselines"])]
    lines = [f"{'method':<16} {'mIoU':>7} {'ref':>7}  background rule (chosen on val)", "-" * 60]
    lines += [f"{n:<16} {m * 100:6.1f}% {format_reference(ref.get(n)):>7}  {r}" for n, m, r in rows]
    if any(v is not None for v in ref.values()):
        machine = reference_results()["source"].get("machine") or "machine not recorded"
        lines.append(f"ref: the recorded fresh-clone run of job {job!r} ({machine})")
    else:
        lines.append(f"ref: no recorded numbers for job {job!r} yet")
    over = summary.get("seeds")
    if over:
        lines.append(_seed_line("student", over["student_miou"], over["seeds"]))
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
        gen_rows = {"student": gen["student_miou"], **dict(_in_method_order(gen["baselines_miou"]))}
        lines += [
            f"{n:<16} {m * 100:6.1f}% {format_reference(gref.get(n)):>7}"
            for n, m in gen_rows.items()
        ]
        if over and "generalisation_student_miou" in over:
            lines.append(_seed_line("student", over["generalisation_student_miou"], over["seeds"]))
        lines.append(f"the student keeps {gen['student_retention']:.0%} of its benchmark mIoU")
    for name, b in (summary.get("benchmarks") or {}).items():
        if name == summary["benchmark"]:
            continue
        lines += ["", f"benchmark {name} ({b['num_images']} images)", f"{'method':<16} {'mIoU':>7}"]
        rows = {"student": b["student_miou"], **dict(_in_method_order(b["baselines_miou"]))}
        lines += [f"{n:<16} {m * 100:6.1f}%" for n, m in rows.items()]
    acc = summary.get("teacher_accuracy") or {}
    if acc:
        lines.append(
            f"teacher zero-shot accuracy: single {acc['single']:.1%}, cell {acc['cell']:.1%}"
        )
    lines.append(
        "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in summary["timings_s"].items())
    )
    return "\n".join(lines)


def _seed_line(name: str, stats: dict[str, Any], seeds: list[int]) -> str:
    per = ", ".join(f"{v * 100:.1f}" for v in stats["per_seed"])
    return (
        f"{name + f' ({len(seeds)} seeds)':<16} {stats['mean'] * 100:6.1f}% mean, "
        f"std {stats['std'] * 100:.1f}, range {stats['min'] * 100:.1f}-{stats['max'] * 100:.1f} "
        f"(seeds {', '.join(map(str, seeds))}: {per}; the row above is seed {seeds[0]})"
    )


@dataclass
class Outputs:
    """What :func:`run_stages` produced or found: the teacher, the cache, the final weights,
    the metrics of every benchmark, and the seconds each step took."""

    teacher: dict[str, Any] | None = None
    cache: str | None = None
    final: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def finished_cache(cfg: Config, teacher: dict[str, Any], command: str = "zeroseg extract") -> str:
    """The finished cache this config's extract stage produces; an actionable error if missing."""
    from .extract import ExtractStage

    stage = ExtractStage(cfg, teacher, log=lambda *_: None).locate()
    if not stage.succeeded():
        raise FileNotFoundError(
            f"no finished teacher cache for this config at {storage.normalize(stage.uri)} (no "
            f"_SUCCESS for fingerprint {stage.uri.rstrip('/').rsplit('/', 1)[-1]}); run "
            f"`{command}` first"
        )
    return stage.uri


def finished_final(cfg: Config, cache: str, command: str = "zeroseg train") -> str:
    """The final/ folder of this config's finished training run on ``cache``."""
    from zeroseg.checkpoint import WEIGHTS

    from .train import TrainStage

    stage = TrainStage(cfg, cache, log=lambda *_: None)
    legacy = storage.exists(storage.join(stage.final_uri, WEIGHTS))  # finished before markers
    if not stage.locate().succeeded() and not legacy:
        raise FileNotFoundError(
            f"no finished training run for this config at {stage.final_uri}; run `{command}` "
            "first, or pass --checkpoint"
        )
    return stage.final_uri


def require_finished(uri: str, what: str, command: str) -> None:
    """An upstream stage folder given by the user must carry ``_SUCCESS``."""
    if not StageDir(uri).succeeded():
        raise FileNotFoundError(
            f"the {what} at {storage.normalize(uri)} is not finished (no _SUCCESS); run "
            f"`{command}` first (it resumes where it stopped)"
        )


def require_final(final: str, command: str) -> None:
    """A checkpoint folder given by the user must hold the final weights and their config."""
    from zeroseg.checkpoint import CONFIG, WEIGHTS, check_weights

    for name in (WEIGHTS, CONFIG):
        if not storage.exists(storage.join(final, name)):
            raise FileNotFoundError(
                f"no finished training run at {storage.normalize(final)} ({name} is missing); "
                f"run `{command}` first, or pass --checkpoint <a run's final/ folder>"
            )
    check_weights(final)  # before Ray starts: a damaged checkpoint is named, not planned


def run_stages(
    cfg: Config,
    stages: Sequence[str] = STAGES,
    log: Callable[[str], None] = print,
    cache: str | None = None,
    checkpoint: str | None = None,
    teacher: dict[str, Any] | None = None,
    commands: dict[str, str] | None = None,
    world: bool = False,
) -> Outputs:
    """Run ``stages`` (in pipeline order) for ``cfg``. A stage that is not run but is needed
    downstream must be finished already: ``cache`` / ``checkpoint`` name it, else it is found
    by the config's fingerprints, else the error names the command to run (``commands``).
    ``world``: first generate the shapes-world splits the config asks for (``zeroseg run`` and
    ``ablate``; a stage command never writes data, so it cannot touch a user's ``data.train``)."""
    from .cluster import ensure_ray
    from .evaluate import run_eval
    from .extract import run_extract
    from .teachers import resolve_teacher
    from .train import run_train

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    wanted = [s for s in STAGES if s in stages]
    commands = {s: f"zeroseg {s}" for s in STAGES} | (commands or {})
    out = Outputs(teacher=teacher, cache=cache, final=checkpoint)

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        out.timings[name] = out.timings.get(name, 0.0) + time.perf_counter() - t0
        return value

    if world:
        timed("world", ensure_world, cfg, log)
    needs_cache = "extract" in wanted or ("train" in wanted and cache is None)
    needs_cache = needs_cache or ("eval" in wanted and checkpoint is None and cache is None)
    if needs_cache and out.teacher is None:
        out.teacher = timed("teacher", resolve_teacher, cfg, log)
    # every upstream that is not run here is found and checked before Ray starts
    if "train" in wanted and cache is not None:
        require_finished(cache, "teacher cache", commands["extract"])
    if "extract" not in wanted and needs_cache and out.cache is None:
        try:
            out.cache = finished_cache(cfg, out.teacher, commands["extract"])
        except FileNotFoundError as exc:
            if "train" in wanted:
                raise
            raise FileNotFoundError(f"{exc}, then `{commands['train']}`") from None
    if "train" in wanted and "extract" not in wanted:
        from .train import check_cache

        check_cache(cfg, out.cache)  # a cache that does not fit the config: the key named
    if "eval" in wanted and "train" not in wanted:
        if out.final is None:
            out.final = finished_final(cfg, out.cache, commands["train"])
        require_final(out.final, commands["train"])
    timed("ray_start", ensure_ray, cfg)
    if "extract" in wanted:
        out.cache = timed("extract", run_extract, cfg, log, out.teacher)
    if "train" in wanted:
        out.final = timed("train", run_train, cfg, out.cache, log)
    if "eval" in wanted:
        from zeroseg.config import eval_benchmarks

        for benchmark in eval_benchmarks(cfg.eval):
            out.metrics[benchmark] = timed("eval", run_eval, cfg, out.final, log, benchmark)
    return out


def seed_config(cfg: Config, seed: int, baselines: bool) -> Config:
    """The single-seed run of ``seed`` (its own run folder, as ``train.seed=<seed>`` gives);
    without ``baselines`` its eval scores the student and the floor only (the teacher-only
    methods do not depend on the student's seed)."""
    import dataclasses

    train = dataclasses.replace(cfg.train, seed=seed, seeds=[])
    ev = cfg.eval if baselines else dataclasses.replace(cfg.eval, baselines=["all_background"])
    return dataclasses.replace(cfg, train=train, eval=ev)


def seed_summary(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and range of the students' mIoU over seeds (and of their
    generalisation-split mIoU where it was scored)."""
    import statistics

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }

    out: dict[str, Any] = {"seeds": list(per_seed)}
    bench = [m["student"]["miou"] for m in per_seed.values()]
    out["student_miou"] = {"per_seed": bench, **stats(bench)}
    gens = [generalisation_summary(m) for m in per_seed.values()]
    if all(gens):
        values = [g["student_miou"] for g in gens]
        out["generalisation_student_miou"] = {"per_seed": values, **stats(values)}
    return out


def run_all(cfg: Config, log=print) -> dict[str, Any]:
    """``zeroseg run``: every stage, then ``summary.json`` and the results table; with
    ``train.seeds``, one student per seed on the one cache and their mean and spread."""
    t_all = time.perf_counter()
    write_run_info(cfg.storage.root, "run", config_to_dict(cfg))
    seeds = list(cfg.train.seeds)
    out = run_stages(seed_config(cfg, seeds[0], True) if seeds else cfg, STAGES, log, world=True)
    per_seed = {seeds[0]: next(iter(out.metrics.values()))} if seeds else {}
    for i, seed in enumerate(seeds[1:], start=2):
        log(f"[run] seed {seed} ({i}/{len(seeds)}): another student on the same cache")
        more = run_stages(
            seed_config(cfg, seed, False), ["train", "eval"], log, out.cache, teacher=out.teacher
        )
        per_seed[seed] = next(iter(more.metrics.values()))
        for k, v in more.timings.items():
            out.timings[k] = out.timings.get(k, 0.0) + v
    timings = {k: out.timings.get(k, 0.0) for k in ("world", "teacher", "ray_start", *STAGES)}
    timings["total"] = time.perf_counter() - t_all
    first, *_ = out.metrics.values()
    summary = summarize(first, out.teacher, out.final, timings, cfg.train.name, out.metrics)
    if seeds:
        summary["seeds"] = seed_summary(per_seed)
    storage.write_json(storage.join(cfg.storage.root, "summary.json"), summary)
    log("\n" + format_table(summary))
    log(f"\nsummary: {storage.join(cfg.storage.root, 'summary.json')}")
    return summary
