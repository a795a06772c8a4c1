"""Training from the cache, measured side by side in one run.

- ``cached_vs_online_of_predicted``: samples/s of the student step fed from the cache (streaming
  reader) over samples/s of the same student step fed by the teacher run online on the 30 views
  cut from each image (what training without a cache does), divided by the ratio FLOPs predict:
  (teacher forward on 30 views + student step) / student step, both counted with
  ``FlopCounterMode`` on the same batch. Goal >= 0.8. The headline teacher is a small open_clip
  ViT (the paper's teachers are ViTs, so teacher and student spend their FLOPs alike); the toy
  CNN teacher is measured too, as ``cached_vs_online_of_predicted_cnn_teacher``: convolutions
  run at more FLOP/s on a CPU than the student's small matrices, so FLOPs over-predict its cost.
- ``data_wait_fraction_s3``: share of step time the student step waits for the next batch when
  the streaming reader reads the cache through the S3 protocol (a moto server on 127.0.0.1).
  Goal <= 0.05.
- ``teacher_stem_features_once_vs_per_batch``: samples/s of the demo's own student step (its
  patches embedded by a frozen copy of the teacher's tower) when the tower's features are
  computed once per image before training, as the train stage does, over running the tower in
  every step. Also reports the one-off cost per image.
- ``workers_2_vs_1``: samples/s of the real train stage (Ray Train, DDP) with 2 workers of 1 CPU
  over 1 worker of 1 CPU, the same global batch.

Same student (the demo's), same step (the train stage's own, ``zeroseg.train_step``), same
device, same thread count on both sides. Speed does not depend on what the teacher learned, so
the toy teacher has random weights and the cache holds random embeddings: nothing is downloaded
or trained first.
Prints one JSON line per measure: {"bench", "measure", "value", "goal", "unit", ...}.
Usage: python bench/train.py [--images 128] [--batch 32] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

from measures import emitter  # bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

emit = emitter("train")

# The student every side trains: the demo's per-patch student with a linear patch embedding,
# masked, the recipe the recorded results were measured with. (The demo now embeds patches with
# a copy of the teacher's tower, which would put a teacher forward into the cached side too.)
STUDENT = [
    "student.preset=student-tiny-dense",
    "student.overrides.stem=patch",
    "train.mask_ratio=0.6",
    "train.w_dense=30",
    "train.w_patch=10",
    "train.w_affinity=0",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--stage-steps", type=int, default=30, help="steps per Ray Train run")
    args = parser.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.cache import CacheReader
    from pipeline.cache_stream import StreamSource
    from pipeline.train import student_config
    from tests.synthetic_cache import LEVELS, write_cache
    from zeroseg.config import load_config
    from zeroseg.models import build_student
    from zeroseg.teacher import Teacher
    from zeroseg.toy_teacher import MODEL_NAME
    from zeroseg.train_step import StepBatch, make_optimizer, step_settings, train_step
    from zeroseg.views import cut_views

    vit_teacher = "zeroseg-toyclip-vit"
    cnn_teacher = "zeroseg-toyclip-cnn"  # the earlier lab teacher: the `_cnn_teacher` measures

    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    machine = f"{platform.machine()} {cpus} cores, no GPU, torch {torch.__version__}"
    cfg = load_config("jobs/demo.yaml", STUDENT)

    def settings_of(c):
        """The train stage's step recipe of config ``c``; the lr schedule is long enough that
        no bench step reaches its end."""
        return step_settings(
            c.train, LEVELS, global_batch=args.batch, total_steps=10**6, warmup_steps=0, gpu=False
        )

    settings = settings_of(cfg)
    teachers = {name: Teacher(name, None) for name in (vit_teacher, cnn_teacher)}
    for t in teachers.values():
        t.model.eval()
    teacher = teachers[vit_teacher]

    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(
            f"{tmp}/extract/fp", n=args.images, embed_dim=teacher.embed_dim, images_per_shard=64
        )
        reader = CacheReader(cache)
        px_all, _ = reader.load_all()

        def fresh_student():
            torch.manual_seed(0)
            model = build_student(student_config(cfg), embed_dim=teacher.embed_dim)
            return model, make_optimizer(model, settings)

        def student_step(model, opt, x, views, gen) -> None:
            train_step(model, StepBatch(x, views), opt, 0, settings, generator=gen)

        def to_x(px):
            return torch.from_numpy(px).permute(0, 3, 1, 2).float().div_(255.0)

        def online_views(px, teacher=teacher) -> torch.Tensor:
            with torch.no_grad():
                v = cut_views(torch.from_numpy(px), LEVELS, teacher.image_size)
                b, n = v.shape[:2]
                return teacher.encode_images(v.flatten(0, 1)).reshape(b, n, -1)

        # FLOPs of one batch: the student step, and the teacher forward on 30 views per image.
        model, opt = fresh_student()
        px0 = px_all[: args.batch]
        emb0 = torch.from_numpy(reader.read_rows(reader.valid_rows[: args.batch])[1]).float()
        gen = torch.Generator().manual_seed(0)
        with FlopCounterMode(display=False) as fc:
            student_step(model, opt, to_x(px0), emb0, gen)
        f_student = fc.get_total_flops()
        predicted, f_teachers = {}, {}
        for name, t in teachers.items():
            with FlopCounterMode(display=False) as fc:
                online_views(px0, t)
            f_teachers[name] = fc.get_total_flops()
            predicted[name] = (f_student + f_teachers[name]) / f_student

        def run_cached(uri_reader: CacheReader) -> tuple[float, float]:
            model, opt = fresh_student()
            gen = torch.Generator().manual_seed(0)
            src = StreamSource(uri_reader, 0, 1, args.batch, 0, shuffle_buffer=256)
            it = src.run(0, args.steps + 2)
            for _ in range(2):  # warm-up: allocator, first shard read
                _, px, emb = next(it)
                student_step(model, opt, to_x(px), torch.from_numpy(emb).float(), gen)
            src.wait_s, t0 = 0.0, time.perf_counter()
            for _, px, emb in it:
                student_step(model, opt, to_x(px), torch.from_numpy(emb).float(), gen)
            wall = time.perf_counter() - t0
            return args.steps * args.batch / wall, src.wait_s / wall

        def run_online(teacher) -> float:
            model, opt = fresh_student()
            gen = torch.Generator().manual_seed(0)
            n = len(px_all) // args.batch
            for k in range(2):
                px = px_all[k * args.batch : (k + 1) * args.batch]
                student_step(model, opt, to_x(px), online_views(px, teacher), gen)
            t0 = time.perf_counter()
            for k in range(args.steps):
                px = px_all[(k % n) * args.batch : (k % n + 1) * args.batch]
                student_step(model, opt, to_x(px), online_views(px, teacher), gen)
            return args.steps * args.batch / (time.perf_counter() - t0)

        # cached, online, cached again: a busy neighbour affects both sides alike
        for name, t in teachers.items():
            cached_a, _ = run_cached(reader)
            online = run_online(t)
            cached_b, _ = run_cached(reader)
            cached = (cached_a + cached_b) / 2
            measured = cached / online
            cnn = name == cnn_teacher
            suffix = "_cnn_teacher" if cnn else ""
            emit(f"cached_samples_per_s{suffix}", cached, None, "samples/s", machine=machine)
            emit(
                f"online_teacher_samples_per_s{suffix}", online, None, "samples/s", machine=machine
            )
            emit(
                f"cached_vs_online_of_predicted{suffix}",
                measured / predicted[name],
                None if cnn else 0.8,
                "ratio",
                machine=machine,
                measured_ratio=round(measured, 3),
                predicted_ratio=round(predicted[name], 3),
                student_step_gflop=round(f_student / 1e9, 3),
                teacher_30_views_gflop=round(f_teachers[name] / 1e9, 3),
                batch=args.batch,
                teacher=f"{name} (random weights)",
                student=cfg.student.preset,
            )

        # The demo's own student embeds patches with a frozen copy of the teacher's tower; the
        # train stage computes those features once per image instead of every step.
        demo = load_config("jobs/demo.yaml")
        demo_settings = settings_of(demo)
        emb_all = torch.from_numpy(reader.load_all()[1]).float()

        def run_stem(precomputed: bool) -> tuple[float, float]:
            torch.manual_seed(0)
            model = build_student(student_config(demo), embed_dim=teacher.embed_dim).train()
            opt = make_optimizer(model, demo_settings)
            gen = torch.Generator().manual_seed(0)
            center = torch.nn.functional.normalize(torch.ones(teacher.embed_dim), dim=0) * 0.5
            x_all = to_x(px_all)
            t0 = time.perf_counter()
            bank = None
            if precomputed:
                chunks = range(0, len(x_all), 128)
                bank = torch.cat([model.stem_features(x_all[i : i + 128]) for i in chunks])
            bank_s = time.perf_counter() - t0
            n = len(px_all) // args.batch

            def step(k: int) -> None:
                sl = slice((k % n) * args.batch, (k % n + 1) * args.batch)
                stem = None if bank is None else bank[sl]
                batch = StepBatch(x_all[sl], emb_all[sl], stem)
                train_step(model, batch, opt, k, demo_settings, generator=gen, target_center=center)

            for k in range(2):
                step(k)
            t0 = time.perf_counter()
            for k in range(args.steps):
                step(k)
            return args.steps * args.batch / (time.perf_counter() - t0), bank_s / len(px_all)

        per_batch_a, _ = run_stem(False)
        once, bank_s_per_image = run_stem(True)
        per_batch_b, _ = run_stem(False)
        per_batch = (per_batch_a + per_batch_b) / 2
        emit(
            "teacher_stem_features_once_vs_per_batch",
            once / per_batch,
            None,
            "ratio",
            machine=machine,
            once_samples_per_s=round(once, 1),
            per_batch_samples_per_s=round(per_batch, 1),
            features_once_ms_per_image=round(1000 * bank_s_per_image, 2),
            batch=args.batch,
            student=f"{demo.student.preset}, stem=teacher ({MODEL_NAME}, random weights)",
        )

        # The same cached loop reading through the S3 protocol.
        import logging

        import s3fs
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
            fs = s3fs.S3FileSystem()
            fs.mkdir("zeroseg-bench")
            fs.put(cache, "zeroseg-bench/extract/fp", recursive=True)
            s3_rate, s3_wait = run_cached(CacheReader("s3://zeroseg-bench/extract/fp"))
        finally:
            server.stop()
        emit(
            "data_wait_fraction_s3",
            s3_wait,
            0.05,
            "fraction",
            machine=machine,
            samples_per_s=round(s3_rate, 1),
            note="streaming reader, prefetch thread, cache on moto S3 at 127.0.0.1",
        )

        # The real train stage on Ray Train: 1 worker vs 2 workers of one CPU each.
        from pipeline.cluster import ensure_ray
        from pipeline.train import run_train

        rates = {}
        for workers in (1, 2):
            run_cfg = load_config(
                "jobs/demo.yaml",
                [
                    *STUDENT,
                    f"storage.root={tmp}/out{workers}",
                    f"train.num_workers={workers}",
                    "train.cpus_per_worker=1",
                    f"train.batch_size={args.batch}",
                    "train.epochs=1000",
                    f"train.max_steps={args.stage_steps}",
                    f"train.checkpoint_every_steps={args.stage_steps}",
                    "train.reader=stream",
                    "ray.num_cpus=2",
                ],
            )
            ensure_ray(run_cfg)
            final = run_train(run_cfg, cache, log=lambda *_: None)
            with open(os.path.join(final, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f][1:]  # the first window holds warm-up
            rates[workers] = sum(r["samples_per_s"] for r in rows) / len(rows)
        emit(
            "workers_2_vs_1",
            rates[2] / rates[1],
            None,
            "ratio",
            machine=machine,
            samples_per_s={str(k): round(v, 1) for k, v in rates.items()},
            global_batch=args.batch,
            note="Ray Train DDP, 1 CPU per worker, steady-state windows of the metrics log",
        )


if __name__ == "__main__":
    main()
