"""Evaluation scaling, measured side by side in one run.

- ``parallel_2_vs_1``: wall seconds of one evaluation of a PASCAL-VOC-layout split as ONE Ray
  task, over the same split as TWO tasks of half the images each, on a local Ray with 2 CPUs and
  one CPU (one torch thread) per task (goal >= 1.6). Each task loads the student and the teacher
  itself, as on a cluster. The split is written in the public layout; the checkpoint is a
  random-weight tiny student with the toy CLIP teacher (speed does not depend on the weights).
  A warm-up evaluation first starts Ray's worker processes, so neither side pays for that.

- ``method_seconds``: seconds per image of each method (the student and every training-free
  read-out) at the same input size, one line per method and teacher: the SCLIP family's
  protocol (short side 336, windows 224 / stride 112) on a 336 x 448 image, with random-weight
  open_clip ViT-B/16 (and ViT-L/14 with ``--large``; both on a GPU when torch sees one) and a
  random ``student-small`` beside it; ``value`` is the method's time over the student's.

Prints one JSON line per measure: {"bench", "measure", "value", "goal", "unit", ...}.
Usage: python bench/eval.py [--images 16] [--repeats 2] [--methods-only] [--large]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from measures import emitter  # bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

emit = emitter("eval")


def timed_eval(tmp: str, tag: str, final: str, data: str, per_task: int) -> float:
    from pipeline.evaluate import run_eval
    from zeroseg.config import load_config

    cfg = load_config(
        None,
        [
            f"storage.root={tmp}/runs-{tag}",
            "eval.benchmark=voc",
            f"eval.data_root={data}",
            f"eval.images_per_task={per_task}",
            "eval.num_cpus_per_task=1",
            "eval.overlays=0",
        ],
    )
    t0 = time.perf_counter()
    run_eval(cfg, final, log=lambda *_: None)
    return time.perf_counter() - t0


def method_seconds(teacher_name: str, repeats: int, machine: str) -> None:
    """Per-image seconds of each method at the SCLIP family's sizes, the student's as baseline."""
    import numpy as np
    import torch

    from zeroseg.models import build_student
    from zeroseg.predict import BASELINES
    from zeroseg.segmenter import Segmenter, resolve_device
    from zeroseg.teacher import Teacher

    device = resolve_device("auto")
    torch.manual_seed(0)
    teacher = Teacher(teacher_name, device=device)
    student = build_student("student-small", embed_dim=teacher.embed_dim).to(device).eval()
    seg = Segmenter(
        "student", teacher, student, size=336, window=224, stride=112, teacher_windows=True
    )
    image = (np.random.default_rng(0).random((336, 448, 3)) * 255).astype(np.uint8)
    text, _ = seg.text_embeddings(["cat", "dog", "sofa", "person", "car"])

    def per_image(method: str) -> float:
        seg.cosines(image, text, method=method)  # warm-up
        times = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            seg.cosines(image, text, method=method)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    base = per_image("student")
    for method in ("student", *(m for m in BASELINES if m != "all_background")):
        t = base if method == "student" else per_image(method)
        emit(
            "method_seconds",
            t / base,
            None,
            "x student",
            method=method,
            seconds_per_image=round(t, 4),
            teacher=teacher_name,
            image="336x448, short side 336, windows 224 / stride 112",
            device=device,
            machine=machine,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--methods-only", action="store_true", help="only the per-method timings")
    p.add_argument("--large", action="store_true", help="also time ViT-L/14 (slow on a CPU)")
    args = p.parse_args()

    import ray
    import torch

    from tests.eval_fixtures import write_random_checkpoint, write_voc

    cpus = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    machine = f"{platform.machine()} {cpus} cores, {gpu}, torch {torch.__version__}"
    for name in ("ViT-B-16", *(["ViT-L-14"] if args.large else [])):
        method_seconds(name, args.repeats, machine)
    if args.methods_only:
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        final = write_random_checkpoint(os.path.join(tmp, "final"))
        data = os.path.join(tmp, "bench")
        write_voc(data, n=args.images, size=(60, 80))
        timed_eval(tmp, "warm", final, data, args.images // 2)
        one, two = [], []
        for r in range(args.repeats):  # interleaved, so drifting load hits both sides
            one.append(timed_eval(tmp, f"one{r}", final, data, args.images))
            two.append(timed_eval(tmp, f"two{r}", final, data, -(-args.images // 2)))
    ray.shutdown()
    t1, t2 = min(one), min(two)
    emit(
        "parallel_2_vs_1",
        t1 / t2,
        1.6,
        "x",
        one_task_s=round(t1, 2),
        two_tasks_s=round(t2, 2),
        images=args.images,
        machine=machine,
    )


if __name__ == "__main__":
    main()
