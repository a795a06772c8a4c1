"""eval: parallel Ray tasks score the student and the teacher-only baselines.

One task per (benchmark, split, image part) reads its images through the benchmark's reader
(``zeroseg.benchmarks``), computes for every method and every background rule of the sweep a
confusion matrix, and writes them as one ``parts/<split>-NNNN.npz``; the part's marker
``markers/NNNNN.json`` follows once the task has returned, so a rerun skips finished parts
(:class:`EvalStage`, the stage protocol of :mod:`pipeline.runner`). Finalize sums the parts,
picks each method's background rule on the validation split (shapes) or takes the pinned one
(VOC / Context / COCO-Object), reports the benchmark split with that rule, and writes
``metrics.json``, a Markdown report with a confusion-matrix plot and overlays of the best and
worst images. The same harness runs every method, so the comparison is like for like.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np

from zeroseg import storage
from zeroseg.checkpoint import WEIGHTS, read_final_config
from zeroseg.config import Config, ConfigError, config_to_dict, eval_benchmarks

from .runner import (
    Stage,
    StageDir,
    UnitFailure,
    code_version,
    fingerprint,
    now,
    run_stage,
    write_run_info,
)

# 3: the dense_raw baseline and the generalisation split (parts of version 2 lack them)
# 4: the baselines are a list (eval.baselines; SCLIP, ClearCLIP, NACLIP added), protocol
#    families with class-name synonyms and template sets, PAMR
PROTOCOL_VERSION = 4
PER_IMAGE_KEY = "_student_miou"  # (images, rules): the student's mIoU per image and rule
IDS_KEY = "_ids"
# Ray already reruns a task whose worker died; these are retries of transient errors the task
# itself raised (storage), decided by the runner.
PART_RETRIES = 2
GENERALISATION = "generalisation"  # the optional held-out split's name (shapes)


def protocol_name(cfg: Config, benchmark: str | None = None) -> str:
    from zeroseg.protocols import protocol_file

    return protocol_file(cfg.eval.protocol, benchmark or eval_benchmarks(cfg.eval)[0])


def eval_methods(cfg: Config) -> list[str]:
    """The student, then ``eval.baselines`` (empty: every baseline the teacher can run).

    A listed method the teacher cannot run (the attention read-outs on a CNN) is an error."""
    from zeroseg.config import BASELINE_METHODS, VIT_ONLY_METHODS
    from zeroseg.teacher import architecture_is_vit

    vit = architecture_is_vit(cfg.teacher.model)
    if cfg.eval.baselines:
        wrong = [m for m in cfg.eval.baselines if m in VIT_ONLY_METHODS and vit is False]
        if wrong:
            raise ConfigError(
                f"eval.baselines: {wrong} change a ViT's attention; teacher "
                f"{cfg.teacher.model!r} is not a ViT"
            )
        return ["student", *cfg.eval.baselines]
    return [
        "student",
        *(m for m in BASELINE_METHODS if vit is not False or m not in VIT_ONLY_METHODS),
    ]


def protocol(
    cfg: Config, class_names: list[str], input_size: int, benchmark: str | None = None
) -> dict[str, Any]:
    """Everything that defines how a benchmark is scored; versioned and saved with metrics.

    The pinned protocol (``eval.protocol``, default the benchmark's name) fixes the background
    rule and the resize / sliding window; only a protocol that tunes on the validation split
    sweeps ``eval.background_rules``.
    """
    from zeroseg.class_files import load_class_file
    from zeroseg.protocols import load_protocol, template_set

    benchmark = benchmark or eval_benchmarks(cfg.eval)[0]
    pinned = load_protocol(protocol_name(cfg, benchmark)).resolved(input_size)
    tune = pinned.tuned_on_val and cfg.eval.tune_on_val
    synonyms = None
    if pinned.class_file:
        synonyms = load_class_file(pinned.class_file, class_names)
    if pinned.tuned_on_val:
        rules = list(cfg.eval.background_rules) if tune else list(cfg.eval.background_rules[:1])
    else:
        rules = [pinned.background]
    return {
        "name": pinned.name,
        "version": PROTOCOL_VERSION,
        "benchmark": benchmark,
        "pinned": pinned.to_dict(),
        "classes": class_names,
        # per class (background first) the names it scores the max over; None: one name each
        "class_synonyms": synonyms,
        "templates": (
            template_set(pinned.templates) if pinned.templates else list(cfg.teacher.templates)
        ),
        "background_prompt": "background" if synonyms is None else synonyms[0],
        "methods": eval_methods(cfg),
        "naclip_sigma": float(cfg.eval.naclip_sigma),
        "pamr": bool(cfg.eval.pamr),
        "teacher_windows": pinned.teacher_windows,
        "prob_scale": pinned.prob_scale,
        "background_rules": rules,
        "tune_on_val": tune,
        "rule_selection": "best mIoU on the validation split" if tune else "fixed",
        "dense_input_size": cfg.eval.dense_input_size or None,
        "student_readout": cfg.eval.student_readout,
        "input_size": (
            f"short side {pinned.short_side}, windows {pinned.window} / stride {pinned.stride}; "
            "predictions at the mask's resolution"
        ),
    }


def benchmark_root(cfg: Config, benchmark: str) -> str:
    """Where a benchmark's layout lives: ``data.bench`` for shapes, else ``eval.data_roots``
    or the benchmark's folder below ``eval.data_root``."""
    from zeroseg.benchmarks import DEFAULT_SUBDIRS

    if benchmark == "shapes":
        return cfg.data.bench
    if benchmark in cfg.eval.data_roots:
        return cfg.eval.data_roots[benchmark]
    if not cfg.eval.data_root:
        raise ConfigError(
            f"eval.data_root: benchmark {benchmark!r} needs a data folder; set eval.data_root "
            f"(or eval.data_roots.{benchmark})"
        )
    sub = DEFAULT_SUBDIRS.get(benchmark, "")
    return storage.join(cfg.eval.data_root, sub) if sub else cfg.eval.data_root


def has_generalisation_split(cfg: Config, benchmark: str = "shapes") -> bool:
    """The optional generalisation split (shapes only) is scored whenever it exists."""
    return (
        benchmark == "shapes"
        and bool(cfg.data.generalisation)
        and storage.exists(storage.join(cfg.data.generalisation, "classes.json"))
    )


def _reader(benchmark: str, root: str):
    from zeroseg.benchmarks import open_benchmark

    return open_benchmark(benchmark, root)


class Scorer:
    """Student + teacher + text embeddings, loaded once per task (on a GPU when given one)."""

    def __init__(
        self,
        final_uri: str,
        class_names: list[str],
        proto: dict[str, Any],
        device: str = "cpu",
    ):
        from zeroseg.segmenter import load_segmenter

        pinned = proto["pinned"]
        # the same segmenter as `zeroseg segment` and user code, at the protocol's sizes
        self.segmenter = load_segmenter(
            final_uri,
            device=device,
            templates=proto["templates"],
            size=int(pinned["short_side"]),
            window=int(pinned["window"]),
            stride=int(pinned["stride"]),
            readout=proto.get("student_readout", "segments"),
            dense_input_size=proto["dense_input_size"],
            prob_scale=proto["prob_scale"],
            sigma=proto["naclip_sigma"],
            teacher_windows=proto["teacher_windows"],
            pamr=proto["pamr"],
        )
        self.student, self.teacher = self.segmenter.student, self.segmenter.teacher
        self.info = self.segmenter.run_config
        # class_names[0] is the benchmark's background: the background prompt (or the class
        # file's background names) takes its place
        synonyms = proto["class_synonyms"]
        if synonyms is None:
            self.text, self.groups = self.segmenter.text_embeddings(class_names[1:])
        else:
            self.text, self.groups = self.segmenter.text_embeddings(synonyms[1:], synonyms[0])

    def cosines(self, method: str, image: np.ndarray):
        """``(1 + C, H, W)`` cosines of one method on the CPU (None for ``all_background``)."""
        return self.segmenter.cosines(image, self.text, method=method, groups=self.groups)


def task_device(gpus: float) -> str:
    import torch

    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def eval_part(
    final_uri: str,
    out_uri: str,
    benchmark: str,
    root: str,
    sample_ids: list[str],
    class_names: list[str],
    proto: dict[str, Any],
    threads: int,
    gpus: float = 0.0,
) -> str:
    """One task: confusion matrices ``(R, K, K)`` per method (R rules) for a list of samples,
    plus the student's per-image mIoU per rule (to pick the best and worst images)."""
    import torch

    from zeroseg.metrics import confusion_matrix, scores_from_confusion
    from zeroseg.predict import apply_rule

    torch.set_num_threads(max(1, threads))
    rules = proto["background_rules"]
    methods = proto["methods"]
    reader = _reader(benchmark, root)
    scorer = Scorer(final_uri, class_names, proto, task_device(gpus))
    k = len(class_names)
    conf = {m: np.zeros((len(rules), k, k), np.int64) for m in methods}
    per_image = np.zeros((len(sample_ids), len(rules)), np.float64)
    for n, sid in enumerate(sample_ids):
        image, mask = reader.load(sid)
        for m in methods:
            cos = scorer.cosines(m, image)
            for i, rule in enumerate(rules):
                labels = apply_rule(cos, rule, mask.shape, proto["prob_scale"])
                cm = confusion_matrix(labels, mask, k)
                conf[m][i] += cm
                if m == "student":
                    per_image[n, i] = scores_from_confusion(cm, class_names)["miou"]
    buf = io.BytesIO()
    np.savez(buf, **conf, **{PER_IMAGE_KEY: per_image, IDS_KEY: np.array(sample_ids, dtype=str)})
    storage.write_bytes(out_uri, buf.getvalue())
    return out_uri


def eval_fingerprint(
    cfg: Config, final_uri: str, proto: dict[str, Any], roots: dict[str, str]
) -> str:
    weights = storage.join(final_uri, WEIGHTS)
    return fingerprint(
        {
            "weights": {"uri": storage.normalize(weights), **storage.file_signature(weights)},
            **{split: storage.normalize(uri) for split, uri in roots.items()},
            "protocol": proto,
        }
    )


def plan_splits(cfg: Config, benchmark: str, tune: bool) -> dict[str, str]:
    """split name -> data root: the benchmark split, plus val / generalisation for shapes."""
    splits = {"bench": benchmark_root(cfg, benchmark)}
    if benchmark == "shapes":
        if tune:
            splits["val"] = cfg.data.val
        if has_generalisation_split(cfg, benchmark):
            splits[GENERALISATION] = cfg.data.generalisation
    return splits


def run_evals(cfg: Config, final_uri: str, log=print) -> dict[str, dict[str, Any]]:
    """Every benchmark of the job (``eval.benchmarks`` or ``eval.benchmark``), one after another;
    each one's tasks run in parallel."""
    return {b: run_eval(cfg, final_uri, log, benchmark=b) for b in eval_benchmarks(cfg.eval)}


class EvalStage(Stage):
    """One benchmark of one checkpoint: the parts of its splits scored by parallel Ray tasks."""

    name = "eval"
    unit_name = "part"
    skip_message = "finished evaluation found, skipping"
    max_retries = PART_RETRIES

    def __init__(self, cfg: Config, final_uri: str, benchmark: str | None = None, log=print):
        self.cfg, self.final_uri, self.log = cfg, final_uri, log
        self.benchmark = benchmark = benchmark or eval_benchmarks(cfg.eval)[0]
        bench_reader = _reader(benchmark, benchmark_root(cfg, benchmark))
        self.class_names = class_names = bench_reader.class_names()
        student_info = read_final_config(final_uri)
        self.proto = protocol(cfg, class_names, int(student_info["views"]["crop_size"]), benchmark)
        self.roots = plan_splits(cfg, benchmark, self.proto["tune_on_val"])
        ids = {"bench": bench_reader.sample_ids()}
        for split, uri in self.roots.items():
            if split == "bench":
                continue
            reader = _reader(benchmark, uri)
            if reader.class_names() != class_names:
                raise ValueError(f"{split} and benchmark splits have different classes")
            ids[split] = reader.sample_ids()
        self.ids = ids
        fp = eval_fingerprint(cfg, final_uri, self.proto, self.roots)
        self.dir = StageDir(
            storage.join(cfg.storage.root, "eval", fp, benchmark), marker_dir="markers"
        )
        self.per = per = cfg.eval.images_per_task
        self.parts = [
            (split, i, split_ids[i : i + per])
            for split, split_ids in ids.items()
            for i in range(0, len(split_ids), per)
        ]

    def locate(self) -> StageDir:
        return self.dir

    def done_units(self) -> set[int]:
        """Marked parts whose file is still there (a lost part file is scored again)."""
        fs, path = storage.fs_and_path(self.dir.path("parts"))
        files = (
            {os.path.basename(p) for p in fs.ls(path, detail=False)} if fs.exists(path) else set()
        )
        return {
            u
            for u in self.dir.done_units()
            if u < len(self.parts) and _part_name(*self.parts[u][:2], self.per) in files
        }

    def prepare(self) -> None:
        storage.makedirs(self.dir.uri)
        write_run_info(
            self.dir.uri,
            "eval",
            config_to_dict(self.cfg),
            checkpoint=self.final_uri,
            protocol=self.proto,
            parts=len(self.parts),
            images={split: len(v) for split, v in self.ids.items()},
        )

    def units(self) -> list[int]:
        return list(range(len(self.parts)))

    def announce(self, total: int, pending: int) -> None:
        self.done_before = total - pending
        self.log(
            f"[eval] {self.benchmark}: {sum(len(v) for v in self.ids.values())} images in "
            f"{total} tasks ({total - pending} already done) -> {self.dir.uri}"
        )

    def run_units(self, pending: list[int]) -> dict[int, UnitFailure]:
        import ray
        from tqdm import tqdm

        cfg = self.cfg
        gpus = float(cfg.eval.gpus_per_task)
        remote = ray.remote(num_cpus=cfg.eval.num_cpus_per_task, num_gpus=gpus, max_retries=2)(
            eval_part
        )
        threads = max(1, int(cfg.eval.num_cpus_per_task))
        futures = {}
        for unit in pending:
            split, i, chunk = self.parts[unit]
            out = self.dir.path("parts", _part_name(split, i, self.per))
            ref = remote.remote(
                self.final_uri,
                out,
                self.benchmark,
                self.roots[split],
                chunk,
                self.class_names,
                self.proto,
                threads,
                gpus,
            )
            futures[ref] = unit
        failed: dict[int, UnitFailure] = {}
        waiting = list(futures)
        total, initial = len(self.parts), len(self.parts) - len(pending)
        with tqdm(total=total, initial=initial, desc=f"eval {self.benchmark}", unit="task") as bar:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                unit = futures[done[0]]
                try:
                    ray.get(done[0])
                except Exception as exc:
                    failed[unit] = UnitFailure.of(exc)
                else:  # the part's file is complete: its marker follows
                    self.dir.write_marker(unit, {"part": list(self.parts[unit][:2]), "at": now()})
                bar.update(1)
        return failed

    def finalize(self, seconds: float) -> None:
        finalize_eval(
            self.dir,
            self.parts,
            self.per,
            self.class_names,
            self.proto,
            self.cfg,
            self.final_uri,
            seconds,
            self.log,
            self.benchmark,
            self.roots,
        )

    def result(self) -> dict[str, Any]:
        return storage.read_json(self.dir.path("metrics.json"))


def run_eval(
    cfg: Config, final_uri: str, log=print, benchmark: str | None = None
) -> dict[str, Any]:
    """Score the student and baselines on one benchmark; returns (and writes) ``metrics.json``."""
    return run_stage(EvalStage(cfg, final_uri, benchmark, log), log)


def _part_name(split: str, start: int, per: int) -> str:
    return f"{split}-{start // per:04d}.npz"


def _sum_parts(
    stage: StageDir, units, per: int, split: str
) -> tuple[dict[str, np.ndarray], list[str], np.ndarray | None]:
    """Summed confusion matrices of one split, with its sample ids and per-image scores."""
    total: dict[str, np.ndarray] = {}
    ids: list[str] = []
    per_image = []
    for s, i, _ in units:
        if s != split:
            continue
        data = storage.read_bytes(stage.path("parts", _part_name(s, i, per)))
        with np.load(io.BytesIO(data)) as part:
            for m in part.files:
                if m.startswith("_"):
                    continue
                total[m] = total[m] + part[m] if m in total else part[m].copy()
            ids += [str(x) for x in part[IDS_KEY]]
            per_image.append(part[PER_IMAGE_KEY])
    return total, ids, (np.concatenate(per_image) if per_image else None)


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
    benchmark: str | None = None,
    roots: dict[str, str] | None = None,
) -> dict[str, Any]:
    from zeroseg.metrics import scores_from_confusion

    benchmark = benchmark or eval_benchmarks(cfg.eval)[0]
    methods = proto["methods"]
    roots = roots or plan_splits(cfg, benchmark, proto["tune_on_val"])
    rules = proto["background_rules"]
    bench, bench_ids, bench_per_image = _sum_parts(stage, units, per, "bench")
    val = _sum_parts(stage, units, per, "val")[0] if proto["tune_on_val"] else None
    # scored, never tuned on: each method keeps the rule it got on val (or the pinned one)
    generalisation = _sum_parts(stage, units, per, GENERALISATION)[0]

    def miou_by_rule(conf: np.ndarray) -> list[float]:
        return [scores_from_confusion(conf[i], class_names)["miou"] for i in range(len(rules))]

    results: dict[str, Any] = {}
    chosen_rule_index: dict[str, int] = {}
    for m in methods:
        val_miou = miou_by_rule(val[m]) if val is not None else None
        best = int(np.argmax(val_miou)) if val_miou is not None else 0
        chosen_rule_index[m] = best
        results[m] = {
            **scores_from_confusion(bench[m][best], class_names),
            "rule": rules[best],
            "val_miou_by_rule": dict(zip(rules, val_miou)) if val_miou else None,
            "bench_miou_by_rule": dict(zip(rules, miou_by_rule(bench[m]))),
        }
        if generalisation:
            results[m][GENERALISATION] = scores_from_confusion(generalisation[m][best], class_names)
    metrics = {
        "benchmark": benchmark,
        "protocol_name": proto["name"],
        "protocol_version": proto["version"],
        "protocol": proto,
        "checkpoint": final_uri,
        "data": roots["bench"],
        "num_images": len(bench_ids),
        "num_generalisation_images": sum(len(u[2]) for u in units if u[0] == GENERALISATION),
        "student": results["student"],
        "baselines": {m: results[m] for m in methods if m != "student"},
        "seconds": round(seconds, 2),
        "code": code_version(),
        "created_at": now(),
    }
    per_image = (
        bench_per_image[:, chosen_rule_index["student"]]
        if bench_per_image is not None
        else np.zeros(len(bench_ids))
    )
    picks = pick_best_worst(bench_ids, per_image, cfg.eval.overlays)
    overlays: list[tuple[str, str, float]] = []
    try:
        overlays = draw_overlays(
            stage, final_uri, class_names, proto, metrics, benchmark, roots["bench"], picks
        )
    except Exception as exc:  # pictures must not lose finished metrics
        log(f"[eval] overlays failed: {exc}")
    storage.write_json(stage.path("metrics.json"), metrics)
    try:
        write_report(stage, metrics, bench["student"][chosen_rule_index["student"]], overlays)
    except Exception as exc:  # nor must the report
        log(f"[eval] report failed: {exc}")
    log(f"[eval] {benchmark}: report at {stage.path('report.md')}")
    return metrics


def pick_best_worst(ids: list[str], scores: np.ndarray, count: int) -> list[tuple[str, str, float]]:
    """``count`` images split between the highest and lowest student mIoU: (kind, id, mIoU)."""
    count = min(count, len(ids))
    if count <= 0:
        return []
    order = sorted(range(len(ids)), key=lambda j: (-float(scores[j]), ids[j]))
    n_best = math.ceil(count / 2)
    best = order[:n_best]
    worst = [j for j in reversed(order) if j not in best][: count - n_best]
    return [("best", ids[j], float(scores[j])) for j in best] + [
        ("worst", ids[j], float(scores[j])) for j in worst
    ]


def _safe(sample_id: str) -> str:
    stem = sample_id.rsplit(".", 1)[0] if sample_id.endswith(".png") else sample_id
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)


def draw_overlays(
    stage: StageDir,
    final_uri: str,
    class_names: list[str],
    proto: dict[str, Any],
    metrics: dict[str, Any],
    benchmark: str,
    root: str,
    picks: list[tuple[str, str, float]],
) -> list[tuple[str, str, float]]:
    """Image | truth | student | baselines for the picked images, each method with its rule;
    returns (file name, sample id, student mIoU) per picture."""
    from zeroseg.overlay import panel
    from zeroseg.predict import apply_rule

    if not picks:
        return []
    reader = _reader(benchmark, root)
    scorer = Scorer(final_uri, class_names, proto)
    chosen = {
        "student": metrics["student"]["rule"],
        **{m: v["rule"] for m, v in metrics["baselines"].items()},
    }
    written = []
    rank = {"best": 0, "worst": 0}
    for kind, sid, score in picks:
        image, mask = reader.load(sid)
        maps = [("truth", np.where(mask == 255, 0, mask))]
        for m in (m for m in proto["methods"] if m != "all_background"):
            cos = scorer.cosines(m, image)
            maps.append((m, apply_rule(cos, chosen[m], mask.shape, proto["prob_scale"])))
        buf = io.BytesIO()
        panel(image, maps, class_names, scale=max(1, 128 // image.shape[0])).save(buf, "PNG")
        rank[kind] += 1
        name = f"{kind}-{rank[kind]:02d}-{_safe(sid)}.png"
        storage.write_bytes(stage.path("overlays", name), buf.getvalue())
        written.append((name, sid, score))
    return written


def write_report(
    stage: StageDir,
    metrics: dict[str, Any],
    student_confusion: np.ndarray,
    overlays: list[tuple[str, str, float]],
) -> str:
    """``report.md`` and ``confusion.png`` beside ``metrics.json``."""
    from zeroseg.report import confusion_png, render_report

    names = metrics["protocol"]["classes"]
    storage.write_bytes(stage.path("confusion.png"), confusion_png(student_confusion, names))
    text = render_report(
        metrics, "confusion.png", [(f"overlays/{n}", s, v) for n, s, v in overlays]
    )
    storage.write_text(stage.path("report.md"), text)
    return stage.path("report.md")
