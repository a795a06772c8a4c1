"""Extraction throughput: the whole extract stage vs the bare teacher forward, same run.

Prints one JSON line per measure: {"bench", "measure", "value", "goal", "unit", ...}.
Usage: python bench/extract.py [--images 256] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def emit(measure: str, value: float, goal: float | None, unit: str, **extra) -> None:
    print(
        json.dumps(
            {
                "bench": "extract",
                "measure": measure,
                "value": round(value, 4),
                "goal": goal,
                "unit": unit,
                **extra,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=960, help="views per forward")
    args = parser.parse_args()

    import torch

    from pipeline.cluster import ensure_ray
    from pipeline.extract import run_extract
    from zeroseg.config import load_config
    from zeroseg.data.shapes import WorldSettings, write_split
    from zeroseg.teacher import Teacher
    from zeroseg.toy_teacher import MODEL_NAME
    from zeroseg.views import cut_views, num_views

    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train")
        write_split(data, n=args.images, seed=0, labeled=False, settings=WorldSettings())
        ckpt = os.path.join(tmp, "teacher.pt")
        # Random weights: speed does not depend on what the teacher has learned.
        teacher = Teacher(MODEL_NAME, None)
        torch.save(teacher.model.state_dict(), ckpt)
        cfg = load_config(
            "jobs/demo.yaml",
            [
                f"storage.root={tmp}/out",
                f"data.train={data}",
                f"teacher.pretrained={ckpt}",
                f"extract.batch_size={args.batch}",
                "extract.images_per_shard=64",
                f"extract.cpus_per_actor={os.cpu_count() or 1}",
            ],
        )
        views_per_image = num_views(cfg.views.levels)

        # Baseline: the bare teacher forward on ready-made view batches of the same size, with
        # the same thread count an extraction actor uses; measured before and after the
        # pipeline run and averaged, so a busy neighbour affects both sides alike.
        torch.set_num_threads(max(1, int(cfg.extract.cpus_per_actor)))
        px = torch.randint(
            0, 256, (max(1, args.batch // views_per_image) + 1, 64, 64, 3), dtype=torch.uint8
        )
        views = cut_views(px, cfg.views.levels, teacher.image_size).flatten(0, 1)
        views = views[: args.batch]
        teacher.encode_images(views)  # warm-up

        def bare_rate(seconds: float = 8.0) -> float:
            n_crops, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                teacher.encode_images(views)
                n_crops += views.shape[0]
            return n_crops / (time.perf_counter() - t0)

        bare_before = bare_rate()

        ensure_ray(cfg)
        t0 = time.perf_counter()
        stage = run_extract(cfg, log=lambda *_: None)
        wall = time.perf_counter() - t0
        from pipeline import storage

        manifest = storage.read_json(storage.join(stage, "manifest.json"))
        pipeline_rate = manifest["num_ok"] * views_per_image / wall
        bare = (bare_before + bare_rate()) / 2
        secs = manifest["shard_seconds"]
        emit("bare_forward_crops_per_s", bare, None, "crops/s", machine=machine)
        emit(
            "pipeline_crops_per_s",
            pipeline_rate,
            None,
            "crops/s",
            machine=machine,
            note="includes Ray start-up of the actor pool",
        )
        emit("pipeline_vs_bare_forward", pipeline_rate / bare, 0.9, "ratio", machine=machine)
        # The same forward inside the actors (decode/crop/write and Ray start-up excluded):
        # tells a slow forward apart from pipeline overhead.
        actor_infer = manifest["num_ok"] * views_per_image / max(secs["infer"], 1e-9)
        emit("actor_infer_vs_bare_forward", actor_infer / bare, None, "ratio", machine=machine)
        emit("pipeline_wall_s", wall, None, "s", machine=machine, images=manifest["num_ok"])
        for part in ("read", "crop", "infer", "write"):
            emit(
                f"shard_{part}_fraction",
                secs[part] / max(secs["total"], 1e-9),
                None,
                "fraction",
                machine=machine,
            )


if __name__ == "__main__":
    main()
