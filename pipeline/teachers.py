"""Which teacher checkpoint a run uses: a user's CLIP, the toy teacher the package ships, or a
toy teacher of another recipe trained once and cached.

The toy teacher is defined by its recipe (step count, seed, settings), never by a time budget.
The package ships the weights of the default recipe (``zeroseg/assets``) with the record of how
they were made, so a fresh machine starts from the same teacher; ``zeroseg teacher-pretrain``
reproduces them, or trains another recipe into ``teacher.cache_dir``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from zeroseg import storage
from zeroseg.config import Config
from zeroseg.toy_assets import (
    SHIPPED,
    TOY_MODEL,
    TOY_MODELS,
    sha256_file,
    shipped_record,
    verified_shipped_weights,
)

from .runner import code_version, fingerprint, now

STATE_FILE = "training-state.pt"  # the resumable state of an unfinished toy-teacher schedule


def toy_settings(cfg: Config, stop_at: int | None = None):
    """The ``ToyTeacherSettings`` a config asks for."""
    from zeroseg.toy_teacher import ToyTeacherSettings

    if "model" in cfg.teacher.pretrain_overrides:
        raise ValueError("teacher.pretrain_overrides.model: set teacher.model instead")
    return ToyTeacherSettings(
        model=cfg.teacher.model,
        steps=cfg.teacher.pretrain_steps,
        seed=cfg.teacher.pretrain_seed,
        stop_at=stop_at,
        **dict(cfg.teacher.pretrain_overrides),
    )


def _canonical(d: Any) -> Any:
    return json.loads(json.dumps(d, sort_keys=True))


def is_shipped_recipe(cfg: Config, record: dict[str, Any] | None = None) -> bool:
    record = record or shipped_record()
    return record is not None and _canonical(toy_settings(cfg).recipe()) == record["recipe"]


def toy_teacher_dir(cfg: Config) -> str:
    """Cache folder of the config's toy-teacher recipe."""
    recipe = toy_settings(cfg).recipe()
    return storage.join(cfg.teacher.cache_dir, f"{cfg.teacher.model}-{fingerprint(recipe)}")


def _info(record: dict[str, Any], weights: str) -> dict[str, Any]:
    return {
        "model": record.get("model", TOY_MODEL),
        "pretrained": weights,
        "accuracy": record["accuracy"],
        "steps": record["steps"],
    }


def pretrain_toy_teacher(
    cfg: Config,
    force: bool = False,
    out_dir: str | None = None,
    stop_at: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Train (or reuse) the toy teacher of the config's recipe; returns its checkpoint URI and
    accuracy. ``out_dir`` writes it there instead of the cache; ``stop_at`` ends the run after
    that many steps of the same schedule (a shortened reproduction). The training state is kept
    in ``out_dir`` until the whole schedule is done, so a killed run or a piece that stopped
    early continues where it ended. Either way the result is compared with the shipped
    teacher's record when the recipe is the shipped one."""
    from zeroseg import toy_teacher

    settings = toy_settings(cfg, stop_at)
    out_dir = out_dir or toy_teacher_dir(cfg)
    if stop_at is not None and out_dir == toy_teacher_dir(cfg):
        out_dir = storage.join(out_dir, f"stop-at-{stop_at}")  # never mistaken for the full run
    ckpt = storage.join(out_dir, "model.safetensors")
    info_uri = storage.join(out_dir, "teacher.json")
    state_uri = storage.join(out_dir, STATE_FILE)
    last = stop_at or settings.steps
    recipe = _canonical(settings.recipe())
    if not force and storage.exists(info_uri) and storage.exists(ckpt):
        info = storage.read_json(info_uri)
        if info.get("steps") == last and info.get("recipe") == recipe:
            acc = info["accuracy"]
            log(
                f"[teacher] cached toy teacher {ckpt} "
                f"(single {acc['single']:.1%}, cell {acc['cell']:.1%})"
            )
            return info
        log(
            f"[teacher] {out_dir} holds a teacher of {info.get('steps')} steps"
            + ("" if info.get("recipe") == recipe else " of another recipe")
            + f"; training this one ({last} steps)"
        )
    if force and storage.exists(state_uri):
        storage.remove(state_uri)
    storage.makedirs(out_dir)
    log(
        f"[teacher] training the toy CLIP teacher: {last} of "
        f"{settings.steps} steps, seed {settings.seed} -> {out_dir}"
    )
    local_ckpt = (
        ckpt
        if storage.is_local(ckpt)
        else os.path.join(tempfile.gettempdir(), f"zeroseg-toy-{os.getpid()}.safetensors")
    )
    # resumable: a killed run, or a piece of the schedule (--stop-at), continues from here
    result = toy_teacher.pretrain(
        local_ckpt, settings, progress=True, log=log, state_path=state_uri
    )
    digest = sha256_file(Path(local_ckpt))
    outline = outline_cell_accuracy(local_ckpt, settings)  # on the local file, before upload
    if local_ckpt != ckpt:
        with open(local_ckpt, "rb") as f:
            storage.write_bytes(ckpt, f.read())
        os.remove(local_ckpt)
    accuracy = run_accuracy(result, outline)
    info = {
        "model": settings.model,
        "pretrained": ckpt,
        "sha256": digest,
        "accuracy": accuracy,
        "steps": int(result["steps"]),
        "recipe": _canonical(settings.recipe()),
        "curve": result["curve"],
        "seconds": result["seconds"],
        "created_at": now(),
        "code": code_version(),
        "machine": machine(),
    }
    storage.write_json(info_uri, info)
    if last == settings.steps:  # the whole schedule is done: nothing left to continue
        storage.remove(state_uri)
    log(
        f"[teacher] zero-shot shape accuracy: single {accuracy['single']:.1%}, cell "
        f"{accuracy['cell']:.1%}; generalisation split single {accuracy['gen_single']:.1%}, "
        f"cell {accuracy['gen_cell']:.1%} ({info['seconds']['total']:.0f} s)"
    )
    compare_with_shipped(info, log)
    return info


def run_accuracy(result: dict[str, Any], outline: dict[str, float]) -> dict[str, float]:
    """Every accuracy a training run measured at its last step (the curve's keys, so the
    shipped record compares key for key) plus the outline cells."""
    final = result["curve"][-1]
    return {**{k: float(v) for k, v in final.items() if k != "step"}, **outline}


def machine() -> dict[str, Any]:
    """Where a teacher was trained: another CPU kind drifts to other weights whose accuracies
    are a few points away (docs/results.md)."""
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernels": torch.backends.cpu.get_cpu_capability(),  # the instruction set torch picked
        "torch": torch.__version__,
        "torch_threads_recipe": "fixed by the recipe's `threads`",
    }


def cpu_model() -> str:
    """The CPU's model name (Linux reports it in /proc/cpuinfo; elsewhere what Python knows)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def outline_cell_accuracy(weights: str, settings) -> dict[str, float]:
    """Cell accuracy on the cells that show part of the object's outline (at least 10% of the
    cell is background), in both worlds: a cell inside a large object is one flat colour, names
    no shape, and caps the plain cell accuracy below 100% for any teacher."""
    from zeroseg.data.shapes import generalisation_world
    from zeroseg.teacher import Teacher
    from zeroseg.toy_teacher import eval_sets, zero_shot_accuracy

    teacher = Teacher(settings.model, weights)
    out = {}
    for key, world in (("cell_outline", settings.world), ("gen_cell_outline", None)):
        world = world or generalisation_world(96)
        sets = eval_sets(world, settings.eval_n, min_background=0.1)
        out[key] = round(zero_shot_accuracy(teacher, sets=sets)["cell"], 4)
    return out


def compare_with_shipped(info: dict[str, Any], log=print) -> dict[str, Any] | None:
    """Accuracy differences (points) against the shipped teacher at the same step, when
    ``info`` follows the shipped recipe; None otherwise."""
    record = shipped_record()
    if record is None or info["recipe"] != record["recipe"]:
        return None
    step = info["steps"]
    ref = next((p for p in record["curve"] if p["step"] == step), None)
    if ref is None:
        log(f"[teacher] the shipped record has no accuracy at step {step} to compare with")
        return None
    acc = info["accuracy"]
    diff = {k: round(100 * (acc[k] - ref[k]), 2) for k in ref if k != "step" and k in acc}
    # a record of an older release may lack an accuracy this one measures, or the other way
    # round: say which ones, rather than compare fewer without a word
    unmatched = sorted({k for k in ref if k != "step"} ^ set(acc))
    same = info.get("sha256") == record["sha256"] if step == record["steps"] else None
    log(
        f"[teacher] against the shipped teacher's record at step {step}: "
        + ", ".join(f"{k} {v:+.1f} pt" for k, v in diff.items())
        + ("" if same is None else f"; weights identical: {'yes' if same else 'no'}")
        + (f"; not in both, so not compared: {', '.join(unmatched)}" if unmatched else "")
    )
    return {"step": step, "points": diff, "identical_weights": same, "not_compared": unmatched}


def resolve_teacher(cfg: Config, log=print) -> dict[str, Any]:
    """``{"model", "pretrained", "accuracy"?}`` for the configured teacher (no Ray needed)."""
    if cfg.teacher.pretrained:
        return {"model": cfg.teacher.model, "pretrained": cfg.teacher.pretrained}
    if cfg.teacher.model in TOY_MODELS:
        record = shipped_record()
        if record is not None and is_shipped_recipe(cfg, record):
            verified_shipped_weights(record)  # refuse a damaged asset before any work
            return _info(record, SHIPPED)
        return pretrain_toy_teacher(cfg, log=log)
    raise ValueError(
        "teacher.pretrained is empty: give an open_clip pretrained tag, a local checkpoint or an "
        f"fsspec URI for teacher.model={cfg.teacher.model!r} (random weights are never used "
        "silently)"
    )


def teacher_identity(teacher: dict[str, Any]) -> dict[str, Any]:
    """What of a teacher changes its embeddings: name, checkpoint and the file's identity."""
    pre = teacher["pretrained"]
    if pre == SHIPPED:  # the same bytes wherever the package is installed
        return {
            "model": teacher["model"],
            "pretrained": SHIPPED,
            "sha256": shipped_record()["sha256"],
        }
    ident = {"model": teacher["model"], "pretrained": pre}
    if pre and ("/" in pre or pre.endswith((".pt", ".bin", ".safetensors"))):
        try:
            ident["file"] = storage.file_signature(pre)
        except FileNotFoundError:
            raise FileNotFoundError(f"teacher checkpoint not found: {pre}") from None
    return ident
