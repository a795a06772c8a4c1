"""Evaluation scaling, measured side by side in one run.

- ``parallel_2_vs_1``: wall seconds of one evaluation of a PASCAL-VOC-layout split as ONE Ray
  task, over the same split as TWO tasks of half the images each, on a local Ray with 2 CPUs and
  one CPU (one torch thread) per task (goal >= 1.6). Each task loads the student and the teacher
  itself, as on a cluster. The split is written in the public layout; the checkpoint is a
  random-weight tiny student with the toy CLIP teacher (speed does not depend on the weights).
  A warm-up evaluation first starts Ray's worker processes, so neither side pays for that.

Prints one JSON line per measure: {"bench", "measure", "value", "goal", "unit", ...}.
Usage: python bench/eval.py [--images 16] [--repeats 2]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import ray
    import torch

    from tests.eval_fixtures import write_random_checkpoint, write_voc

    cpus = os.cpu_count() or 1
    machine = f"{platform.machine()} {cpus} cores, no GPU, torch {torch.__version__}"
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
