"""The training step: one function for the train stage's workers, the benches and the dry run.

The workers' loop runs here in-process with Ray Train's worker API stubbed out (one rank, no
cluster), so the same test can watch the step the loop and the bench take."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from pipeline.cache import CacheReader
from pipeline.train import TrainLoopConfig, _train_loop, student_config
from tests.synthetic_cache import write_cache
from zeroseg import train_step as ts
from zeroseg.config import load_config
from zeroseg.losses import distill_loss
from zeroseg.models import build_student

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D = 32
LEVELS = (1, 2, 3, 4)
WEIGHTS = {"multiscale": 1.0, "matching": 1.0, "recon": 1.0, "dense": 2.0, "patch": 1.0}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps: two torch threads on a busy two-core machine mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(**kw) -> ts.StepSettings:
    base = {
        "weights": WEIGHTS,
        "levels": LEVELS,
        "mask_ratio": 0.5,
        "peak_lr": 1e-3,
        "total_steps": 10,
        "warmup_steps": 2,
    }
    return ts.StepSettings(**{**base, **kw})


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student("student-tiny-dense", D).train()


def _batch(seed: int = 0) -> ts.StepBatch:
    g = torch.Generator().manual_seed(seed)
    views = torch.nn.functional.normalize(torch.randn(2, 30, D, generator=g), dim=-1)
    return ts.StepBatch(torch.rand(2, 3, 64, 64, generator=g), views)


def _loop_step_as_written_before(model, opt, batch, step, s, gen, center):
    """The step the train loop took before it moved into the library, kept as the reference."""
    for g in opt.param_groups:
        g["lr"] = ts.lr_at(step, s.total_steps, s.warmup_steps, s.peak_lr)
    x = batch.images
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=False):
        out = model(x, mask_ratio=s.mask_ratio, generator=gen, stem_features=None)
        total, _ = distill_loss(
            out,
            batch.views,
            s.weights,
            levels=list(s.levels),
            dense_levels=(max(s.levels),),
            target_center=center,
            multiscale_views=s.multiscale_views,
            images=x,
        )
    opt.zero_grad(set_to_none=True)
    total.backward()
    if s.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    opt.step()
    return total.detach()


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_the_step_trains_bit_identically_to_the_loop_it_replaced(grad_clip):
    s = _settings(grad_clip=grad_clip)
    center = torch.nn.functional.normalize(torch.ones(D), dim=0) * 0.5
    a, b = _student(), _student()
    opt_a = ts.make_optimizer(a, s)
    opt_b = torch.optim.AdamW(b.param_groups(s.weight_decay), lr=s.peak_lr, betas=(0.9, 0.95))
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for step in range(3):
        batch = _batch(step)
        got = ts.train_step(a, batch, opt_a, step, s, generator=gen_a, target_center=center)
        want = _loop_step_as_written_before(b, opt_b, batch, step, s, gen_b, center)
        assert torch.equal(got.loss, want)
        assert got.lr == opt_b.param_groups[0]["lr"]
        assert set(got.terms) == {"multiscale", "matching", "recon", "dense", "patch"}
        assert {"assign_logit_std", "groups_used"} <= set(got.stats)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def _raw_gradients(model, batch, s) -> dict[str, torch.Tensor]:
    """Gradients of the step's loss, before any clipping."""
    out = model(batch.images, mask_ratio=s.mask_ratio, generator=torch.Generator().manual_seed(1))
    total, _ = distill_loss(
        out,
        batch.views,
        s.weights,
        levels=s.levels,
        dense_levels=s.dense_levels,
        images=batch.images,
    )
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _norm(grads) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def test_grad_clip_zero_means_no_clipping():
    raw = _raw_gradients(_student(), _batch(), _settings())
    assert _norm(raw.values()) > 0.01
    for clip in (0.0, 0.01):
        s = _settings(grad_clip=clip)
        model = _student()
        gen = torch.Generator().manual_seed(1)
        ts.train_step(model, _batch(), ts.make_optimizer(model, s), 0, s, generator=gen)
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert got.keys() == raw.keys()
        if clip == 0:  # the gradients the optimizer used are the loss's own
            assert all(torch.equal(got[n], raw[n]) for n in raw)
        else:
            assert _norm(got.values()) == pytest.approx(clip, rel=1e-3)


def test_step_settings_read_the_train_config():
    cfg = load_config(
        "jobs/demo.yaml",
        ["train.view_levels=[1,4]", "train.lr_scaling=mae", "train.lr=1e-3", "train.grad_clip=0"],
    )
    s = ts.step_settings(
        cfg.train, [1, 2, 3, 4], global_batch=512, total_steps=100, warmup_steps=10, gpu=False
    )
    assert s.levels == (1, 4) and s.dense_levels == (4,)
    assert s.peak_lr == pytest.approx(2e-3)  # 1e-3 * 512 / 256
    assert s.grad_clip == 0 and s.mask_ratio == cfg.train.mask_ratio
    assert s.weights == {k: getattr(cfg.train, f"w_{k}") for k in ts.LOSS_TERMS}
    assert not s.autocast
    on_gpu = ts.step_settings(
        cfg.train, [1, 2, 3, 4], global_batch=512, total_steps=100, warmup_steps=10, gpu=True
    )
    assert on_gpu.autocast  # bf16 by default, only on a GPU
    assert ts.lr_at(10, 100, 10, s.peak_lr) == pytest.approx(s.peak_lr)


def test_the_loop_config_crosses_ray_train_as_a_plain_dict(tmp_path):
    cache = write_cache(str(tmp_path / "extract" / "fp"), n=8, images_per_shard=8)
    cfg = load_config("jobs/demo.yaml", [f"storage.root={tmp_path}"])
    manifest = CacheReader(cache).manifest
    loop = TrainLoopConfig.build(cfg, cache, str(tmp_path / "run"), manifest, {"a": 1}, "memory")
    d = loop.to_dict()
    assert isinstance(d["train"], dict) and d["train"]["grad_clip"] == cfg.train.grad_clip
    assert TrainLoopConfig.from_dict(d) == loop
    assert loop.embed_dim == manifest["teacher"]["embed_dim"]


# --- the bench and the workers' loop, watched taking their steps ---------------------------------

RECIPE = ["student.overrides.stem=patch", "train.batch_size=4", "train.cpus_per_worker=1"]


@pytest.fixture
def watched(monkeypatch):
    """Every train_step call's settings and device, and every gradient clip's max norm."""
    seen = SimpleNamespace(settings=[], devices=[], clips=[])
    real_step, real_clip = ts.train_step, torch.nn.utils.clip_grad_norm_

    def step(model, batch, optimizer, step, settings, **kw):
        seen.settings.append(settings)
        seen.devices.append(batch.images.device.type)
        return real_step(model, batch, optimizer, step, settings, **kw)

    def clip(parameters, max_norm, *args, **kw):
        seen.clips.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kw)

    monkeypatch.setattr(ts, "train_step", step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    return seen


def _run_bench(monkeypatch, overrides: list[str]) -> None:
    bench = os.path.join(ROOT, "bench")
    monkeypatch.syspath_prepend(bench)
    spec = importlib.util.spec_from_file_location("student_step_bench", f"{bench}/student_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["student_step.py", "--config", "jobs/demo.yaml", "--micro-batch", "2", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, *overrides])
    module.main()


def _run_loop(monkeypatch, tmp_path, overrides: list[str]) -> list[dict]:
    """The workers' loop on one rank in this process; returns what it reported."""
    import ray
    import ray.train
    import ray.train.torch

    cache = write_cache(str(tmp_path / "extract" / "fp"), n=8, images_per_shard=8)
    cfg = load_config(
        "jobs/demo.yaml",
        [f"storage.root={tmp_path}", "train.max_steps=2", "train.log_every_steps=1", *overrides],
    )
    manifest = CacheReader(cache).manifest
    loop = TrainLoopConfig.build(
        cfg, cache, str(tmp_path / "run"), manifest, student_config(cfg), "memory"
    )
    reports = []
    rank = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    monkeypatch.setattr(ray.train, "get_context", lambda: rank)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(
        ray.train, "report", lambda metrics, checkpoint=None: reports.append(metrics)
    )
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node")
    )
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model, **_: model)
    _train_loop(loop.to_dict())  # sets the thread count from train.cpus_per_worker
    return reports


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_bench_and_train_loop_take_the_same_step(monkeypatch, tmp_path, watched, grad_clip):
    overrides = [*RECIPE, f"train.grad_clip={grad_clip}"]
    reports = _run_loop(monkeypatch, tmp_path, overrides)
    assert reports[-1]["final"] and reports[-1]["step"] == 2
    loop_settings, loop_clips = list(watched.settings), list(watched.clips)
    assert watched.devices == ["cpu", "cpu"]
    watched.settings.clear(), watched.devices.clear(), watched.clips.clear()
    _run_bench(monkeypatch, overrides)
    bench_settings, bench_clips = watched.settings, watched.clips
    # the dry run's count of the step it predicts (on the meta device), then 3 warm-ups + 1
    assert watched.devices == ["meta", "cpu", "cpu", "cpu", "cpu"]

    # one recipe everywhere; only the schedule (run length, batch) differs
    schedule = {"peak_lr": 0.0, "total_steps": 1, "warmup_steps": 0}
    recipes = [replace(s, **schedule) for s in [*loop_settings, *bench_settings]]
    assert all(r == recipes[0] for r in recipes) and recipes[0].grad_clip == grad_clip
    if grad_clip == 0:  # no clipping anywhere, as the config says
        assert loop_clips == [] and bench_clips == []
    else:
        assert loop_clips == [grad_clip] * 2 and bench_clips == [grad_clip] * 5
