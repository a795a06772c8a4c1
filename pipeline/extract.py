"""extract: images -> 30 grid views -> frozen teacher -> the Zarr teacher cache.

Units of work are shards of ``extract.images_per_shard`` images. A Ray Data actor pool (the
teacher is loaded once per actor) takes whole shards: it reads and crops the images, embeds every
view, writes the shard's rows into the Zarr arrays (one writer per zarr shard) and writes the
shard's marker last. The driver retries failed shards a bounded number of times, then writes
``index.parquet``, ``manifest.json`` and ``_SUCCESS``.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict
from typing import Any

import numpy as np

from zeroseg.config import Config, config_to_dict

from . import storage
from .cache import CACHE_VERSION, ZARR_NAME, CacheLayout, create_arrays, write_shard
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


def list_training_images(uri: str) -> list[str]:
    files = storage.list_files(uri, storage.IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(storage.IMAGE_EXTENSIONS)}) under {uri}")
    return files


def extract_fingerprint(cfg: Config, teacher: dict[str, Any], keys: list[str]) -> str:
    """Everything that changes the cache's bytes; pool size and batch size do not."""
    return fingerprint(
        {
            "cache_version": CACHE_VERSION,
            "data": storage.normalize(cfg.data.train),
            "keys": fingerprint(keys, 32),
            "teacher": teacher_identity(teacher),
            "normalize": cfg.teacher.normalize,
            "levels": list(cfg.views.levels),
            "crop_size": cfg.views.crop_size,
            "images_per_shard": cfg.extract.images_per_shard,
        }
    )


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
        self.keys = storage.read_json(self.stage.path("plan.json"))["keys"]
        self.layout = CacheLayout(**layout)

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

    def run_shard(self, shard: int) -> None:
        import torch

        from zeroseg.images import BadImage, decode_image
        from zeroseg.views import center_crop, cut_views

        started = now()
        t0 = time.perf_counter()
        start, stop = self.layout.shard_rows(shard)
        n = stop - start
        rows = []
        pixels = np.zeros((n, self.crop_size, self.crop_size, 3), np.uint8)
        valid = np.zeros(n, np.uint8)
        t_read = t_crop = 0.0
        for i, key in enumerate(self.keys[start:stop]):
            row = {"row": start + i, "key": key, "width": -1, "height": -1, "status": "ok"}
            ta = time.perf_counter()
            try:
                data = storage.read_bytes(key)
            except (OSError, FileNotFoundError) as exc:
                row["status"] = f"skipped:unreadable ({type(exc).__name__})"
                rows.append(row)
                continue
            tb = time.perf_counter()
            try:
                image = decode_image(data, min_side=max(self.levels))
                row["width"], row["height"] = image.size
                pixels[i] = center_crop(image, self.crop_size)
                valid[i] = 1
            except BadImage as exc:
                row["status"] = f"skipped:{exc.reason}"
            t_read += tb - ta
            t_crop += time.perf_counter() - tb
            rows.append(row)
        t1 = time.perf_counter()
        embeddings = np.zeros((n, self.layout.num_views, self.layout.embed_dim), np.float16)
        ok = np.flatnonzero(valid)
        # extract.batch_size counts views per teacher forward, as the bare-forward benchmark does.
        per_batch = max(1, self.batch_size // self.layout.num_views)
        t_views = 0.0
        for b in range(0, len(ok), per_batch):
            idx = ok[b : b + per_batch]
            tv = time.perf_counter()
            views = cut_views(torch.from_numpy(pixels[idx]), self.levels, self.teacher.image_size)
            t_views += time.perf_counter() - tv
            emb = self.teacher.encode_images(views.flatten(0, 1))
            embeddings[idx] = emb.reshape(len(idx), -1, self.layout.embed_dim).numpy()
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
                "seconds": {
                    "read": round(t_read, 4),
                    "crop": round(t_crop + t_views, 4),
                    "infer": round(t2 - t1 - t_views, 4),
                    "write": round(t3 - t2, 4),
                    "total": round(t3 - t0, 4),
                },
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "started_at": started,
                "finished_at": now(),
            },
        )


def _run_shards(
    stage: str, pending: list[int], ctor: dict[str, Any], cfg: Config, log
) -> dict[int, str]:
    """Run shards on the actor pool; returns {shard: traceback} for the ones that failed."""
    import ray
    from tqdm import tqdm

    ds = ray.data.from_items(
        [{"shard": s} for s in pending], override_num_blocks=max(1, len(pending))
    )
    ds = ds.map_batches(
        ShardExtractor,
        fn_constructor_kwargs=ctor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=cfg.extract.num_actors),
        num_cpus=cfg.extract.cpus_per_actor,
        num_gpus=cfg.extract.gpus_per_actor or None,
    )
    failed: dict[int, str] = {}
    with tqdm(total=len(pending), desc="extract shards", unit="shard") as bar:
        for row in ds.iter_rows():
            if row["error"]:
                failed[int(row["shard"])] = str(row["error"])
            bar.update(1)
    return failed


def run_extract(cfg: Config, log=print, teacher: dict[str, Any] | None = None) -> str:
    """Run (or resume) extraction; returns the cache's stage URI."""
    import ray

    teacher = teacher or resolve_teacher(cfg, log=log)
    keys = list_training_images(cfg.data.train)
    fp = extract_fingerprint(cfg, teacher, keys)
    stage = StageDir(stage_uri(cfg, fp))
    if cfg.extract.mode == "overwrite":
        stage.clear()
    elif stage.succeeded() and not cfg.extract.redo_shards:
        log(f"[extract] cache complete, skipping: {stage.uri}")
        return stage.uri

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
    storage.write_json(
        stage.path("plan.json"),
        {
            "images_per_shard": layout.images_per_shard,
            "num_shards": layout.num_shards,
            "keys": keys,
        },
    )
    write_run_info(stage.uri, "extract", config_to_dict(cfg), fingerprint=fp)
    create_arrays(stage.path(ZARR_NAME), layout)

    if cfg.extract.redo_shards:
        stage_done = stage.done_units() - set(cfg.extract.redo_shards)
    else:
        stage_done = stage.done_units()
    pending = pending_units(
        list(range(layout.num_shards)), stage_done, "resume", cfg.extract.redo_shards
    )
    log(
        f"[extract] {len(keys)} images in {layout.num_shards} shards -> {stage.uri} "
        f"({layout.num_shards - len(pending)} done, {len(pending)} to run)"
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
    failed: dict[int, str] = {}
    attempt = 0
    while pending:
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised")
        failed = _run_shards(stage.uri, pending, ctor, cfg, log)
        if not failed:
            break
        attempt += 1
        if attempt > cfg.extract.max_retries:
            for shard, tb in sorted(failed.items()):
                log(f"[extract] shard {shard} failed after {attempt} attempts:\n{tb}")
            raise RuntimeError(
                f"{len(failed)} shard(s) failed: {sorted(failed)}; rerun the same command to "
                "retry them (finished shards are kept)"
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
    seconds = {"read": 0.0, "crop": 0.0, "infer": 0.0, "write": 0.0, "total": 0.0}
    for m in markers:
        for k, v in m["skip_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
        for k in seconds:
            seconds[k] += m["seconds"][k]
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
