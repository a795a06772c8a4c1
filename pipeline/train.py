"""train: Ray Train workers distill the teacher cache into the student.

The teacher is never run on the views: workers read student pixels and the 30 view embeddings
from the cache (a student with the teacher stem holds a frozen copy of the teacher's image
tower). Checkpoints go through Ray Train to ``<root>/train/<run>/``; rerunning the same command
finds Ray Train's checkpoint snapshot there and resumes from the newest checkpoint. The final
weights land in ``<run>/final/`` as safetensors plus a JSON config.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from zeroseg import storage
from zeroseg.checkpoint import CONFIG, FINAL, WEIGHTS
from zeroseg.config import Config, TrainConfig, config_to_dict, student_architecture
from zeroseg.report import figure_png
from zeroseg.toy_assets import SHIPPED, shipped_init_record
from zeroseg.train_step import LOSS_TERMS

from .cache import CacheReader
from .runner import (
    Stage,
    StageDir,
    UnitFailure,
    code_version,
    fingerprint,
    is_transient,
    now,
    run_stage,
    write_run_info,
)

# Operational keys: they decide where, how fast and how safely training runs, not the weights.
# (The worker count is not one: each rank's batch and slice of the rows round down with it, so
# it changes the effective batch and the data order.)
OPERATIONAL_KEYS = (
    "name",
    "seeds",  # a list of runs to make, each fingerprinted by its own train.seed
    "cpus_per_worker",
    "use_gpu",
    "resource_label",
    "checkpoint_every_steps",
    "checkpoint_every_minutes",
    "checkpoints_to_keep",
    "max_failures",
    "reader",
    "stream_above_mb",
    "shuffle_buffer",
    "prefetch_batches",
    "log_every_steps",
)
# Recipe keys added after runs were fingerprinted: left out at their default, so a config that
# does not use them keeps its run folder.
LATER_RECIPE_DEFAULTS = {
    "lr_scaling": "none",
    "precision": "bf16",
    "num_workers": 1,
    "dense_levels": [],
    "augment": "none",
    "w_region": 0.0,
    "affinity_stride": 1,
}
# Amount of train.resource_label each worker asks for: the label pins workers to nodes that
# offer it without competing for it.
RESOURCE_PER_WORKER = 0.001


def train_fingerprint(cfg: Config, cache_fp: str) -> str:
    """What changes the trained weights (the worker count included); checkpoint cadence, reader
    settings and resource labels do not."""
    t = config_to_dict(cfg)["train"]
    for k in OPERATIONAL_KEYS:
        t.pop(k)
    for k, default in LATER_RECIPE_DEFAULTS.items():
        if t.get(k) == default:
            t.pop(k)
    student = config_to_dict(cfg)["student"]
    if not student.get("init"):  # added later: a run without an init keeps its folder
        student.pop("init", None)
    elif student["init"] == SHIPPED:  # the packaged tower: its bytes, wherever installed
        student["init"] = {"uri": SHIPPED, "sha256": shipped_init_record()["sha256"]}
    else:  # the file itself, not its spelling: a re-pretrained init trains a new run
        uri = storage.normalize(student["init"])
        try:
            student["init"] = {"uri": uri, **storage.file_signature(uri)}
        except FileNotFoundError:
            student["init"] = {"uri": uri}
    return fingerprint({"cache": cache_fp, "student": student, "train": t})


def init_uri(init: str) -> str:
    """``student.init`` as the workers read it: "shipped" stays a name, a path turns absolute."""
    return init if init in ("", SHIPPED) else storage.normalize(init)


def run_dir(cfg: Config, cache_fp: str) -> tuple[str, str]:
    """(storage_path, run name) for Ray Train."""
    name = f"{cfg.train.name}-{train_fingerprint(cfg, cache_fp)}"
    return storage.join(cfg.storage.root, "train"), name


def student_config(cfg: Config) -> dict[str, Any]:
    """The run's architecture, flat (the form ``final/config.json`` keeps, so every earlier
    reader loads it): the preset's fields, then ``student.overrides`` in either spelling."""
    return student_architecture(cfg)


def _all_reduce_sum(values, device):
    """Sum a float64 tensor over ranks (no-op on one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = values.to(device)
        dist.all_reduce(t)
        return t.cpu()
    return values


def _rank0_decides(flag: bool, device) -> bool:
    """Rank 0's value of ``flag`` on every rank, so all ranks checkpoint at the same step."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())
    return flag


@dataclass
class TrainLoopConfig:
    """What every Ray Train worker needs, built once by :func:`run_train`. Ray Train carries
    ``train_loop_config`` as a dict, so it crosses as :meth:`to_dict` / :meth:`from_dict` (plain
    values: the run's recorded parameters stay readable)."""

    cache: str  # the teacher cache's URI
    run_uri: str
    train: TrainConfig
    student: dict[str, Any]  # the student's model config (preset merged with overrides)
    embed_dim: int
    teacher_model: str  # the cache's teacher, whose tower a teacher stem copies
    teacher_pretrained: str
    levels: list[int]  # the cache's grid levels, in its view layout
    expected: dict[str, Any]  # the manifest fields the cache must match
    reader: str  # "memory" or "stream"
    threads: int  # torch threads per worker
    init: str = ""  # student.init: a pretrained ViT encoder to start from

    @classmethod
    def build(
        cls,
        cfg: Config,
        cache_uri: str,
        run_uri: str,
        manifest: dict[str, Any],
        student: dict[str, Any],
        reader: str,
    ) -> TrainLoopConfig:
        """The workers' config for training ``student`` on the cache ``manifest`` describes."""
        from .cache_stream import expected_manifest

        embed_dim = int(manifest["teacher"]["embed_dim"])
        return cls(
            cache=cache_uri,
            run_uri=run_uri,
            train=TrainConfig(**config_to_dict(cfg)["train"]),
            student=student,
            embed_dim=embed_dim,
            teacher_model=manifest["teacher"]["model"],
            teacher_pretrained=manifest["teacher"]["pretrained"],
            levels=list(manifest["levels"]),
            expected=expected_manifest(cfg, embed_dim),
            reader=reader,
            threads=max(1, int(cfg.train.cpus_per_worker)),
            init=init_uri(cfg.student.init),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainLoopConfig:
        return cls(**{**d, "train": TrainConfig(**d["train"])})


def _train_loop(config: dict[str, Any]) -> None:
    """Runs inside every Ray Train worker; ``config`` is a :class:`TrainLoopConfig` dict."""
    import socket

    import numpy as np
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from zeroseg.augment import step_generator
    from zeroseg.logs import quiet_named_loggers
    from zeroseg.losses import target_center, view_indices
    from zeroseg.models import build_student
    from zeroseg.train_step import StepBatch, make_optimizer, step_settings, train_step

    from .cache_stream import check_manifest, make_source, partial_center_sum
    from .train_log import MetricsLog

    quiet_named_loggers()
    loop = TrainLoopConfig.from_dict(config)
    tc = loop.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(loop.threads)))
    device = get_device() if tc.use_gpu else torch.device("cpu")
    torch.manual_seed(tc.seed + rank)
    reader = CacheReader(loop.cache)
    check_manifest(reader.manifest, loop.expected, loop.cache)
    source = make_source(
        loop.reader,
        reader,
        rank,
        world,
        tc.batch_size,
        tc.seed,
        tc.shuffle_buffer,
        tc.prefetch_batches,
    )
    batch, steps_per_epoch = source.batch, source.steps_per_epoch
    total_steps = steps_per_epoch * tc.epochs
    if tc.max_steps:
        total_steps = min(total_steps, tc.max_steps)
    settings = step_settings(
        tc,
        loop.levels,
        global_batch=batch * world,
        total_steps=total_steps,
        warmup_steps=steps_per_epoch * tc.warmup_epochs,
        gpu=tc.use_gpu,
    )
    view_idx = None
    if list(settings.levels) != list(loop.levels):
        view_idx = view_indices(loop.levels, settings.levels)

    model = build_student(loop.student, embed_dim=loop.embed_dim)
    if model.cfg.stem == "teacher":  # a frozen copy of the trained teacher tower
        model.patch_embed.load_teacher(loop.teacher_model, loop.teacher_pretrained)
    if loop.init:  # every rank loads the same weights (a resumed run overwrites them below)
        from zeroseg.models.encoder_init import load_encoder_init

        report = load_encoder_init(model, loop.init)
        if rank == 0:
            print(f"[train] {report.summary()}")
    opt = make_optimizer(model, settings)
    step, history, center = 0, [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
            with open(os.path.join(d, "history.json")) as f:
                history = json.load(f)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        center = state.get("center")
        if rank == 0:
            print(f"[train] resumed from checkpoint at step {step}")
    resumed_from = step
    storage.write_json(
        storage.join(loop.run_uri, "workers", f"rank-{rank}.json"),
        {
            "rank": rank,
            "world": world,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "start_step": step,
            "total_steps": total_steps,
            "global_batch": batch * world,
            "reader": source.kind,
            "started_at": now(),
            "started_unix": time.time(),
        },
    )
    # A switched-off term (or no masking) leaves some parameters without gradient; DDP must know.
    unused = settings.leaves_unused_parameters
    model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    if tc.center_targets and center is None:
        # The same centre on every rank: the mean over every cached image, not a worker's slice.
        if source.kind == "memory":
            emb = source.embeddings if view_idx is None else source.embeddings[:, view_idx]
            center = target_center(emb)
        else:  # one streaming pass, split over the ranks and all-reduced
            total, count = partial_center_sum(reader, rank, world, view_idx)
            summed = _all_reduce_sum(torch.from_numpy(np.append(total, count)), device)
            center = (summed[:-1] / summed[-1]).float()
    center_dev = center.to(device) if center is not None else None
    raw_model = model.module if hasattr(model, "module") else model
    posed = settings.augment != "none"  # train.augment: draw poses each step
    stem_bank = None  # a posed image needs the stem run on it, per batch
    if not posed:
        stem_bank = stem_feature_bank(raw_model, source, device, log=print if rank == 0 else None)
    gen = torch.Generator().manual_seed(tc.seed * 1000 + rank)
    metrics_log = MetricsLog(loop.run_uri, enabled=rank == 0)

    def save(final: bool) -> None:
        metrics = history[-1] if history else {"step": step}
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                raw = model.module if hasattr(model, "module") else model
                state = {"model": raw.state_dict(), "optimizer": opt.state_dict(), "step": step}
                if center is not None:
                    state["center"] = center
                torch.save(state, os.path.join(d, "state.pt"))
                with open(os.path.join(d, "history.json"), "w") as f:
                    json.dump(history, f)
                checkpoint = ray.train.Checkpoint.from_directory(d)
                metrics_log.sync(history)
            ray.train.report({**metrics, "final": final}, checkpoint=checkpoint)

    model.train()
    last_ckpt_step, last_ckpt_t = step, time.monotonic()
    wait = compute = 0.0
    t_window = time.perf_counter()
    samples_window = 0
    if stem_bank is None:
        batches = source.run(step, total_steps)
    else:  # the batch's row positions pick its precomputed stem features
        batches = source.run(step, total_steps, with_rows=True)
    while step < total_steps:
        t0 = time.perf_counter()
        epoch, px, emb, *rows = next(batches)
        stem = stem_bank[rows[0]].to(device, non_blocking=True) if rows else None
        x = torch.from_numpy(px).permute(0, 3, 1, 2).float().div_(255.0)
        views = torch.from_numpy(emb if view_idx is None else emb[:, view_idx]).float()
        x = x.to(device, non_blocking=True)
        views = views.to(device, non_blocking=True)
        t1 = time.perf_counter()
        result = train_step(
            model,
            StepBatch(x, views, stem),
            opt,
            step,
            settings,
            generator=gen,
            target_center=center_dev,
            augment_generator=step_generator(tc.seed, step, rank) if posed else None,
        )
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        wait += t1 - t0
        compute += t2 - t1
        samples_window += len(px) * world
        if step % tc.log_every_steps == 0 or step == total_steps:
            elapsed = time.perf_counter() - t_window
            row = {
                "step": step,
                "epoch": epoch,
                "lr": result.lr,
                **result.losses(),
                "samples_per_s": samples_window / max(elapsed, 1e-9),
                "data_wait_fraction": wait / max(wait + compute, 1e-9),
                "resumed_from_step": resumed_from,
                **{k: float(v) for k, v in result.stats.items()},
            }
            history.append(row)
            if rank == 0:
                metrics_log.add(row)
                rate = row["samples_per_s"] / (batch * world)  # steps per second
                eta = (total_steps - step) / max(rate, 1e-9)
                print(progress_line(row, total_steps, eta))
            t_window, samples_window, wait, compute = time.perf_counter(), 0, 0.0, 0.0
        if step < total_steps:
            due = step - last_ckpt_step >= tc.checkpoint_every_steps
            if tc.checkpoint_every_minutes > 0 and not due:
                late = time.monotonic() - last_ckpt_t >= tc.checkpoint_every_minutes * 60
                due = _rank0_decides(late, device)
            if due:
                save(final=False)
                last_ckpt_step, last_ckpt_t = step, time.monotonic()
    batches.close()
    source.close()
    save(final=True)
    if rank == 0:
        metrics_log.close(history)


STEM_BANK_MAX_BYTES = 4 << 30


def stem_feature_bank(model, source, device, log=None, max_bytes: int = STEM_BANK_MAX_BYTES):
    """The frozen teacher stem's features of every row a memory source holds, on the host.

    The stem is the teacher's tower, frozen and run without augmentation, so its output per
    image never changes: computing it once instead of every epoch takes the tower (about half
    of a CPU step) out of training. None when the student has no teacher stem, the rows are
    streamed, or the features would pass ``max_bytes``; training then runs the tower per batch.
    """
    import torch

    if model.cfg.stem != "teacher" or source.kind != "memory":
        return None
    n, h, w = source.pixels.shape[:3]
    ps = model.cfg.patch_size
    nbytes = n * (h // ps) * (w // ps) * model.patch_embed.proj.in_features * 4
    if nbytes > max_bytes:
        if log:
            log(f"[train] teacher stem: {nbytes / 2**20:.0f} MB of features, run per batch")
        return None
    t0 = time.perf_counter()
    chunks = []
    for i in range(0, n, 128):
        px = torch.from_numpy(source.pixels[i : i + 128]).to(device)
        chunks.append(model.stem_features(px.permute(0, 3, 1, 2).float().div_(255.0)).cpu())
    bank = torch.cat(chunks)
    if log:
        log(
            f"[train] teacher stem: features of {n} images computed once "
            f"({time.perf_counter() - t0:.0f} s, {bank.numel() * 4 / 2**20:.0f} MB), "
            "reused every epoch"
        )
    return bank


def progress_line(row: dict[str, Any], total_steps: int, eta: float) -> str:
    terms = " ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
    return (
        f"[train] step {row['step']}/{total_steps} (eta {eta:.0f} s) loss {row['loss']:.4f} "
        f"[{terms}] {row['samples_per_s']:.0f} samples/s, "
        f"data wait {row['data_wait_fraction']:.1%}, "
        f"groups used {row.get('groups_used', 0):.1f}, "
        f"assign-logit spread {row.get('assign_logit_std', 0):.3f}"
    )


def teacher_embed_dim(model_name: str) -> int | None:
    """The embedding size of an open_clip architecture from its config (no weights loaded);
    None for names open_clip does not list (e.g. hub models)."""
    from zeroseg.teacher import architecture_shape

    shape = architecture_shape(model_name)
    return shape[0] if shape else None


def check_cache(cfg: Config, cache_uri: str) -> CacheReader:
    """Open the cache and refuse one that does not match the training config (a
    :class:`~zeroseg.config.ConfigError` naming the key), before any cluster work."""
    from .cache_stream import check_manifest, expected_manifest

    reader = CacheReader(cache_uri)
    expected = expected_manifest(cfg, teacher_embed_dim(cfg.teacher.model))
    check_manifest(reader.manifest, expected, cache_uri)
    return reader


def scaling_config(cfg: Config):
    """Ray Train's ScalingConfig from ``train.*``: workers, CPU/GPU, custom resource label."""
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1.0
    if cfg.train.resource_label:
        resources[cfg.train.resource_label] = RESOURCE_PER_WORKER
    return ScalingConfig(
        num_workers=cfg.train.num_workers,
        use_gpu=cfg.train.use_gpu,
        resources_per_worker=resources,
    )


def check_worker_resources(cfg: Config, cluster: dict[str, float], local: bool, log) -> None:
    """A worker group that no node can host: an error on a local Ray, a warning on a cluster
    (an autoscaler may still add such nodes)."""
    label = cfg.train.resource_label
    problems = []
    if label and cluster.get(label, 0) < RESOURCE_PER_WORKER * cfg.train.num_workers:
        problems.append(
            f"train.resource_label={label}: no Ray node offers resource '{label}' (start the "
            f"training workers with --resources='{{\"{label}\": 1}}')"
        )
    if cfg.train.use_gpu and cluster.get("GPU", 0) < cfg.train.num_workers:
        problems.append(
            f"train.use_gpu=true with train.num_workers={cfg.train.num_workers}: the cluster "
            f"has {cluster.get('GPU', 0):g} GPU(s)"
        )
    if not problems:
        return
    if local:
        raise RuntimeError("; ".join(problems))
    for p in problems:
        log(f"[train] warning: {p}")


MARKERS = "markers"


class TrainStage(Stage):
    """One unit, the whole run: Ray Train trains (resuming from its newest checkpoint), the
    final weights are exported, then the run's marker. Ray Train restarts failed workers
    itself (``train.max_failures``), so the runner does not retry on top of it."""

    name = "train"
    unit_name = "run"
    skip_message = "finished run found, skipping"

    def __init__(self, cfg: Config, cache_uri: str, log=print):
        self.cfg, self.cache_uri, self.log = cfg, cache_uri, log
        # the upstream: a finished cache that fits this config, else an error naming the key
        self.reader = check_cache(cfg, cache_uri)
        storage_path, name = run_dir(cfg, self.reader.manifest["fingerprint"])
        self.dir = StageDir(storage.join(storage_path, name), marker_dir=MARKERS)
        self.final_uri = storage.join(self.dir.uri, FINAL)

    def locate(self) -> StageDir:
        return self.dir

    def check(self) -> None:
        import ray

        from .cache_verify import require_intact

        require_intact(self.cache_uri)  # never train on rows a lost object would read as zeros
        local = not (self.cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        check_worker_resources(self.cfg, ray.cluster_resources(), local, self.log)

    def units(self) -> list[int]:
        return [0]

    def run_units(self, pending: list[int]) -> dict[int, UnitFailure]:
        t0 = time.perf_counter()
        try:
            # final weights without a marker: a run finished before runs had markers
            if not storage.exists(storage.join(self.final_uri, WEIGHTS)):
                _fit(self.cfg, self.cache_uri, self.reader, self.dir.uri, self.final_uri, self.log)
        except TrainingFailed as exc:
            return {0: UnitFailure(str(exc), is_transient(exc.cause) if exc.cause else False)}
        except Exception as exc:
            return {0: UnitFailure.of(exc)}
        info = storage.read_json(storage.join(self.final_uri, CONFIG))
        self.dir.write_marker(
            0,
            {
                "final": self.final_uri,
                "steps": info.get("steps"),
                "train_seconds": info.get("train_seconds"),
                "seconds": round(time.perf_counter() - t0, 3),
                "finished_at": now(),
            },
        )
        return {}

    def result(self) -> str:
        return self.final_uri


class TrainingFailed(RuntimeError):
    """Ray Train gave up (after its own worker restarts); ``cause`` is the worker's error."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


def run_train(cfg: Config, cache_uri: str, log=print) -> str:
    """Train (or resume) the student on a finished cache; returns the final weights' folder."""
    return run_stage(TrainStage(cfg, cache_uri, log), log)


def _fit(
    cfg: Config, cache_uri: str, reader: CacheReader, run_uri: str, final_uri: str, log
) -> None:
    """Ray Train on the cache, then the final weights exported to ``final_uri``."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from zeroseg.logs import verbose

    from .cache_stream import cache_payload_bytes, choose_reader

    manifest = reader.manifest
    storage_path, name = run_dir(cfg, manifest["fingerprint"])
    student = student_config(cfg)
    if student.get("stem") == "teacher" and not student.get("teacher_model"):
        student["teacher_model"] = manifest["teacher"]["model"]  # the cache's own teacher
    embed_dim = int(manifest["teacher"]["embed_dim"])
    storage.makedirs(run_uri)
    write_run_info(run_uri, "train", config_to_dict(cfg), cache=cache_uri)
    kind = choose_reader(cfg.train.reader, reader, cfg.train.stream_above_mb)
    loop = TrainLoopConfig.build(cfg, cache_uri, run_uri, manifest, student, kind)
    log(
        f"[train] {len(reader)} cached images ({cache_payload_bytes(reader) / 2**20:.0f} MB, "
        f"{kind} reader), {cfg.train.num_workers} worker(s) -> {run_uri}"
    )
    run_kwargs: dict[str, Any] = {"storage_path": storage.normalize(storage_path), "name": name}
    if not storage.is_local(storage_path):
        import pyarrow.fs as pafs

        fs, path = storage.fs_and_path(storage_path)
        run_kwargs = {
            "storage_path": path,
            "name": name,
            "storage_filesystem": pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
        }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop.to_dict(),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            **run_kwargs,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
            # Ray Train's own progress lines (worker group, process group, device moves,
            # checkpoint reports) stay out of our log unless asked for
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise TrainingFailed(f"training failed: {result.error}", result.error)
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    export_final(
        result.checkpoint,
        final_uri,
        student,
        embed_dim,
        manifest,
        cfg,
        time.perf_counter() - t0,
        log,
    )


def export_final(
    checkpoint,
    final_uri: str,
    student: dict[str, Any],
    embed_dim: int,
    manifest: dict[str, Any],
    cfg: Config,
    seconds: float,
    log,
) -> None:
    """safetensors weights + JSON config (+ metrics log and loss curve) in ``final/``."""
    import torch
    from safetensors.torch import save as st_save

    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(d, "history.json")) as f:
            history = json.load(f)
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    storage.write_json(storage.join(final_uri, "metrics.json"), history)
    storage.write_text(
        storage.join(final_uri, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history)
    )
    storage.write_json(
        storage.join(final_uri, CONFIG),
        {
            "student": student,
            "embed_dim": embed_dim,
            "teacher": {k: manifest["teacher"][k] for k in ("model", "pretrained")},
            "teacher_normalize": manifest["teacher"].get("normalize", True),
            "templates": list(cfg.teacher.templates),
            "views": {"levels": manifest["levels"], "crop_size": manifest["crop_size"]},
            "cache": manifest["fingerprint"],
            "train": config_to_dict(cfg)["train"],
            "steps": int(state["step"]),
            # the centre the per-patch terms were trained on; the read-out needs it (decenter)
            "target_center": state["center"].tolist() if state.get("center") is not None else None,
            "train_seconds": round(seconds, 2),
            "code": code_version(),
            "created_at": now(),
        },
    )
    try:
        png = loss_curve_png(history)
        storage.write_bytes(storage.join(final_uri, "loss_curve.png"), png)
    except Exception as exc:  # a plot must never fail a finished training run
        log(f"[train] could not draw the loss curve: {exc}")
    # The weights are written last: their presence marks the run finished.
    storage.write_bytes(storage.join(final_uri, WEIGHTS), st_save(tensors))
    last = history[-1] if history else {}
    log(
        f"[train] done: {state['step']} steps in {seconds:.0f} s, final loss "
        f"{last.get('loss', float('nan')):.4f} -> {final_uri}"
    )


def loss_curve_png(history: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.5), dpi=100)
    steps = [r["step"] for r in history]
    # the total and every term that was on (a term that stays 0, e.g. recon without masking,
    # has no place on a log scale)
    for key in ("loss", *(f"loss_{t}" for t in LOSS_TERMS)):
        values = [r.get(key, 0.0) for r in history]
        if any(v > 0 for v in values):
            ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return figure_png(fig)
