"""extract: images -> 30 grid views -> frozen teacher -> the Zarr teacher cache.

Units of work are shards of ``extract.images_per_shard`` images. A Ray Data actor pool (the
teacher is loaded once per actor) takes whole shards: a reader thread fetches, decodes and crops
the images and cuts the views of the next batch while the teacher embeds the current one; then
the shard's rows go into the Zarr arrays (one writer per zarr shard) and its marker is written
last. The driver retries failed shards a bounded number of times, records the ones that still
fail under ``failed/`` with their traceback, then writes ``index.parquet``, ``manifest.json`` and
``_SUCCESS``.
"""

from __future__ import annotations

import os
import queue
import resource
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from zeroseg.config import Config, actor_range, config_to_dict

from . import storage
from .cache import CACHE_VERSION, ZARR_NAME, CacheLayout, create_arrays, write_shard
from .inputs import InputPlan, plan_inputs, read_input
from .runner import (
    StageDir,
    code_version,
    fingerprint,
    now,
    package_versions,
    pending_units,
    write_run_info,
)
from .teachers import resolve_teacher, teacher_identity

FAILED_DIR = "failed"
RUN_INFO = "run.json"
# Amount of extract.resource_label each actor asks for: the label pins the pool to the nodes
# that offer it without limiting how many actors fit there.
RESOURCE_PER_ACTOR = 0.001
# Batches of cut views the reader thread may hold ahead of the teacher forward.
PREFETCH_BATCHES = 2


def extract_fingerprint(cfg: Config, teacher: dict[str, Any], plan: InputPlan) -> str:
    """Everything that changes the cache's bytes; pool size, resources and batch size do not."""
    desc = {
        "cache_version": CACHE_VERSION,
        "data": storage.normalize(cfg.data.train),
        "keys": fingerprint(plan.keys, 32),
        "teacher": teacher_identity(teacher),
        "normalize": cfg.teacher.normalize,
        "levels": list(cfg.views.levels),
        "crop_size": cfg.views.crop_size,
        "images_per_shard": cfg.extract.images_per_shard,
    }
    if plan.has_spans:  # tar members: a repacked tar with the same names gives other bytes
        desc["spans"] = fingerprint(plan.spans, 32)
    return fingerprint(desc)


def pool_options(cfg: Config) -> dict[str, Any]:
    """``map_batches`` arguments that size and place the teacher actor pool."""
    lo, hi = actor_range(cfg.extract)
    opts: dict[str, Any] = {
        "concurrency": lo if lo == hi else (lo, hi),
        "num_cpus": cfg.extract.cpus_per_actor,
        "num_gpus": cfg.extract.gpus_per_actor or None,
    }
    if cfg.extract.resource_label:
        opts["resources"] = {cfg.extract.resource_label: RESOURCE_PER_ACTOR}
    return opts


def pool_resource_problems(cfg: Config, cluster: dict[str, float]) -> list[str]:
    """What one actor asks for that no node of ``cluster`` (``ray.cluster_resources()``) has."""
    problems = []
    label = cfg.extract.resource_label
    if label and cluster.get(label, 0.0) < RESOURCE_PER_ACTOR:
        problems.append(
            f"extract.resource_label={label}: no Ray node offers resource '{label}' "
            f"(start the extraction workers with --resources='{{\"{label}\": 1}}')"
        )
    gpus = cfg.extract.gpus_per_actor
    if gpus and cluster.get("GPU", 0.0) < gpus:
        problems.append(
            f"extract.gpus_per_actor={gpus}: the Ray cluster has {cluster.get('GPU', 0.0):g} GPUs"
        )
    cpus = cfg.extract.cpus_per_actor
    if cpus > cluster.get("CPU", 0.0):
        problems.append(
            f"extract.cpus_per_actor={cpus}: the Ray cluster has {cluster.get('CPU', 0.0):g} CPUs"
        )
    return problems


def check_pool_resources(cfg: Config, cluster: dict[str, float], log: Callable = print) -> None:
    """Fail before any work when the pool can never start on a local Ray; on a cluster an
    autoscaler may still add such nodes, so only warn."""
    problems = pool_resource_problems(cfg, cluster)
    if not problems:
        return
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    if local:
        raise RuntimeError("the extraction actor pool cannot start: " + "; ".join(problems))
    for p in problems:
        log(f"[extract] warning: {p}; the pool waits until the cluster adds such a node")


def stage_uri(cfg: Config, fp: str) -> str:
    return storage.join(cfg.storage.root, "extract", fp)


class ShardExtractor:
    """Ray Data actor: owns one teacher and processes whole shards."""

    def __init__(
        self,
        stage: str,
        teacher: dict[str, Any],
        normalize: bool,
        levels: list[int],
        crop_size: int,
        batch_size: int,
        layout: dict[str, int],
        threads: int = 1,
    ):
        import torch

        from zeroseg.teacher import Teacher

        # One torch thread per CPU Ray reserved for this actor: more oversubscribes the node.
        torch.set_num_threads(threads)
        self.stage = StageDir(stage)
        self.teacher = Teacher(teacher["model"], teacher["pretrained"] or None, normalize=normalize)
        self.levels = levels
        self.crop_size = crop_size
        self.batch_size = batch_size
        # The plan is read here rather than shipped as a constructor argument: for millions of
        # images it would be a large object pinned in Ray's object store.
        plan = storage.read_json(self.stage.path("plan.json"))
        self.keys: list[str] = plan["keys"]
        self.spans: list[list[int] | None] = plan.get("spans") or [None] * len(self.keys)
        self.layout = CacheLayout(**layout)
        self.resources = _assigned_resources()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"shard": [], "error": []}
        for shard in batch["shard"]:
            shard = int(shard)
            try:
                self.run_shard(shard)
                out["error"].append("")
            except Exception:  # reported to the driver, which retries or reports the traceback
                out["error"].append(traceback.format_exc())
            out["shard"].append(shard)
        return {"shard": np.asarray(out["shard"]), "error": np.asarray(out["error"])}

    def _produce(
        self,
        start: int,
        stop: int,
        pixels: np.ndarray,
        valid: np.ndarray,
        rows: list[dict[str, Any]],
        timings: dict[str, float],
        out: queue.Queue,
        halt: threading.Event,
    ) -> None:
        """Reader thread: fetch, decode and crop the shard's images in order, and hand the cut
        views of every ``per_batch`` good images to the forward loop through ``out``."""
        import torch

        from zeroseg.images import BadImage, decode_image
        from zeroseg.views import center_crop, cut_views

        def put(item: Any) -> bool:
            while not halt.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def views_of(idx: list[int]) -> tuple[np.ndarray, Any]:
            t = time.perf_counter()
            ix = np.asarray(idx)
            views = cut_views(torch.from_numpy(pixels[ix]), self.levels, self.teacher.image_size)
            timings["crop"] += time.perf_counter() - t
            return ix, views.flatten(0, 1)

        # extract.batch_size counts views per teacher forward, as the bare-forward bench does.
        per_batch = max(1, self.batch_size // self.layout.num_views)
        try:
            ready: list[int] = []
            for i, key in enumerate(self.keys[start:stop]):
                if halt.is_set():
                    return
                row = {"row": start + i, "key": key, "width": -1, "height": -1, "status": "ok"}
                rows.append(row)
                ta = time.perf_counter()
                try:
                    data = read_input(key, self.spans[start + i])
                except OSError as exc:  # FileNotFoundError and PermissionError included
                    row["status"] = f"skipped:unreadable ({type(exc).__name__})"
                    continue
                finally:
                    timings["read"] += time.perf_counter() - ta
                tb = time.perf_counter()
                try:
                    image = decode_image(data, min_side=max(self.levels))
                    row["width"], row["height"] = image.size
                    pixels[i] = center_crop(image, self.crop_size)
                    valid[i] = 1
                    ready.append(i)
                except BadImage as exc:
                    row["status"] = f"skipped:{exc.reason}"
                timings["crop"] += time.perf_counter() - tb
                if len(ready) == per_batch:
                    if not put(views_of(ready)):
                        return
                    ready = []
            if ready and not put(views_of(ready)):
                return
            put(None)
        except BaseException as exc:  # the forward loop re-raises it in the actor's thread
            put(exc)

    def run_shard(self, shard: int) -> None:
        started, started_unix = now(), time.time()
        t0 = time.perf_counter()
        start, stop = self.layout.shard_rows(shard)
        n = stop - start
        rows: list[dict[str, Any]] = []
        pixels = np.zeros((n, self.crop_size, self.crop_size, 3), np.uint8)
        valid = np.zeros(n, np.uint8)
        embeddings = np.zeros((n, self.layout.num_views, self.layout.embed_dim), np.float16)
        timings = {"read": 0.0, "crop": 0.0}
        batches: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        halt = threading.Event()
        reader = threading.Thread(
            target=self._produce,
            args=(start, stop, pixels, valid, rows, timings, batches, halt),
            name=f"shard-{shard}-reader",
            daemon=True,
        )
        reader.start()
        t_infer = t_wait = 0.0
        try:
            while True:
                tw = time.perf_counter()
                item = batches.get()
                t_wait += time.perf_counter() - tw
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                idx, views = item
                ti = time.perf_counter()
                emb = self.teacher.encode_images(views)
                embeddings[idx] = emb.reshape(len(idx), -1, self.layout.embed_dim).cpu().numpy()
                t_infer += time.perf_counter() - ti
        finally:
            halt.set()
            reader.join()
        t2 = time.perf_counter()
        write_shard(self.stage.path(ZARR_NAME), self.layout, shard, embeddings, pixels, valid)
        t3 = time.perf_counter()
        skipped: dict[str, int] = {}
        for r in rows:
            if r["status"] != "ok":
                reason = r["status"].split(":", 1)[1]
                skipped[reason] = skipped.get(reason, 0) + 1
        self.stage.write_marker(
            shard,
            {
                "shard": shard,
                "rows": [start, stop],
                "ok": int(valid.sum()),
                "skipped": int(n - valid.sum()),
                "skip_reasons": skipped,
                "index": rows,
                # read and crop run in the reader thread, overlapping infer; wait is the time
                # the forward loop sat idle waiting for views.
                "seconds": {
                    "read": round(timings["read"], 4),
                    "crop": round(timings["crop"], 4),
                    "infer": round(t_infer, 4),
                    "wait": round(t_wait, 4),
                    "write": round(t3 - t2, 4),
                    "total": round(t3 - t0, 4),
                },
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "resources": self.resources,
                "peak_rss_mb": _peak_rss_mb(),
                "started_at": started,
                "finished_at": now(),
                "started_unix": round(started_unix, 3),
                "finished_unix": round(time.time(), 3),
            },
        )


def _assigned_resources() -> dict[str, float]:
    """The Ray resources this actor holds (shows which worker group ran a shard)."""
    import ray

    try:
        return {
            k: round(v, 4) for k, v in ray.get_runtime_context().get_assigned_resources().items()
        }
    except Exception:  # outside Ray (direct use of the class): nothing assigned
        return {}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _run_shards(
    stage: str, pending: list[int], ctor: dict[str, Any], cfg: Config
) -> dict[int, str]:
    """Run shards on the actor pool; returns {shard: traceback} for the ones that failed."""
    import ray
    from tqdm import tqdm

    ds = ray.data.from_items(
        [{"shard": s} for s in pending], override_num_blocks=max(1, len(pending))
    )
    ds = ds.map_batches(
        ShardExtractor, fn_constructor_kwargs=ctor, batch_size=1, **pool_options(cfg)
    )
    failed: dict[int, str] = {}
    with tqdm(total=len(pending), desc="extract shards", unit="shard") as bar:
        for row in ds.iter_rows():
            if row["error"]:
                failed[int(row["shard"])] = str(row["error"])
            bar.update(1)
    return failed


def failed_uri(stage: StageDir, shard: int) -> str:
    return stage.path(FAILED_DIR, f"{shard:05d}.json")


def failed_shards(stage: StageDir) -> dict[int, dict[str, Any]]:
    """Failure records ``failed/NNNNN.json`` (attempts, traceback) of shards without a marker."""
    fs, path = storage.fs_and_path(stage.path(FAILED_DIR))
    if not fs.exists(path):
        return {}
    done = stage.done_units()
    out = {}
    for p in sorted(fs.ls(path, detail=False)):
        name = os.path.basename(p)
        if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in done:
            out[int(name[:-5])] = storage.read_json(failed_uri(stage, int(name[:-5])))
    return out


def run_extract(cfg: Config, log=print, teacher: dict[str, Any] | None = None) -> str:
    """Run (or resume) extraction; returns the cache's stage URI."""
    import ray

    teacher = teacher or resolve_teacher(cfg, log=log)
    plan = plan_inputs(cfg.data.train)
    keys = plan.keys
    fp = extract_fingerprint(cfg, teacher, plan)
    stage = StageDir(stage_uri(cfg, fp))
    if cfg.extract.mode == "overwrite":
        stage.clear()
    elif stage.succeeded() and not cfg.extract.redo_shards:
        log(f"[extract] cache complete, skipping: {stage.uri}")
        return stage.uri
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised")
    check_pool_resources(cfg, ray.cluster_resources(), log)

    from zeroseg.teacher import Teacher
    from zeroseg.views import num_views

    probe = Teacher(
        teacher["model"], teacher["pretrained"] or None, normalize=cfg.teacher.normalize
    )
    layout = CacheLayout(
        len(keys),
        num_views(cfg.views.levels),
        probe.embed_dim,
        cfg.views.crop_size,
        cfg.extract.images_per_shard,
    )
    teacher_meta = {
        **teacher_identity(teacher),
        "embed_dim": probe.embed_dim,
        "image_size": probe.image_size,
        "normalize": cfg.teacher.normalize,
        **({"accuracy": teacher["accuracy"]} if "accuracy" in teacher else {}),
    }
    del probe
    storage.makedirs(stage.uri)
    plan_doc: dict[str, Any] = {
        "images_per_shard": layout.images_per_shard,
        "num_shards": layout.num_shards,
        "input_kind": plan.kind,
        "keys": keys,
    }
    if plan.has_spans:
        plan_doc["spans"] = plan.spans
    storage.write_json(stage.path("plan.json"), plan_doc)
    write_run_info(stage.uri, "extract", config_to_dict(cfg), fingerprint=fp)
    create_arrays(stage.path(ZARR_NAME), layout)

    if cfg.extract.redo_shards:
        stage_done = stage.done_units() - set(cfg.extract.redo_shards)
    else:
        stage_done = stage.done_units()
    pending = pending_units(
        list(range(layout.num_shards)), stage_done, "resume", cfg.extract.redo_shards
    )
    lo, hi = actor_range(cfg.extract)
    log(
        f"[extract] {len(keys)} images in {layout.num_shards} shards -> {stage.uri} "
        f"({layout.num_shards - len(pending)} done, {len(pending)} to run)"
    )
    storage.write_json(
        stage.path(RUN_INFO),
        {
            "started_at": now(),
            "started_unix": round(time.time(), 3),
            "driver": f"{socket.gethostname()}:{os.getpid()}",
            "shards_to_run": len(pending),
            "actors": [lo, hi],
        },
    )
    ctor = {
        "stage": stage.uri,
        "teacher": teacher,
        "normalize": cfg.teacher.normalize,
        "levels": list(cfg.views.levels),
        "crop_size": cfg.views.crop_size,
        "batch_size": cfg.extract.batch_size,
        "threads": max(1, int(cfg.extract.cpus_per_actor)),
        "layout": asdict(layout),
    }
    t0 = time.perf_counter()
    recorded = set(failed_shards(stage))
    attempts: dict[int, int] = {}
    attempt = 0
    while pending:
        failed = _run_shards(stage.uri, pending, ctor, cfg)
        for shard in pending:
            if shard in failed:
                attempts[shard] = attempts.get(shard, 0) + 1
                storage.write_json(
                    failed_uri(stage, shard),
                    {
                        "shard": shard,
                        "attempts": attempts[shard],
                        "error": failed[shard],
                        "at": now(),
                    },
                )
                recorded.add(shard)
            elif shard in recorded:  # succeeded on a retry or a later run
                storage.remove(failed_uri(stage, shard), recursive=False)
                recorded.discard(shard)
        if not failed:
            break
        attempt += 1
        if attempt > cfg.extract.max_retries:
            for shard, tb in sorted(failed.items()):
                log(f"[extract] shard {shard} failed after {attempt} attempts:\n{tb}")
            raise RuntimeError(
                f"{len(failed)} shard(s) failed: {sorted(failed)} (tracebacks in "
                f"{stage.path(FAILED_DIR)}); rerun the same command to retry them (finished "
                "shards are kept)"
            )
        log(f"[extract] retrying {len(failed)} failed shard(s) (attempt {attempt + 1})")
        pending = sorted(failed)
    elapsed = time.perf_counter() - t0
    finalize_extract(stage, layout, teacher_meta, cfg, fp, elapsed, log)
    return stage.uri


def finalize_extract(
    stage: StageDir,
    layout: CacheLayout,
    teacher_meta: dict[str, Any],
    cfg: Config,
    fp: str,
    elapsed: float,
    log,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    markers = [stage.read_marker(s) for s in range(layout.num_shards)]
    rows = [r for m in markers for r in m["index"]]
    table = pa.table(
        {
            "row": pa.array([r["row"] for r in rows], pa.int64()),
            "key": pa.array([r["key"] for r in rows], pa.string()),
            "width": pa.array([r["width"] for r in rows], pa.int32()),
            "height": pa.array([r["height"] for r in rows], pa.int32()),
            "status": pa.array([r["status"] for r in rows], pa.string()),
        }
    )
    fs, path = storage.fs_and_path(stage.path("index.parquet"))
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    reasons: dict[str, int] = {}
    seconds = {"read": 0.0, "crop": 0.0, "infer": 0.0, "wait": 0.0, "write": 0.0, "total": 0.0}
    for m in markers:
        for k, v in m["skip_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
        for k in seconds:
            seconds[k] += m["seconds"].get(k, 0.0)
    ok = sum(m["ok"] for m in markers)
    manifest = {
        "stage": "extract",
        "version": CACHE_VERSION,
        "fingerprint": fp,
        "config": config_to_dict(cfg),
        "teacher": teacher_meta,
        "levels": list(cfg.views.levels),
        "num_views": layout.num_views,
        "crop_size": layout.crop_size,
        "image_size": layout.crop_size,
        "images_per_shard": layout.images_per_shard,
        "num_images": layout.num_images,
        "num_shards": layout.num_shards,
        "num_ok": ok,
        "num_skipped": layout.num_images - ok,
        "skip_reasons": reasons,
        "shard_seconds": {k: round(v, 3) for k, v in seconds.items()},
        # One entry per shard, so a user sees where time went without opening every marker.
        "shards": [
            {
                "shard": m["shard"],
                "images": m["rows"][1] - m["rows"][0],
                "ok": m["ok"],
                "skipped": m["skipped"],
                "skip_reasons": m["skip_reasons"],
                "seconds": m["seconds"],
                "worker": m.get("worker"),
                "peak_rss_mb": m.get("peak_rss_mb"),
            }
            for m in markers
        ],
        "wall_seconds_last_run": round(elapsed, 3),
        "code": code_version(),
        "packages": package_versions(),
        "created_at": now(),
    }
    storage.write_json(stage.path("manifest.json"), manifest)
    stage.mark_success()
    rate = ok / elapsed if elapsed > 0 else float("nan")
    log(
        f"[extract] done: {ok} images ok, {layout.num_images - ok} skipped {reasons or ''}; "
        f"{rate:.1f} img/s this run; per-shard seconds {manifest['shard_seconds']}"
    )
