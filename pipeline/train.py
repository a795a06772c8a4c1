"""train: Ray Train workers distill the teacher cache into the student.

The teacher is never loaded: workers read student pixels and the 30 view embeddings from the
cache. Checkpoints go through Ray Train to ``<root>/train/<run>/``; rerunning the same command
finds Ray Train's checkpoint snapshot there and resumes from the newest checkpoint. The final
weights land in ``<run>/final/`` as safetensors plus a JSON config.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

from zeroseg.config import Config, config_to_dict

from . import storage
from .cache import CacheReader
from .runner import code_version, fingerprint, now, write_run_info

FINAL = "final"
WEIGHTS = "model.safetensors"


def train_fingerprint(cfg: Config, cache_fp: str) -> str:
    """What changes the trained weights; worker counts and CPUs per worker do not."""
    t = config_to_dict(cfg)["train"]
    for k in ("name", "num_workers", "cpus_per_worker", "use_gpu", "checkpoint_every_steps"):
        t.pop(k)
    return fingerprint({"cache": cache_fp, "student": config_to_dict(cfg)["student"], "train": t})


def run_dir(cfg: Config, cache_fp: str) -> tuple[str, str]:
    """(storage_path, run name) for Ray Train."""
    name = f"{cfg.train.name}-{train_fingerprint(cfg, cache_fp)}"
    return storage.join(cfg.storage.root, "train"), name


def student_config(cfg: Config) -> dict[str, Any]:
    from zeroseg.models import student_config as preset

    merged = dict(preset(cfg.student.preset))
    merged.update(cfg.student.overrides)
    return merged


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _train_loop(loop: dict[str, Any]) -> None:
    """Runs inside every Ray Train worker."""
    import numpy as np
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from zeroseg.losses import distill_loss, target_center, view_indices
    from zeroseg.models import build_student

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(loop["threads"])))
    tc = loop["train"]
    torch.manual_seed(tc["seed"] + rank)
    reader = CacheReader(loop["cache"])
    rows = reader.valid_rows
    if len(rows) < world:
        raise RuntimeError(f"cache has {len(rows)} usable images for {world} workers")
    pixels_all, emb_all = reader.read_rows(rows)  # small caches fit in memory here
    levels = list(tc["view_levels"] or loop["levels"])
    if levels != list(loop["levels"]):
        emb_all = emb_all[:, view_indices(loop["levels"], levels)]
    per_rank = len(rows) // world
    batch = max(1, min(tc["batch_size"] // world, per_rank))
    steps_per_epoch = max(1, per_rank // batch)
    total_steps = steps_per_epoch * tc["epochs"]
    if tc["max_steps"]:
        total_steps = min(total_steps, tc["max_steps"])
    warmup = steps_per_epoch * tc["warmup_epochs"]

    model = build_student(loop["student"], embed_dim=loop["embed_dim"])
    base_lr = tc["lr"]
    # Biases, norms, learnable tokens and the assignment query/key are not decayed.
    opt = torch.optim.AdamW(model.param_groups(tc["weight_decay"]), lr=base_lr, betas=(0.9, 0.95))
    step, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
            with open(os.path.join(d, "history.json")) as f:
                history = json.load(f)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if rank == 0:
            print(f"[train] resumed from checkpoint at step {step}")
    weights = {k: tc[f"w_{k}"] for k in ("multiscale", "matching", "recon", "dense", "patch")}
    # A switched-off term (or no masking) leaves some parameters without gradient; DDP must know.
    unused = tc["mask_ratio"] == 0 or len(levels) == 1 or any(v == 0 for v in weights.values())
    model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    # The same centre on every rank: the mean over every cached image, not a worker's slice.
    center = target_center(emb_all) if tc["center_targets"] else None
    gen = torch.Generator().manual_seed(tc["seed"] * 1000 + rank)

    def save(final: bool) -> None:
        metrics = history[-1] if history else {"step": step}
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                raw = model.module if hasattr(model, "module") else model
                torch.save(
                    {"model": raw.state_dict(), "optimizer": opt.state_dict(), "step": step},
                    os.path.join(d, "state.pt"),
                )
                with open(os.path.join(d, "history.json"), "w") as f:
                    json.dump(history, f)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({**metrics, "final": final}, checkpoint=checkpoint)

    model.train()
    last_ckpt_step = step
    wait = compute = 0.0
    t_window = time.perf_counter()
    samples_window = 0
    while step < total_steps:
        epoch = step // steps_per_epoch
        perm = np.random.default_rng((tc["seed"], epoch)).permutation(len(rows))
        mine = perm[rank * per_rank : (rank + 1) * per_rank]
        start_batch = step % steps_per_epoch
        for b in range(start_batch, steps_per_epoch):
            if step >= total_steps:
                break
            t0 = time.perf_counter()
            idx = mine[b * batch : (b + 1) * batch]
            x = torch.from_numpy(pixels_all[idx]).permute(0, 3, 1, 2).float().div_(255.0)
            views = torch.from_numpy(emb_all[idx]).float()
            t1 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, base_lr)
            out = model(x, mask_ratio=tc["mask_ratio"], generator=gen)
            total, terms = distill_loss(
                out,
                views,
                weights,
                levels=levels,
                dense_levels=(max(levels),),
                target_center=center,
                multiscale_views=tc["multiscale_views"],
            )
            opt.zero_grad(set_to_none=True)
            total.backward()
            if tc["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
            opt.step()
            step += 1
            t2 = time.perf_counter()
            wait += t1 - t0
            compute += t2 - t1
            samples_window += len(idx) * world
            if step % loop["log_every"] == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_window
                row = {
                    "step": step,
                    "epoch": epoch,
                    "lr": opt.param_groups[0]["lr"],
                    "loss": float(total.detach()),
                    **{f"loss_{k}": float(v) for k, v in terms.items()},
                    "samples_per_s": samples_window / max(elapsed, 1e-9),
                    "data_wait_fraction": wait / max(wait + compute, 1e-9),
                }
                for key in ("assign_logit_std", "groups_used"):
                    if key in out:
                        row[key] = float(out[key])
                history.append(row)
                if rank == 0:
                    rate = row["samples_per_s"] / (batch * world)  # steps per second
                    eta = (total_steps - step) / max(rate, 1e-9)
                    print(progress_line(row, total_steps, eta))
                t_window, samples_window, wait, compute = time.perf_counter(), 0, 0.0, 0.0
            if step - last_ckpt_step >= loop["checkpoint_every"] and step < total_steps:
                save(final=False)
                last_ckpt_step = step
    save(final=True)


def progress_line(row: dict[str, Any], total_steps: int, eta: float) -> str:
    terms = " ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
    return (
        f"[train] step {row['step']}/{total_steps} (eta {eta:.0f} s) loss {row['loss']:.4f} "
        f"[{terms}] {row['samples_per_s']:.0f} samples/s, "
        f"data wait {row['data_wait_fraction']:.1%}, "
        f"groups used {row.get('groups_used', 0):.1f}, "
        f"assign-logit spread {row.get('assign_logit_std', 0):.3f}"
    )


def run_train(cfg: Config, cache_uri: str, log=print) -> str:
    """Train (or resume) the student on a finished cache; returns the final weights' folder."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    reader = CacheReader(cache_uri)
    manifest = reader.manifest
    cache_fp = manifest["fingerprint"]
    storage_path, name = run_dir(cfg, cache_fp)
    run_uri = storage.join(storage_path, name)
    final_uri = storage.join(run_uri, FINAL)
    if storage.exists(storage.join(final_uri, WEIGHTS)):
        log(f"[train] finished run found, skipping: {final_uri}")
        return final_uri
    student = student_config(cfg)
    embed_dim = int(manifest["teacher"]["embed_dim"])
    storage.makedirs(run_uri)
    write_run_info(run_uri, "train", config_to_dict(cfg), cache=cache_uri)
    threads = max(1, int(cfg.train.cpus_per_worker))
    loop = {
        "cache": cache_uri,
        "train": config_to_dict(cfg)["train"],
        "student": student,
        "embed_dim": embed_dim,
        "levels": list(manifest["levels"]),
        "threads": threads,
        "log_every": 10,
        "checkpoint_every": cfg.train.checkpoint_every_steps,
    }
    log(f"[train] {len(reader)} cached images, {cfg.train.num_workers} worker(s) -> {run_uri}")
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
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            **run_kwargs,
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
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
    return final_uri


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
        storage.join(final_uri, "config.json"),
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
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in history]
    for key in ("loss", "loss_multiscale", "loss_matching", "loss_recon"):
        if history and key in history[0]:
            ax.plot(steps, [r[key] for r in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def load_student(final_uri: str):
    """(student model in eval mode, its config dict) from a ``final/`` folder or its weights."""
    from safetensors.torch import load as st_load

    from zeroseg.models import build_student

    if final_uri.endswith(WEIGHTS):
        final_uri = final_uri[: -len(WEIGHTS)].rstrip("/")
    cfg = storage.read_json(storage.join(final_uri, "config.json"))
    model = build_student(cfg["student"], embed_dim=cfg["embed_dim"])
    model.load_state_dict(st_load(storage.read_bytes(storage.join(final_uri, WEIGHTS))))
    model.eval()
    return model, cfg
