"""eval: parallel Ray tasks score the student and the teacher-only baselines.

One task per (split, image part) computes, for every method and every background rule of the
sweep, a confusion matrix, and writes them as one ``parts/<split>-NNNN.npz`` (written last,
so an existing part is a finished unit and reruns skip it). Finalize picks each method's
background rule on the validation split, reports the benchmark split with that rule, and draws
overlays. The same harness runs every method, so the comparison is like for like.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from zeroseg.config import Config, config_to_dict

from . import storage
from .runner import StageDir, code_version, fingerprint, now, write_run_info

PROTOCOL_VERSION = 1


def protocol(cfg: Config, class_names: list[str], input_size: int) -> dict[str, Any]:
    """Everything that defines how a benchmark is scored; versioned and saved with metrics.

    The pinned protocol (``eval.protocol``, default the benchmark's name) fixes the background
    rule and the resize / sliding window; only a protocol that tunes on the validation split
    sweeps ``eval.background_rules``.
    """
    from zeroseg.protocols import load_protocol

    pinned = load_protocol(protocol_name(cfg)).resolved(input_size)
    tune = pinned.tuned_on_val and cfg.eval.tune_on_val
    if pinned.tuned_on_val:
        rules = list(cfg.eval.background_rules) if tune else list(cfg.eval.background_rules[:1])
    else:
        rules = [pinned.background]
    return {
        "name": cfg.eval.benchmark,
        "pinned": pinned.to_dict(),
        "version": PROTOCOL_VERSION,
        "classes": class_names,
        "templates": list(cfg.teacher.templates),
        "background_prompt": "background",
        "prob_scale": pinned.prob_scale,
        "background_rules": rules,
        "tune_on_val": tune,
        "rule_selection": "best mIoU on the validation split" if tune else "fixed",
        "dense_input_size": cfg.eval.dense_input_size or None,
        "input_size": (
            f"short side {pinned.short_side}, windows {pinned.window} / stride {pinned.stride}; "
            "predictions at the mask's resolution"
        ),
    }


def has_shifted_split(cfg: Config) -> bool:
    """The optional generalisation split is scored whenever it exists."""
    return bool(cfg.data.shifted) and storage.exists(storage.join(cfg.data.shifted, "classes.json"))


def protocol_name(cfg: Config) -> str:
    return cfg.eval.protocol or cfg.eval.benchmark


def _read_split(uri: str) -> tuple[list[str], list[str]]:
    classes = storage.read_json(storage.join(uri, "classes.json"))
    images = storage.list_files(storage.join(uri, "images"), (".png",))
    if not images:
        raise FileNotFoundError(f"no images under {uri}/images")
    return classes, images


def _mask_uri(image_uri: str) -> str:
    head, name = image_uri.rsplit("/", 1) if "/" in image_uri else ("", image_uri)
    return f"{head.rsplit('/', 1)[0]}/masks/{name}"


def load_pair(image_uri: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    image = np.array(Image.open(io.BytesIO(storage.read_bytes(image_uri))).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(_mask_uri(image_uri)))))
    return image, mask.astype(np.int64)


class Scorer:
    """Student + teacher + text embeddings, loaded once per task."""

    def __init__(
        self,
        final_uri: str,
        class_names: list[str],
        proto: dict[str, Any],
    ):
        from zeroseg.predict import text_embeddings
        from zeroseg.teacher import Teacher

        from .train import load_student

        self.student, self.info = load_student(final_uri)
        t = self.info["teacher"]
        self.teacher = Teacher(
            t["model"], t["pretrained"] or None, normalize=self.info.get("teacher_normalize", True)
        )
        # class_names[0] is the benchmark's background; the background prompt takes its place.
        self.text = text_embeddings(self.teacher, class_names[1:], proto["templates"])
        pinned = proto["pinned"]
        self.size = int(pinned["short_side"])
        self.window, self.stride = int(pinned["window"]), int(pinned["stride"])
        self.crop_size = int(self.info["views"]["crop_size"])
        self.dense_input_size = proto["dense_input_size"]

    def cosines(self, method: str, image: np.ndarray):
        from zeroseg.predict import method_cosines

        return method_cosines(
            method,
            image,
            self.text,
            student=self.student,
            teacher=self.teacher,
            size=self.size,
            dense_input_size=self.dense_input_size,
            window=self.window,
            stride=self.stride,
        )


def eval_part(
    final_uri: str,
    out_uri: str,
    images: list[str],
    class_names: list[str],
    proto: dict[str, Any],
    threads: int,
) -> str:
    """One task: confusion matrices ``(R, K, K)`` per method (R rules) for a list of images."""
    import torch

    from zeroseg.metrics import confusion_matrix
    from zeroseg.predict import METHODS, apply_rule

    torch.set_num_threads(max(1, threads))
    rules = proto["background_rules"]
    scorer = Scorer(final_uri, class_names, proto)
    k = len(class_names)
    conf = {m: np.zeros((len(rules), k, k), np.int64) for m in METHODS}
    for uri in images:
        image, mask = load_pair(uri)
        for m in METHODS:
            cos = scorer.cosines(m, image)
            for i, rule in enumerate(rules):
                labels = apply_rule(cos, rule, mask.shape, proto["prob_scale"])
                conf[m][i] += confusion_matrix(labels, mask, k)
    buf = io.BytesIO()
    np.savez(buf, **conf)
    storage.write_bytes(out_uri, buf.getvalue())
    return out_uri


def eval_fingerprint(cfg: Config, final_uri: str, proto: dict[str, Any]) -> str:
    weights = storage.join(final_uri, "model.safetensors")
    return fingerprint(
        {
            "weights": {"uri": storage.normalize(weights), **storage.file_signature(weights)},
            "bench": storage.normalize(cfg.data.bench),
            "val": storage.normalize(cfg.data.val) if proto["tune_on_val"] else None,
            "shifted": storage.normalize(cfg.data.shifted) if has_shifted_split(cfg) else None,
            "protocol": proto,
        }
    )


def run_eval(cfg: Config, final_uri: str, log=print) -> dict[str, Any]:
    """Score the student and baselines; returns (and writes) ``metrics.json``."""
    import ray
    from tqdm import tqdm

    class_names, bench_images = _read_split(cfg.data.bench)
    student_info = storage.read_json(storage.join(final_uri, "config.json"))
    proto = protocol(cfg, class_names, int(student_info["views"]["crop_size"]))
    splits = {"bench": bench_images}
    extra = {"val": cfg.data.val} if proto["tune_on_val"] else {}
    if has_shifted_split(cfg):
        extra["shifted"] = cfg.data.shifted
    for split, uri in extra.items():
        split_classes, splits[split] = _read_split(uri)
        if split_classes != class_names:
            raise ValueError(f"{split} and benchmark splits have different classes.json")
    fp = eval_fingerprint(cfg, final_uri, proto)
    stage = StageDir(
        storage.join(cfg.storage.root, "eval", fp, cfg.eval.benchmark), marker_dir="parts"
    )
    metrics_uri = stage.path("metrics.json")
    if stage.succeeded():
        log(f"[eval] finished evaluation found, skipping: {stage.uri}")
        return storage.read_json(metrics_uri)
    storage.makedirs(stage.uri)
    write_run_info(stage.uri, "eval", config_to_dict(cfg), checkpoint=final_uri, protocol=proto)

    per = cfg.eval.images_per_task
    units = [
        (split, i, imgs[i : i + per])
        for split, imgs in splits.items()
        for i in range(0, len(imgs), per)
    ]
    remote = ray.remote(num_cpus=cfg.eval.num_cpus_per_task, max_retries=2)(eval_part)
    futures = {}
    skipped = 0
    for split, i, imgs in units:
        out = stage.path("parts", f"{split}-{i // per:04d}.npz")
        if storage.exists(out):
            skipped += 1
            continue
        futures[
            remote.remote(final_uri, out, imgs, class_names, proto, int(cfg.eval.num_cpus_per_task))
        ] = out
    log(
        f"[eval] {sum(len(v) for v in splits.values())} images in {len(units)} tasks "
        f"({skipped} already done) -> {stage.uri}"
    )
    t0 = time.perf_counter()
    pending = list(futures)
    with tqdm(total=len(units), initial=skipped, desc="eval tasks", unit="task") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            bar.update(len(done))
    metrics = finalize_eval(
        stage, units, per, class_names, proto, cfg, final_uri, time.perf_counter() - t0, log
    )
    return metrics


def _sum_parts(stage: StageDir, units, per: int, split: str) -> dict[str, np.ndarray]:
    total: dict[str, np.ndarray] = {}
    for s, i, _ in units:
        if s != split:
            continue
        with np.load(
            io.BytesIO(storage.read_bytes(stage.path("parts", f"{s}-{i // per:04d}.npz")))
        ) as part:
            for m in part.files:
                total[m] = total[m] + part[m] if m in total else part[m].copy()
    return total


def finalize_eval(
    stage: StageDir,
    units,
    per: int,
    class_names: list[str],
    proto: dict[str, Any],
    cfg: Config,
    final_uri: str,
    seconds: float,
    log,
) -> dict[str, Any]:
    from zeroseg.metrics import scores_from_confusion
    from zeroseg.predict import METHODS

    rules = proto["background_rules"]
    bench = _sum_parts(stage, units, per, "bench")
    val = _sum_parts(stage, units, per, "val") if proto["tune_on_val"] else None
    shifted = _sum_parts(stage, units, per, "shifted")

    def miou_by_rule(conf: np.ndarray) -> list[float]:
        return [scores_from_confusion(conf[i], class_names)["miou"] for i in range(len(rules))]

    results: dict[str, Any] = {}
    for m in METHODS:
        val_miou = miou_by_rule(val[m]) if val is not None else None
        best = int(np.argmax(val_miou)) if val_miou is not None else 0
        results[m] = {
            **scores_from_confusion(bench[m][best], class_names),
            "rule": rules[best],
            "val_miou_by_rule": dict(zip(rules, val_miou)) if val_miou else None,
            "bench_miou_by_rule": dict(zip(rules, miou_by_rule(bench[m]))),
        }
        if shifted:
            results[m]["shifted"] = scores_from_confusion(shifted[m][best], class_names)
    metrics = {
        "benchmark": cfg.eval.benchmark,
        "protocol": proto,
        "checkpoint": final_uri,
        "num_images": sum(len(u[2]) for u in units if u[0] == "bench"),
        "num_shifted_images": sum(len(u[2]) for u in units if u[0] == "shifted"),
        "student": results["student"],
        "baselines": {m: results[m] for m in METHODS if m != "student"},
        "seconds": round(seconds, 2),
        "code": code_version(),
        "created_at": now(),
    }
    try:
        draw_overlays(stage, final_uri, class_names, proto, metrics, cfg)
    except Exception as exc:  # pictures must not lose finished metrics
        log(f"[eval] overlays failed: {exc}")
    storage.write_json(stage.path("metrics.json"), metrics)
    stage.mark_success()
    return metrics


def draw_overlays(
    stage: StageDir,
    final_uri: str,
    class_names: list[str],
    proto: dict[str, Any],
    metrics: dict[str, Any],
    cfg: Config,
) -> None:
    """Image | truth | student | baselines, each with the rule chosen for it."""
    from zeroseg.overlay import panel
    from zeroseg.predict import BASELINES, apply_rule

    _, images = _read_split(cfg.data.bench)
    scorer = Scorer(final_uri, class_names, proto)
    chosen = {
        "student": metrics["student"]["rule"],
        **{m: v["rule"] for m, v in metrics["baselines"].items()},
    }
    for uri in images[: cfg.eval.overlays]:
        image, mask = load_pair(uri)
        maps = [("truth", np.where(mask == 255, 0, mask))]
        for m in ("student", *BASELINES[:-1]):
            cos = scorer.cosines(m, image)
            maps.append((m, apply_rule(cos, chosen[m], mask.shape, proto["prob_scale"])))
        buf = io.BytesIO()
        panel(image, maps, class_names, scale=max(1, 128 // image.shape[0])).save(buf, "PNG")
        name = uri.rsplit("/", 1)[-1]
        storage.write_bytes(stage.path("overlays", name), buf.getvalue())
