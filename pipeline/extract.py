"""extract: images -> 30 grid views -> frozen teacher -> the Zarr teacher cache.

Units of work are shards of ``extract.images_per_shard`` images. A Ray Data actor pool (the
teacher is loaded once per actor) takes whole shards: a reader thread fetches, decodes and crops
the images and cuts the views of the next batch while the teacher embeds the current one; then
the shard's rows go into the Zarr arrays (one writer per zarr shard) and its marker is written
last. :class:`ExtractStage` is the stage protocol of :mod:`pipeline.runner` on those shards: the
runner retries shards that failed transiently a bounded number of times, records the ones that
still fail under ``failed/`` with their traceback, then the stage writes ``index.parquet`` and
``manifest.json`` and the runner ``_SUCCESS``.
"""

from __future__ import annotations

import os
import queue
import resource
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from zeroseg import storage
from zeroseg.config import Config, actor_range, config_to_dict

from .cache import CACHE_VERSION, ZARR_NAME, CacheLayout, create_arrays, write_shard
from .inputs import PLAN_TABLE, InputPlan, PlanTable, plan_inputs, read_input, write_plan_table
from .runner import (
    Stage,
    StageDir,
    UnitFailure,
    code_version,
    fingerprint,
    now,
    package_versions,
    run_stage,
    write_run_info,
)
from .teachers import resolve_teacher, teacher_identity

RUN_INFO = "run.json"
# Amount of extract.resource_label each actor asks for: the label pins the pool to the nodes
# that offer it without limiting how many actors fit there.
RESOURCE_PER_ACTOR = 0.001
# Batches of cut views the reader thread may hold ahead of the teacher forward.
PREFETCH_BATCHES = 2
MAX_SHARDS_PER_CALL = 8
MARKER_READERS = 16


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
    if cfg.extract.precision != "fp32":  # absent at fp32, so fp32 caches keep their address
        desc["precision"] = cfg.extract.precision
    if plan.has_spans:  # tar members: a repacked tar with the same names gives other bytes
        desc["spans"] = fingerprint(plan.spans, 32)
    return fingerprint(desc)


def pool_options(cfg: Config) -> dict[str, Any]:
    """``map_batches`` arguments that size and place the teacher actor pool."""
    import ray

    lo, hi = actor_range(cfg.extract)
    opts: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
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


class _ShardWork:
    """One shard in flight inside an actor: its arrays, index rows and timings."""

    def __init__(self, shard: int, layout: CacheLayout, crop_size: int):
        self.shard = shard
        self.start, self.stop = layout.shard_rows(shard)
        n = self.stop - self.start
        self.rows: list[dict[str, Any]] = []
        self.pixels = np.zeros((n, crop_size, crop_size, 3), np.uint8)
        self.valid = np.zeros(n, np.uint8)
        self.embeddings = np.zeros((n, layout.num_views, layout.embed_dim), np.float16)
        self.seconds = {"read": 0.0, "crop": 0.0, "infer": 0.0, "wait": 0.0}
        self.started, self.started_unix = now(), time.time()


class ShardExtractor:
    """Ray Data actor: owns one teacher and processes whole shards.

    A reader thread fetches, decodes and crops the images of the call's shards in order and cuts
    the views of every batch (on a GPU the views are cut there instead); the actor's thread runs
    the teacher on one batch while the reader prepares the next (torch and image decoding
    release the GIL). When a shard's last batch is embedded, a writer thread writes it while the
    teacher goes on with the next shard: the accelerator never waits for storage.
    """

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
        device: str = "auto",
        precision: str = "fp32",
    ):
        import torch

        from zeroseg.teacher import Teacher

        # One torch thread per CPU Ray reserved for this actor: more oversubscribes the node.
        torch.set_num_threads(threads)
        self.stage = StageDir(stage)
        if device == "auto":  # Ray hides the GPUs of an actor that asked for none
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = Teacher(
            teacher["model"],
            teacher["pretrained"] or None,
            device=device,
            normalize=normalize,
            precision=precision,
        )
        # On a GPU the reader hands over uint8 crops and the views are cut there: cut and
        # resized on the host they would be 4 bytes per pixel and a CPU-bound step.
        self.cut_on_device = self.teacher.device.type != "cpu"
        self.levels = levels
        self.crop_size = crop_size
        self.batch_size = batch_size
        # Each shard's keys are read from plan.parquet when the shard starts, rather than the
        # whole plan shipped or loaded here: memory per actor does not grow with the dataset.
        self.layout = CacheLayout(**layout)
        if self.teacher.embed_dim != self.layout.embed_dim:
            raise RuntimeError(
                f"teacher {teacher['model']} gives {self.teacher.embed_dim}-d embeddings; "
                f"the cache was laid out for {self.layout.embed_dim}"
            )
        self.plan = PlanTable(self.stage.path(PLAN_TABLE))
        if self.plan.num_shards != self.layout.num_shards:
            raise RuntimeError(
                f"{PLAN_TABLE} has {self.plan.num_shards} row groups for "
                f"{self.layout.num_shards} shards"
            )
        self.resources = _assigned_resources()
        self._reader_error: UnitFailure | None = None
        self._jobs: queue.Queue = queue.Queue()
        self._items: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        threading.Thread(target=self._reader_loop, name="shard-reader", daemon=True).start()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [int(s) for s in batch["shard"]]
        errors = self.run_shards(shards)
        return {
            "shard": np.asarray(shards),
            "error": np.asarray([errors[s].error if errors[s] else "" for s in shards]),
            "transient": np.asarray([bool(errors[s] and errors[s].transient) for s in shards]),
        }

    def run_shard(self, shard: int) -> None:
        """Process one shard; raises what made it fail."""
        failure = self.run_shards([shard])[shard]
        if failure:
            raise RuntimeError(failure.error)

    def run_shards(self, shards: list[int]) -> dict[int, UnitFailure | None]:
        """Process shards in order; returns {shard: None or why it failed}."""
        errors: dict[int, UnitFailure | None] = dict.fromkeys(shards)
        finished: set[int] = set()
        writing: list[tuple[int, Any]] = []  # (shard, future) of the write in flight, if any

        def settle() -> None:
            """Wait for the write in flight: a shard is finished only once its marker is."""
            for shard, future in writing:
                exc = future.exception()
                if exc is None:
                    finished.add(shard)
                else:
                    errors[shard] = UnitFailure.of(exc)
            writing.clear()

        self._jobs.put(shards)
        mark = time.perf_counter()
        while True:  # always drained to the end-of-call None, so the reader stays in step
            tw = time.perf_counter()
            item = self._items.get()
            waited = time.perf_counter() - tw
            if item is None:
                break
            kind, work, payload = item
            work.seconds["wait"] += waited
            if errors[work.shard]:
                continue  # the shard already failed; drop the rest of its items
            try:
                if kind == "error":
                    errors[work.shard] = payload
                elif kind == "batch":
                    idx, views = payload
                    ti = time.perf_counter()
                    if self.cut_on_device:
                        views = self._cut(views.to(self.teacher.device, non_blocking=True))
                    emb = self.teacher.encode_images(views)
                    dim = self.layout.embed_dim
                    work.embeddings[idx] = emb.reshape(len(idx), -1, dim).cpu().numpy()
                    work.seconds["infer"] += time.perf_counter() - ti
                else:  # "end": every image of the shard is embedded
                    # Written by the writer thread while the forward goes on with the next
                    # shard; at most one write in flight, so memory stays one shard ahead.
                    busy = time.perf_counter() - mark
                    settle()
                    writing.append((work.shard, self._writer.submit(self._finish, work, busy)))
                    mark = time.perf_counter()
            except Exception as exc:  # reported to the driver, which retries or reports it
                errors[work.shard] = UnitFailure.of(exc)
        settle()
        for shard in shards:  # a shard the reader never reached must not look like success
            if not errors[shard] and shard not in finished:
                crash = self._reader_error
                errors[shard] = UnitFailure(
                    f"shard {shard} was not processed by the reader thread\n"
                    + (crash.error if crash else ""),
                    bool(crash and crash.transient),
                )
        return errors

    def _cut(self, pixels: Any) -> Any:
        """(B, H, W, 3) uint8 crops -> (B * views, 3, S, S) teacher inputs, on their device."""
        from zeroseg.views import cut_views

        return cut_views(pixels, self.levels, self.teacher.image_size).flatten(0, 1)

    def _reader_loop(self) -> None:
        """The actor's one reader thread (one for its lifetime: a thread per call would leave
        a malloc arena per thread behind), serving one call's shards at a time."""
        while True:
            shards = self._jobs.get()
            self._reader_error = None
            try:
                self._read(shards)
            except BaseException as exc:  # keep serving calls; the unreached shards report it
                self._reader_error = UnitFailure.of(exc)
            finally:
                self._items.put(None)

    def _read(self, shards: list[int]) -> None:
        """Images -> centre crops -> cut views, batch by batch, shard by shard."""
        import torch

        from zeroseg.images import BadImage, decode_image
        from zeroseg.views import center_crop

        put = self._items.put

        def views_of(work: _ShardWork, idx: list[int]) -> tuple[str, _ShardWork, Any]:
            t = time.perf_counter()
            ix = np.asarray(idx)
            px = torch.from_numpy(work.pixels[ix])
            if not self.cut_on_device:
                views = self._cut(px)
            else:  # page-locked, so the copy to the GPU overlaps the forward before it
                views = px.pin_memory() if self.teacher.device.type == "cuda" else px
            work.seconds["crop"] += time.perf_counter() - t
            return "batch", work, (ix, views)

        # extract.batch_size counts views per teacher forward, as the bare-forward bench does.
        per_batch = max(1, self.batch_size // self.layout.num_views)
        for shard in shards:
            work = _ShardWork(shard, self.layout, self.crop_size)
            try:
                keys, spans = self.plan.shard(shard)
                if len(keys) != work.stop - work.start:
                    raise RuntimeError(f"{PLAN_TABLE} row group {shard} has {len(keys)} rows")
                ready: list[int] = []
                for i, (key, span) in enumerate(zip(keys, spans, strict=True)):
                    row = self._load(work, i, key, span, BadImage, decode_image, center_crop)
                    work.rows.append(row)
                    if row["status"] == "ok":
                        ready.append(i)
                    if len(ready) == per_batch:
                        put(views_of(work, ready))
                        ready = []
                if ready:
                    put(views_of(work, ready))
                put(("end", work, None))
            except Exception as exc:  # this shard fails; the next ones still run
                put(("error", work, UnitFailure.of(exc)))

    def _load(
        self, work: _ShardWork, i: int, key: str, span: list[int] | None, bad, decode, crop
    ) -> dict[str, Any]:
        """Read, decode and crop one image into ``work.pixels[i]``; its index row."""
        row = {"row": work.start + i, "key": key, "width": -1, "height": -1, "status": "ok"}
        ta = time.perf_counter()
        try:
            data = read_input(key, span)
        except OSError as exc:  # FileNotFoundError and PermissionError included
            row["status"] = f"skipped:unreadable ({type(exc).__name__})"
            return row
        finally:
            work.seconds["read"] += time.perf_counter() - ta
        tb = time.perf_counter()
        try:
            image = decode(data, min_side=max(self.levels))
            row["width"], row["height"] = image.size
            work.pixels[i] = crop(image, self.crop_size)
            work.valid[i] = 1
        except bad as exc:
            row["status"] = f"skipped:{exc.reason}"
        work.seconds["crop"] += time.perf_counter() - tb
        return row

    def _finish(self, work: _ShardWork, busy: float) -> None:
        """Write the shard's rows, then its marker (last); runs in the writer thread. ``busy``:
        the forward loop's time on the shard since the previous one ended; the shard's total
        adds the write, which overlaps the next shard's forward."""
        t = time.perf_counter()
        objects = write_shard(
            self.stage.path(ZARR_NAME),
            self.layout,
            work.shard,
            work.embeddings,
            work.pixels,
            work.valid,
        )
        write_s = time.perf_counter() - t
        skipped: dict[str, int] = {}
        for r in work.rows:
            if r["status"] != "ok":
                reason = r["status"].split(":", 1)[1]
                skipped[reason] = skipped.get(reason, 0) + 1
        n = work.stop - work.start
        self.stage.write_marker(
            work.shard,
            {
                "shard": work.shard,
                "rows": [work.start, work.stop],
                "ok": int(work.valid.sum()),
                "skipped": int(n - work.valid.sum()),
                "skip_reasons": skipped,
                "index": work.rows,
                # the shard's zarr objects as written (size, sha256): what verification checks
                "objects": objects,
                # read and crop run in the reader thread, overlapping infer; wait is the time
                # the forward loop sat idle waiting for views of this shard.
                "seconds": {
                    **{k: round(v, 4) for k, v in work.seconds.items()},
                    "write": round(write_s, 4),
                    "total": round(busy + time.perf_counter() - t, 4),
                },
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "node_id": _node_id(),
                "resources": self.resources,
                "peak_rss_mb": peak_rss_mb(),
                "started_at": work.started,
                "finished_at": now(),
                "started_unix": round(work.started_unix, 3),
                "finished_unix": round(time.time(), 3),
            },
        )


def _node_id() -> str | None:
    """The Ray node this process runs on (which worker group did the work)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _assigned_resources() -> dict[str, float]:
    """The Ray resources this actor holds (shows which worker group ran a shard)."""
    import ray

    if not ray.is_initialized():  # the class used directly, outside Ray
        return {}
    try:
        return {
            k: round(v, 4) for k, v in ray.get_runtime_context().get_assigned_resources().items()
        }
    except Exception:  # a Ray without this context API: report nothing rather than fail
        return {}


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own image so far: VmHWM on Linux (ru_maxrss
    would also count the parent's peak that a spawned process inherits across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def shards_per_call(pending: int, max_actors: int) -> int:
    """Shards handed to an actor at once: several let its reader run ahead into the next shard
    while the teacher finishes the current one; few enough that every actor of the pool still
    gets about four calls, so work stays balanced and a failure costs little."""
    return max(1, min(MAX_SHARDS_PER_CALL, pending // (4 * max(1, max_actors))))


def _run_shards(
    stage: str, pending: list[int], ctor: dict[str, Any], cfg: Config
) -> dict[int, str]:
    """Run shards on the actor pool; returns why each failed shard failed."""
    import ray
    from tqdm import tqdm

    per_call = shards_per_call(len(pending), actor_range(cfg.extract)[1])
    ds = ray.data.from_items(
        [{"shard": s} for s in pending], override_num_blocks=max(1, -(-len(pending) // per_call))
    )
    ds = ds.map_batches(
        ShardExtractor, fn_constructor_kwargs=ctor, batch_size=per_call, **pool_options(cfg)
    )
    failed: dict[int, UnitFailure] = {}
    with tqdm(total=len(pending), desc="extract shards", unit="shard") as bar:
        for row in ds.iter_rows():
            if row["error"]:
                failed[int(row["shard"])] = UnitFailure(str(row["error"]), bool(row["transient"]))
            bar.update(1)
    return failed


def teacher_shape(teacher: dict[str, Any], normalize: bool) -> tuple[int, int]:
    """(embedding dim, input size) of the teacher. Read from its architecture config when
    open_clip has one, so the driver never loads a large teacher only to learn two numbers."""
    from zeroseg.teacher import Teacher, architecture_shape

    shape = architecture_shape(teacher["model"])
    if shape is None:
        probe = Teacher(teacher["model"], teacher["pretrained"] or None, normalize=normalize)
        shape = probe.embed_dim, probe.image_size
    return shape


class ExtractStage(Stage):
    """Shards of the training images through the teacher into the cache."""

    name = "extract"
    unit_name = "shard"
    skip_message = "cache complete, skipping"

    def __init__(self, cfg: Config, teacher: dict[str, Any] | None = None, log=print):
        self.cfg, self.log = cfg, log
        self.teacher = teacher or resolve_teacher(cfg, log=log)
        self.plan = plan_inputs(cfg.data.train)
        self.fp = extract_fingerprint(cfg, self.teacher, self.plan)
        self.dir = StageDir(stage_uri(cfg, self.fp))
        self.max_retries = cfg.extract.max_retries
        self.layout: CacheLayout | None = None

    def locate(self) -> StageDir:
        return self.dir

    def overwrite(self) -> bool:
        return self.cfg.extract.mode == "overwrite"

    def redo(self) -> list[int]:
        return list(self.cfg.extract.redo_shards)

    def damaged(self) -> tuple[dict[int, str], list[str]]:
        from .cache_verify import verify_cache
        from .runner import SUCCESS

        if not storage.exists(self.dir.path("plan.json")):
            return {}, []
        verdict = verify_cache(self.dir.uri, self.cfg.extract.verify)
        marked = {s: w for s, w in verdict.shards.items() if w != "its marker is missing"}
        broken = [p for p in verdict.stage if not p.startswith(SUCCESS)]
        if self.dir.succeeded() and len(marked) < len(verdict.shards):
            broken.append("a finished shard lost its marker")
        return marked, broken

    def check(self) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised")
        # Before anything is cleared or written: a pool that can never start must not cost the
        # old cache (overwrite) or leave a half-made folder.
        check_pool_resources(self.cfg, ray.cluster_resources(), self.log)

    def prepare(self) -> None:
        from zeroseg.views import num_views

        cfg, stage = self.cfg, self.dir
        embed_dim, image_size = teacher_shape(self.teacher, cfg.teacher.normalize)
        self.layout = layout = CacheLayout(
            len(self.plan.keys),
            num_views(cfg.views.levels),
            embed_dim,
            cfg.views.crop_size,
            cfg.extract.images_per_shard,
        )
        self.teacher_meta = {
            **teacher_identity(self.teacher),
            "embed_dim": embed_dim,
            "image_size": image_size,
            "normalize": cfg.teacher.normalize,
            "precision": cfg.extract.precision,
            **({"accuracy": self.teacher["accuracy"]} if "accuracy" in self.teacher else {}),
        }
        storage.makedirs(stage.uri)
        write_plan_table(stage.path(PLAN_TABLE), self.plan, layout.images_per_shard)
        storage.write_json(
            stage.path("plan.json"),
            {
                "data": storage.normalize(cfg.data.train),
                "input_kind": self.plan.kind,
                "num_images": layout.num_images,
                "images_per_shard": layout.images_per_shard,
                "num_shards": layout.num_shards,
                "keys": PLAN_TABLE,
                "tar_members": sum(s is not None for s in self.plan.spans),
            },
        )
        write_run_info(stage.uri, "extract", config_to_dict(cfg), fingerprint=self.fp)
        create_arrays(stage.path(ZARR_NAME), layout)

    def units(self) -> list[int]:
        assert self.layout is not None
        return list(range(self.layout.num_shards))

    def announce(self, total: int, pending: int) -> None:
        lo, hi = actor_range(self.cfg.extract)
        self.log(
            f"[extract] {len(self.plan.keys)} images in {total} shards -> {self.dir.uri} "
            f"({total - pending} done, {pending} to run)"
        )
        storage.write_json(
            self.dir.path(RUN_INFO),
            {
                "started_at": now(),
                "started_unix": round(time.time(), 3),
                "driver": f"{socket.gethostname()}:{os.getpid()}",
                "shards_to_run": pending,
                "actors": [lo, hi],
            },
        )

    def run_units(self, pending: list[int]) -> dict[int, UnitFailure]:
        cfg = self.cfg
        assert self.layout is not None
        self.ran = getattr(self, "ran", set()) | set(pending)
        ctor = {
            "stage": self.dir.uri,
            "teacher": self.teacher,
            "normalize": cfg.teacher.normalize,
            "levels": list(cfg.views.levels),
            "crop_size": cfg.views.crop_size,
            "batch_size": cfg.extract.batch_size,
            "threads": max(1, int(cfg.extract.cpus_per_actor)),
            "layout": asdict(self.layout),
            "device": cfg.extract.device,
            "precision": cfg.extract.precision,
        }
        return _run_shards(self.dir.uri, pending, ctor, cfg)

    def finalize(self, seconds: float) -> None:
        assert self.layout is not None
        layout = self.layout
        ran = sum(b - a for a, b in map(layout.shard_rows, getattr(self, "ran", set())))
        finalize_extract(
            self.dir, layout, self.teacher_meta, self.cfg, self.fp, seconds, self.log, ran
        )

    def result(self) -> str:
        return self.dir.uri


def failed_shards(stage: StageDir) -> dict[int, dict[str, Any]]:
    """Failure records ``failed/NNNNN.json`` (attempts, traceback) of shards without a marker."""
    return stage.failed_units()


def run_extract(cfg: Config, log=print, teacher: dict[str, Any] | None = None) -> str:
    """Run (or resume) extraction; returns the cache's stage URI."""
    return run_stage(ExtractStage(cfg, teacher, log), log)


def finalize_extract(
    stage: StageDir,
    layout: CacheLayout,
    teacher_meta: dict[str, Any],
    cfg: Config,
    fp: str,
    elapsed: float,
    log,
    images_this_run: int | None = None,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # One marker at a time: the driver never holds the index of the whole dataset.
    schema = pa.schema(
        [
            ("row", pa.int64()),
            ("key", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("status", pa.string()),
        ]
    )
    reasons: dict[str, int] = {}
    seconds = {"read": 0.0, "crop": 0.0, "infer": 0.0, "wait": 0.0, "write": 0.0, "total": 0.0}
    per_shard = []
    fs, path = storage.fs_and_path(stage.path("index.parquet"))
    with (
        fs.open(path, "wb") as f,
        pq.ParquetWriter(f, schema) as writer,
        ThreadPoolExecutor(MARKER_READERS) as pool,
    ):
        # Markers are fetched a window at a time in parallel (object stores: one GET each).
        window = range(0, layout.num_shards, MARKER_READERS * 4)
        markers = (
            m
            for lo in window
            for m in pool.map(
                stage.read_marker, range(lo, min(lo + MARKER_READERS * 4, layout.num_shards))
            )
        )
        for m in markers:
            rows = m["index"]
            writer.write_table(
                pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)
            )
            for k, v in m["skip_reasons"].items():
                reasons[k] = reasons.get(k, 0) + v
            for k in seconds:
                seconds[k] += m["seconds"].get(k, 0.0)
            per_shard.append(
                {
                    "shard": m["shard"],
                    "objects": m.get("objects"),
                    "images": m["rows"][1] - m["rows"][0],
                    "ok": m["ok"],
                    "skipped": m["skipped"],
                    "skip_reasons": m["skip_reasons"],
                    "seconds": m["seconds"],
                    "worker": m.get("worker"),
                    "peak_rss_mb": m.get("peak_rss_mb"),
                }
            )
    ok = sum(m["ok"] for m in per_shard)
    from .cache_verify import index_record, marker_records

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
        "shards": per_shard,
        # what `zeroseg status --verify` and every training run check the stored objects against
        "markers": marker_records(stage, layout.num_shards),
        "index": index_record(stage),
        "wall_seconds_last_run": round(elapsed, 3),
        "code": code_version(),
        "packages": package_versions(),
        "created_at": now(),
    }
    storage.write_json(stage.path("manifest.json"), manifest)
    ran = layout.num_images if images_this_run is None else images_this_run
    rate = f"{ran / elapsed:.1f} img/s" if elapsed > 0 and ran else "no images"
    log(
        f"[extract] done: {ok} images ok, {layout.num_images - ok} skipped {reasons or ''}; "
        f"{rate} this run ({ran} images); per-shard seconds {manifest['shard_seconds']}"
    )
