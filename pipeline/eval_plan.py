"""``zeroseg eval --dry-run``: what an evaluation job would do, without touching any data.

Paper-scale jobs read tens of thousands of images on a cluster; a typo in a key or a wrong data
root should show before any of that starts. The plan comes from the config, the pinned protocols
and the public split sizes alone.
"""

from __future__ import annotations

import math
from typing import Any

from zeroseg.benchmarks import open_benchmark
from zeroseg.config import Config, eval_benchmarks
from zeroseg.data.shapes import SHAPES
from zeroseg.protocols import load_protocol

from .evaluate import benchmark_root, protocol_name


def plan_benchmark(cfg: Config, benchmark: str) -> dict[str, Any]:
    """Protocol, class count, read locations and task count of one benchmark."""
    proto = load_protocol(protocol_name(cfg, benchmark))
    root = benchmark_root(cfg, benchmark)
    reader = open_benchmark(benchmark, root)
    if benchmark == "shapes":
        classes = 1 + len(SHAPES)
        images = {"bench": cfg.world.n_bench}
        if proto.tuned_on_val and cfg.eval.tune_on_val:
            images["val"] = cfg.world.n_val
        if cfg.world.n_generalisation:
            images["generalisation"] = cfg.world.n_generalisation
    else:
        classes = len(reader.class_names())
        images = {"bench": reader.expected_images}
    per = cfg.eval.images_per_task
    return {
        "benchmark": benchmark,
        "protocol": proto.name,
        "background": proto.background,
        "short_side": proto.short_side,
        "window": proto.window,
        "stride": proto.stride,
        "classes": classes,
        "root": root,
        "reads": reader.locations(),
        "layout": reader.layout,
        "images": images,
        "tasks": sum(math.ceil(n / per) for n in images.values()),
        "cpus_per_task": cfg.eval.num_cpus_per_task,
        "gpus_per_task": cfg.eval.gpus_per_task,
    }


def plan_eval(cfg: Config) -> list[dict[str, Any]]:
    return [plan_benchmark(cfg, b) for b in eval_benchmarks(cfg.eval)]


def format_plan(plan: list[dict[str, Any]]) -> list[str]:
    lines = []
    for p in plan:
        size = f"short side {p['short_side']}" if p["short_side"] else "the student's input size"
        window = f", windows {p['window']} / stride {p['stride']}" if p["window"] else ""
        lines += [
            f"{p['benchmark']}: protocol {p['protocol']} ({p['background']}, {size}{window})",
            f"  classes: {p['classes']} (with background)",
            f"  reads: {', '.join(f'{k} {v}' for k, v in p['reads'].items())}",
            f"  images: {sum(p['images'].values())} -> {p['tasks']} tasks "
            f"({p['cpus_per_task']} CPU, {p['gpus_per_task']} GPU each)",
        ]
    return lines
