"""Extraction at scale, measured side by side in one run.

- ``pipeline_vs_bare_forward``: crops/s of the whole extract stage (actor pool start-up, reads,
  decode, crop, view cutting, forward, Zarr writes, markers, manifest) over crops/s of the bare
  teacher forward on ready-cut views of the same batch and thread count (goal >= 0.9).
- ``rss_growth_10x``: peak RSS of the driver process and of the teacher actor processes at two
  dataset sizes 10x apart; the value is the larger of the two ratios (goal <= 1.2).
- ``cache_bytes_vs_payload``: bytes per image of ``cache.zarr`` over the raw payload (fp16
  embeddings + uint8 pixels).
- ``shard_<part>_s``: the per-shard read / crop / infer / wait / write seconds from the markers.

Each extraction runs in its own process with a fresh local Ray, so peak RSS belongs to that run.
Prints one JSON line per measure: {"bench", "measure", "value", "goal", "unit", ...}.

On a CUDA machine the actor gets the GPU and both sides run there, with ``--precision``; a
real-size architecture with random weights measures speed as well as trained ones do:
  python bench/extract.py --model ViT-L-14 --crop-size 224 --world-size 256 --precision bf16
Usage: python bench/extract.py [--images 8000] [--batch 960] [--model zeroseg-toyclip]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from measures import emitter  # bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

emit = emitter("extract")


def startup_seconds(stage: str, markers: list[dict]) -> float:
    """From the stage's start (run.json) to the first shard's start: actor pool start-up."""
    from zeroseg import storage

    info = storage.read_json(storage.join(stage, "run.json"))
    return min(k["started_unix"] for k in markers) - info["started_unix"]


def child(overrides: list[str]) -> None:
    """One extraction in this process: prints wall seconds, stage and the driver's peak RSS."""
    from pipeline.cluster import ensure_ray
    from pipeline.extract import peak_rss_mb, run_extract
    from zeroseg.config import load_config

    cfg = load_config("jobs/demo.yaml", overrides)
    ensure_ray(cfg)
    t0 = time.perf_counter()
    stage = run_extract(cfg, log=lambda *_: None)
    wall = time.perf_counter() - t0
    print(
        "RESULT " + json.dumps({"wall": wall, "stage": stage, "driver_peak_rss_mb": peak_rss_mb()})
    )


def run_child(overrides: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(overrides)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"extraction failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--images",
        type=int,
        default=8000,
        help="the larger dataset (the smaller is a tenth); large enough that the fixed pool "
        "start-up weighs on the end-to-end ratio about as little as in a real extraction",
    )
    parser.add_argument("--batch", type=int, default=960, help="views per forward")
    parser.add_argument("--model", default="zeroseg-toyclip", help="open_clip architecture")
    parser.add_argument("--crop-size", type=int, default=64, help="views.crop_size")
    parser.add_argument("--world-size", type=int, default=64, help="generated image side")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    import torch

    from zeroseg import storage
    from zeroseg.data.shapes import WorldSettings, write_split
    from zeroseg.teacher import Teacher
    from zeroseg.views import cut_views, num_views

    cpus = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    machine = f"{platform.machine()} {cpus} cores, no GPU, torch {torch.__version__}"
    if gpu:
        machine = f"{platform.machine()} {cpus} cores, {torch.cuda.get_device_name()}"
    device = "cuda" if gpu else "cpu"
    # On a GPU machine the actor's CPUs serve its reader thread and host copies, not the forward.
    actor_cpus = min(cpus, 4) if gpu else cpus
    large, small = args.images, max(1, args.images // 10)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train")
        world = WorldSettings(image_size=args.world_size)
        write_split(data, n=large, seed=0, labeled=False, settings=world)
        files = storage.list_files(data, storage.IMAGE_EXTENSIONS)
        small_list = os.path.join(tmp, "small.txt")  # the first tenth, as a list file
        with open(small_list, "w") as f:
            f.write("\n".join(files[:small]) + "\n")
        ckpt = os.path.join(tmp, "teacher.pt")
        # Random weights: speed does not depend on what the teacher has learned.
        teacher = Teacher(args.model, None, device=device, precision=args.precision)
        torch.save(teacher.model.state_dict(), ckpt)
        common = [
            f"storage.root={tmp}/out",
            f"teacher.model={args.model}",
            f"teacher.pretrained={ckpt}",
            f"views.crop_size={args.crop_size}",
            f"extract.batch_size={args.batch}",
            f"extract.precision={args.precision}",
            "extract.images_per_shard=64",
            f"extract.cpus_per_actor={actor_cpus}",
            f"extract.gpus_per_actor={1 if gpu else 0}",
            f"ray.num_cpus={cpus}",
        ]
        views_per_image = num_views([1, 2, 3, 4])

        # Baseline: the bare teacher forward on ready-made view batches of the same size and
        # device, with the thread count an actor uses; measured before and after the large run
        # and averaged, so a busy neighbour affects both sides alike.
        torch.set_num_threads(actor_cpus)
        px = torch.randint(
            0,
            256,
            (args.batch // views_per_image + 1, args.crop_size, args.crop_size, 3),
            dtype=torch.uint8,
            device=device,
        )
        views = cut_views(px, [1, 2, 3, 4], teacher.image_size).flatten(0, 1)[: args.batch]
        teacher.encode_images(views)  # warm-up

        def bare_rate(seconds: float = 8.0) -> float:
            n_crops, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                teacher.encode_images(views)
                n_crops += views.shape[0]
            if gpu:
                torch.cuda.synchronize()
            return n_crops / (time.perf_counter() - t0)

        small_run = run_child([*common, f"data.train={small_list}"])
        bare_before = bare_rate()
        large_run = run_child([*common, f"data.train={data}"])
        bare = (bare_before + bare_rate()) / 2

        runs = {}
        for name, run in (("small", small_run), ("large", large_run)):
            manifest = storage.read_json(storage.join(run["stage"], "manifest.json"))
            markers = [
                storage.read_json(storage.join(run["stage"], "shards", f"{s:05d}.json"))
                for s in range(manifest["num_shards"])
            ]
            runs[name] = {**run, "manifest": manifest, "markers": markers}
        m = runs["large"]["manifest"]
        crops = m["num_ok"] * views_per_image
        pipeline_rate = crops / runs["large"]["wall"]
        setup = {"model": args.model, "precision": args.precision, "crop_size": args.crop_size}
        emit("bare_forward_crops_per_s", bare, None, "crops/s", machine=machine, **setup)
        emit(
            "pipeline_crops_per_s",
            pipeline_rate,
            None,
            "crops/s",
            machine=machine,
            images=m["num_ok"],
            wall_s=round(runs["large"]["wall"], 2),
            note="includes actor pool start-up, teacher load, plan, finalize",
        )
        emit(
            "pipeline_vs_bare_forward",
            pipeline_rate / bare,
            0.9,
            "ratio",
            machine=machine,
            images=m["num_ok"],
            batch=args.batch,
            **setup,
        )
        emit(
            "pool_startup_s",
            startup_seconds(runs["large"]["stage"], runs["large"]["markers"]),
            None,
            "s",
            machine=machine,
            note="stage start to first shard start: actor processes, imports, teacher load",
        )
        # Steady state: first shard start to last shard end, so pool start-up is left out.
        markers = runs["large"]["markers"]
        span = max(k["finished_unix"] for k in markers) - min(k["started_unix"] for k in markers)
        emit(
            "steady_state_vs_bare_forward",
            crops / span / bare,
            None,
            "ratio",
            machine=machine,
            note="first shard start to last shard end (no pool start-up)",
        )
        secs = m["shard_seconds"]
        emit(
            "actor_infer_vs_bare_forward",
            crops / max(secs["infer"], 1e-9) / bare,
            None,
            "ratio",
            machine=machine,
        )
        for part in ("read", "crop", "infer", "wait", "write", "total"):
            emit(
                f"shard_{part}_s",
                secs[part] / m["num_shards"],
                None,
                "s/shard",
                machine=machine,
                fraction_of_shard_total=round(secs[part] / max(secs["total"], 1e-9), 4),
                images_per_shard=m["images_per_shard"],
                note="read and crop run in the reader thread, overlapping infer"
                if part in ("read", "crop")
                else None,
            )

        driver = {k: runs[k]["driver_peak_rss_mb"] for k in runs}
        actor = {k: max(x["peak_rss_mb"] for x in runs[k]["markers"]) for k in runs}
        ratios = {
            "driver": driver["large"] / driver["small"],
            "actor": actor["large"] / actor["small"],
        }
        emit(
            "rss_growth_10x",
            max(ratios.values()),
            1.2,
            "ratio",
            machine=machine,
            images=[runs["small"]["manifest"]["num_images"], m["num_images"]],
            driver_peak_rss_mb=[round(driver["small"]), round(driver["large"])],
            actor_peak_rss_mb=[round(actor["small"]), round(actor["large"])],
            driver_ratio=round(ratios["driver"], 3),
            actor_ratio=round(ratios["actor"], 3),
            note="peak RSS (VmHWM) of the driver process and of the teacher actor processes",
        )

        cache_bytes = tree_bytes(os.path.join(runs["large"]["stage"], "cache.zarr"))
        d = m["teacher"]["embed_dim"]
        payload = views_per_image * d * 2 + m["crop_size"] ** 2 * 3
        per_image = cache_bytes / m["num_images"]
        emit(
            "cache_bytes_vs_payload",
            per_image / payload,
            1.0,
            "ratio",
            machine=machine,
            cache_bytes_per_image=round(per_image),
            payload_bytes_per_image=payload,
            embeddings_fp16_bytes=views_per_image * d * 2,
            pixels_uint8_bytes=m["crop_size"] ** 2 * 3,
        )


if __name__ == "__main__":
    main()
