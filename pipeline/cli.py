"""The ``zeroseg`` command line.

``main(argv)`` returns an exit code instead of exiting, so tests drive it in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zeroseg.config import BASELINE_METHODS, STUDENT_READOUTS, ConfigError, load_config

EPILOG = """\
examples:
  zeroseg run --config jobs/demo.yaml                    # everything, on a laptop CPU
  zeroseg extract --config jobs/demo.yaml storage.root=s3://bucket/zs data.train=s3://bucket/imgs
  zeroseg train --config jobs/demo.yaml train.epochs=20  # reuses the cache, new run folder
  zeroseg eval --config jobs/demo.yaml --checkpoint runs/demo/train/<run>/final
  zeroseg ablate --config jobs/ablation.yaml             # one cache, a table of recipes
  zeroseg status runs/demo                               # every stage: done, pending, ETA
  zeroseg submit extract --address http://HEAD:8265 --config jobs/extract_in1k_vitl14.yaml --wait
  zeroseg jobs list --address http://HEAD:8265
  zeroseg segment photo.png --classes "circle,star" --checkpoint <final dir> -o out/
  zeroseg segment photos/ --classes "cat,sofa" --method naclip --teacher ViT-B-16 \
      --pretrained weights/ViT-B-16.bin -o out/           # training-free, no student

Settings are `section.key=value` overrides applied after the YAML file (see
docs/configuration.md); unknown keys and wrong types are reported before any work starts.
"""


DESCRIPTIONS = {
    "run": (
        "Writes the shapes-world splits when world.generate is on and they are missing, trains "
        "(or reuses) the toy teacher when no checkpoint is named, then runs extract, train and "
        "eval. Finished stages are found by fingerprint and skipped; the table (with the "
        "recorded reference run's mIoU of the same job in its ref column) and "
        "<storage.root>/summary.json come last."
    ),
    "extract": (
        "Reads data.train, cuts each centre crop into the 1x1..4x4 grid views, embeds them with "
        "the frozen teacher on a Ray Data actor pool and writes "
        "<storage.root>/extract/<fingerprint>/ (Zarr v3, index.parquet, per-shard markers). "
        "Reruns skip shards that have markers."
    ),
    "train": (
        "Ray Train workers read only the teacher cache and train the student with the "
        "multi-scale, segment-matching and reconstruction losses. Rerunning the same command "
        "resumes from the newest checkpoint; final weights go to <run>/final/."
    ),
    "eval": (
        "Parallel Ray tasks score the student and the grid_crop, multigrid_crop, "
        "maskclip_dense, dense_raw and all_background baselines on each benchmark of "
        "eval.benchmarks (or eval.benchmark): shapes reads data.bench and picks each method's "
        "background rule on data.val (and scores data.generalisation, when it exists, with "
        "those rules); voc, context and coco_object read their public layouts below "
        "eval.data_root with the paper's pinned protocols. Writes metrics.json, report.md "
        "(mIoU table, per-class IoU, confusion plot) and overlays of the best and worst images "
        "per benchmark. "
        "--dry-run prints the plan without reading data."
    ),
    "submit": (
        "Validates the config locally (a bad key fails before anything is sent), then submits "
        "`zeroseg <stage> --config ... key=value` as a Ray job: the repository is the working "
        "dir (jobs/runtime_env.yaml), the submission id is zeroseg-<stage>-<config "
        "fingerprint>-<time>-<random>, and the job's metadata names the project, stage, "
        "fingerprint, config and git commit. --wait follows the logs and returns the job's "
        "status. Example: zeroseg submit extract --address http://HEAD:8265 "
        "--config jobs/extract_in1k_vitl14.yaml --wait"
    ),
    "ablate": (
        "Extracts the teacher cache once, then trains and scores every variant of "
        "ablation.variants (overrides of train / student / eval only) on that same cache. "
        "Writes <storage.root>/ablation/ablation.md (mIoU and training samples/s per variant, "
        "and whether the paper's loss ordering holds) and ablation.json. "
        "Example: zeroseg ablate --config jobs/ablation.yaml"
    ),
}


class _OneConfig(argparse.Action):
    """``--config`` names one job file, which composes others through its ``defaults:`` list;
    a second ``--config`` is refused rather than silently replacing the first."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(
                f"{option_string} given twice: name one job file and list the files it builds "
                "on in its `defaults:` (docs/configuration.md)"
            )
        setattr(namespace, self.dest, values)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        action=_OneConfig,
        help="YAML job config (defaults when omitted); its `defaults:` list names the files it "
        "builds on, e.g. `defaults: [paper_exact]`",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. storage.root=s3://bucket/run train.epochs=5",
    )


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="the head's dashboard, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)",
    )
    p.add_argument(
        "--token-file",
        help="file holding the Ray auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, "
        "~/.ray/auth_token); sent only as an Authorization header, never logged",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroseg",
        description="Label-free open-vocabulary segmentation: cache CLIP views of grid regions "
        "(extract), distill them into a segment-token student (train), score it with free-form "
        "class names (eval).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbose_help = (
        "also print third-party log lines (open_clip's INFO lines and warnings about the models "
        "it builds), here and in the local Ray workers"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser(
        "run",
        help="extract -> train -> eval, each skipped when already done",
        description=DESCRIPTIONS["run"],
    )
    _config_args(p)

    p = sub.add_parser(
        "extract",
        help="cache teacher embeddings of the 30 grid views (Ray Data)",
        description=DESCRIPTIONS["extract"],
    )
    _config_args(p)
    p.add_argument(
        "--mode",
        choices=["resume", "overwrite"],
        help="resume (default) skips shards with markers; overwrite starts over",
    )
    p.add_argument("--redo-shards", help="comma-separated shard numbers to recompute")

    p = sub.add_parser(
        "train",
        help="distill the cache into the student (Ray Train)",
        description=DESCRIPTIONS["train"],
    )
    _config_args(p)
    p.add_argument("--cache", help="teacher cache folder (default: the one extract would make)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print parameters, per-worker memory, FLOPs per step and an estimated step time "
        "(student on the meta device; no Ray, no GPU, no cache needed)",
    )
    p.add_argument(
        "--images",
        type=int,
        help="--dry-run: training images (default: world.n_train when world.generate, else "
        "ImageNet-1K's 1281167)",
    )
    p.add_argument(
        "--assume-tflops",
        type=float,
        default=312.0,
        help="--dry-run: peak TFLOP/s per GPU (default 312, A100 bf16 dense)",
    )
    p.add_argument(
        "--assume-mfu",
        type=float,
        default=0.4,
        help="--dry-run: fraction of the peak a step reaches (default 0.4)",
    )

    p = sub.add_parser(
        "eval",
        help="score a checkpoint and the teacher-only baselines",
        description=DESCRIPTIONS["eval"],
    )
    _config_args(p)
    p.add_argument("--checkpoint", help="a train run's final/ folder (default: this config's)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print per benchmark the protocol, class count, where it would read and how many "
        "tasks it would run; reads no data and starts nothing",
    )

    p = sub.add_parser(
        "ablate",
        help="train and score every variant of ablation.variants on one cache; write a table",
        description=DESCRIPTIONS["ablate"],
    )
    _config_args(p)

    p = sub.add_parser(
        "submit",
        help="submit a stage (or run) to a Ray cluster through the Ray Jobs API",
        description=DESCRIPTIONS["submit"],
    )
    ssub = p.add_subparsers(dest="stage", metavar="stage", required=True)
    from .submit import STAGES

    for stage in STAGES:
        s = ssub.add_parser(stage, help=f"submit `zeroseg {stage}`")
        _config_args(s)
        _cluster_args(s)
        s.add_argument(
            "--wait", action="store_true", help="follow the job's logs; exit with its status"
        )
        s.add_argument(
            "--entrypoint-num-cpus",
            type=float,
            default=0,
            help="CPUs reserved for the job's driver (default 0: it may run on a head with none)",
        )
        s.add_argument("--entrypoint-num-gpus", type=float, default=0, help="GPUs for the driver")
        if stage == "eval":
            s.add_argument("--checkpoint", help="a train run's final/ folder")

    p = sub.add_parser(
        "jobs",
        help="list / show / stop / print the logs of this project's jobs on a cluster",
        description="Only jobs submitted by `zeroseg submit` (metadata project=zeroseg).",
    )
    p.add_argument("action", choices=["list", "show", "stop", "logs"])
    p.add_argument("job_id", nargs="?", help="a submission id (show, stop, logs)")
    _cluster_args(p)

    p = sub.add_parser(
        "teacher-pretrain",
        help="train the toy CLIP teacher of a recipe (reproduces the shipped one by default)",
        description=(
            "Train the toy CLIP teacher of the config's recipe (teacher.pretrain_steps, "
            "teacher.pretrain_seed, teacher.pretrain_overrides) and compare it with the teacher "
            "the package ships. The default recipe is the shipped one, so a run only reproduces "
            "it; another recipe is cached in teacher.cache_dir and used by every stage. "
            "Resumable: the training state stays in the output folder until the schedule is "
            "done, so a killed run, or a piece stopped with --stop-at, continues where it ended "
            "when the same command (without --stop-at for the rest) runs again."
        ),
        epilog=(
            "examples:\n"
            "  zeroseg teacher-pretrain --out runs/teacher      # reproduce the shipped teacher\n"
            "  zeroseg teacher-pretrain --out runs/t --stop-at 250   # its first 250 steps\n"
            "  zeroseg teacher-pretrain --out runs/t            # ... then the rest of them\n"
            "  zeroseg teacher-pretrain teacher.pretrain_seed=1  # another recipe, cached\n"
            "  # a toy CLIP with a 3-block image tower, as a student init (docs/results.md):\n"
            "  zeroseg teacher-pretrain --out runs/toyclip-small \\\n"
            "      teacher.model=zeroseg-toyclip-small teacher.pretrain_seed=1 "
            "teacher.pretrain_steps=3000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(p)
    p.add_argument(
        "--force", action="store_true", help="retrain from step 0 even when cached or resumable"
    )
    p.add_argument("--out", help="write model.safetensors and teacher.json here (any fsspec URL)")
    p.add_argument(
        "--stop-at",
        type=int,
        metavar="K",
        help="stop after K steps of the same schedule (compared with the shipped curve at K)",
    )

    p = sub.add_parser(
        "student-pretrain",
        help="a label-free start for the student's encoder: MAE on the training images",
        description=(
            "Pretrain the config's student encoder (and its MAE decoder) label-free: 75%% of "
            "every training image's patches hidden and reconstructed, as MAE does, from "
            "data.train alone (no labels, no teacher). Writes encoder.safetensors (timm / MAE "
            "names, the recipe in its header) and pretrain.json (recipe, loss curve) to --out; "
            "student.init=<out>/encoder.safetensors starts a student from it, as it starts one "
            "from any timm, MAE or open_clip ViT checkpoint. The same command gives the same "
            "weights on the same machine."
        ),
        epilog=(
            "examples:\n"
            "  zeroseg student-pretrain --config jobs/quality.yaml --out runs/mae \\\n"
            "      student.overrides.stem.kind=patch            # the quality job's student, MAE\n"
            "  zeroseg student-pretrain --config jobs/quality.yaml --out runs/m --steps 500 \\\n"
            "      student.overrides.stem.kind=patch\n"
            "  zeroseg run --config jobs/quality.yaml student.overrides.stem.kind=patch \\\n"
            "      student.init=runs/mae/encoder.safetensors    # a student that starts from it"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(p)
    p.add_argument("--out", required=True, help="output folder (any fsspec URL)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (default 1.5e-3)")
    p.add_argument(
        "--mask-ratio", type=float, default=0.75, help="share of patches hidden (default 0.75)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of init, batches and masks")

    p = sub.add_parser(
        "status",
        help="progress of a stage folder or a whole storage.root, read from storage",
        description=(
            "What a stage folder holds and how its run is going, read from storage alone (no "
            "Ray): extract (shards done / pending / failed, images/s of the latest run, ETA, "
            "skip reasons), a train run (steps done, newest checkpoint, this run's samples/s, "
            "ETA) or eval (parts done / pending, the scores once finished). Given a "
            "storage.root it shows every stage folder below it. Exit code 1 when units are "
            "recorded as failed."
        ),
        epilog=(
            "examples:\n"
            "  zeroseg status runs/demo                        # every stage of the demo\n"
            "  zeroseg status runs/demo/extract/<fingerprint>\n"
            "  zeroseg status s3://bucket/zs/train/<run>\n"
            "  zeroseg status runs/demo/extract/<fingerprint> --verify full   # read every object"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage_dir", help="a stage folder or a storage.root (any fsspec URL)")
    p.add_argument(
        "--verify",
        nargs="?",
        const="sizes",
        choices=("sizes", "full"),
        help="check every stored object of a cache against what was written: 'sizes' (the "
        "default: presence and sizes, one listing) or 'full' (also reads every object and "
        "compares checksums); exit code 1 when something is damaged",
    )

    p = sub.add_parser("data", help="generate datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="dataset")
    s = dsub.add_parser("shapes", help="the synthetic shapes world (images, optional masks)")
    s.add_argument("--out", required=True, help="output folder or fsspec URL")
    s.add_argument("--n", type=int, required=True, help="number of scenes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--labels",
        action="store_true",
        help="also write masks/ (palette PNG: 0 background, 255 ignore), "
        "classes.json and captions.jsonl (a benchmark split)",
    )
    s.add_argument("--image-size", type=int, default=64)

    p = sub.add_parser(
        "segment",
        help="segment images with free-form class names",
        description="Overlay PNG with a legend per image (and label maps with --save-labels). "
        "Unreadable images are skipped with their reason, summarised at the end and listed in "
        "<out>/failures.json; the exit code is then 1.",
    )
    p.add_argument(
        "images",
        nargs="+",
        help="image files, globs ('photos/*.jpg', 's3://b/x/*.png') or folders / URL prefixes "
        "(every image below them)",
    )
    p.add_argument(
        "--classes",
        help='comma-separated names, e.g. "cat,sofa"; synonyms of one class joined by "|", '
        'e.g. "person|man|woman,sofa|couch" (the class scores the max over them)',
    )
    p.add_argument(
        "--classes-file", help="a file of class names, one per line (or comma-separated)"
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the models run (auto: a GPU when torch sees one)",
    )
    p.add_argument(
        "--checkpoint",
        help="a train run's final/ folder (the student, and the teacher it was trained with)",
    )
    p.add_argument(
        "--method",
        choices=["student", *(m for m in BASELINE_METHODS if m != "all_background")],
        help="student (the default with --checkpoint), or a training-free method on the "
        "teacher alone: grid_crop, multigrid_crop, maskclip_dense, dense_raw, sclip, "
        "clearclip, naclip",
    )
    p.add_argument(
        "--teacher",
        help="open_clip architecture for a training-free --method without --checkpoint, e.g. "
        "ViT-B-16, or zeroseg-toyclip (the lab teacher)",
    )
    p.add_argument(
        "--pretrained",
        help="the teacher's weights: a file or fsspec URI, an open_clip tag, or 'shipped' "
        "for the packaged lab teacher",
    )
    p.add_argument(
        "--naclip-sigma",
        type=float,
        default=5.0,
        help="NACLIP's Gaussian neighbourhood in patches (default 5)",
    )
    p.add_argument(
        "--pamr",
        action="store_true",
        help="refine the scores with PAMR (pixel-adaptive mask refinement) before labelling",
    )
    p.add_argument("-o", "--out", required=True, help="output folder for overlays")
    p.add_argument(
        "--background",
        default="prompt",
        help="how pixels become background: 'prompt' (a background prompt competes with the "
        "classes; default), 'threshold:P' (best class probability below P), 'cosine:C'",
    )
    p.add_argument(
        "--readout",
        choices=["auto", *STUDENT_READOUTS],
        default="auto",
        help="pixel scores: 'segments' (each pixel takes its group's segment token, the paper), "
        "'segments+patches' (averaged with the per-patch projections), 'patches' (those alone), "
        "'auto' (segments+patches when the student has per-patch projections)",
    )
    p.add_argument(
        "--save-labels",
        action="store_true",
        help="also write label maps: <stem>.npy (int32) and <stem>_labels.png (palette PNG); "
        "0 background, k = the k-th class",
    )
    for command in sub.choices.values():  # also after the command: zeroseg run --verbose
        command.add_argument(
            "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=verbose_help
        )
    return parser


def _load(args) -> object:
    extra = list(args.overrides or [])
    if getattr(args, "mode", None):
        extra.append(f"extract.mode={args.mode}")
    if getattr(args, "redo_shards", None):
        try:
            shards = [int(s) for s in args.redo_shards.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--redo-shards: not a list of integers: {args.redo_shards!r}"
            ) from None
        extra.append(f"extract.redo_shards=[{','.join(map(str, shards))}]")
    return load_config(args.config, extra)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.verbose:
        import logging

        from zeroseg.logs import set_verbose

        # before Ray starts: the environment carries the setting into local Ray workers
        set_verbose(True)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args, parser)
    except ConfigError as exc:
        print(f"zeroseg: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"zeroseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _stop_local_ray()
        hint = " — rerun the same command to resume" if args.command in RESUMABLE else ""
        print(f"\nzeroseg {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


# Commands whose finished work survives an interrupt and is skipped by the next run.
RESUMABLE = ("run", "extract", "train", "eval", "ablate", "teacher-pretrain")


def _stop_local_ray() -> None:
    """Shut down the Ray this process started (or disconnect from a cluster): no Ray processes
    outlive an interrupted command."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _dispatch(args, parser) -> int:
    cmd = args.command
    if cmd == "data":
        if args.data_command != "shapes":
            parser.parse_args(["data", "--help"])
        from zeroseg import storage
        from zeroseg.data.shapes import WorldSettings, write_split

        storage.check_output_folder(args.out, "--out")
        write_split(
            args.out,
            n=args.n,
            seed=args.seed,
            labeled=args.labels,
            settings=WorldSettings(image_size=args.image_size),
            progress=True,
        )
        print(f"wrote {args.n} scenes to {args.out}")
        return 0
    if cmd == "status":
        from .status import print_status

        return print_status(args.stage_dir, verify=args.verify)
    if cmd == "segment":
        from .segment import segment_images

        return segment_images(
            args.images,
            args.classes,
            args.checkpoint,
            args.out,
            background=args.background,
            save_labels=args.save_labels,
            classes_file=args.classes_file,
            device=args.device,
            readout=args.readout,
            method=args.method,
            teacher=args.teacher,
            pretrained=args.pretrained,
            sigma=args.naclip_sigma,
            pamr=args.pamr,
        )

    if cmd == "submit":
        from .submit import submit

        checkpoint = getattr(args, "checkpoint", None)
        extra = ["--checkpoint", checkpoint] if checkpoint else []
        return submit(
            args.stage,
            args.address,
            args.config,
            list(args.overrides or []),
            extra,
            wait=args.wait,
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus,
            token_file=args.token_file,
        )
    if cmd == "jobs":
        from .submit import jobs_command

        return jobs_command(args.action, args.address, args.job_id, args.token_file)

    cfg = _load(args)
    if cmd == "teacher-pretrain":
        from zeroseg.toy_assets import TOY_MODELS

        from .teachers import pretrain_toy_teacher

        if cfg.teacher.model not in TOY_MODELS:
            raise SystemExit(
                f"teacher-pretrain trains the toy CLIPs ({', '.join(TOY_MODELS)}), not "
                f"teacher.model={cfg.teacher.model!r}"
            )
        if args.stop_at is not None and not 1 <= args.stop_at <= cfg.teacher.pretrain_steps:
            raise SystemExit(
                f"--stop-at must lie in [1, teacher.pretrain_steps={cfg.teacher.pretrain_steps}]"
            )
        if args.out:
            from zeroseg import storage

            storage.check_output_folder(args.out, "--out")
        pretrain_toy_teacher(cfg, force=args.force, out_dir=args.out, stop_at=args.stop_at)
        return 0

    if cmd == "student-pretrain":
        from zeroseg import storage
        from zeroseg.mae_pretrain import MAESettings

        from .student_pretrain import pretrain_student

        try:
            settings = MAESettings(
                steps=args.steps,
                batch=args.batch,
                lr=args.lr,
                mask_ratio=args.mask_ratio,
                seed=args.seed,
            )
        except ValueError as exc:
            raise SystemExit(f"student-pretrain: {exc}") from None
        storage.check_output_folder(args.out, "--out")
        pretrain_student(cfg, args.out, settings)
        return 0

    if cmd == "train" and args.dry_run:
        return _dry_run(cfg, args)
    if cmd == "eval" and args.dry_run:
        return _eval_dry_run(cfg)

    from .preflight import preflight

    if cmd == "ablate":
        from .ablate import variant_configs

        variant_configs(args.config, list(args.overrides or []), cfg)  # before any work
    preflight(cfg, cmd)
    if cmd == "run":
        from .run import run_all

        run_all(cfg)
        return 0
    if cmd == "ablate":
        from .ablate import run_ablation

        run_ablation(args.config, list(args.overrides or []), cfg)
        return 0
    from .run import run_stages

    commands = {stage: upstream_command(args, stage) for stage in ("extract", "train")}
    if cmd == "train":
        run_stages(cfg, ["train"], cache=args.cache, commands=commands)
        return 0
    if cmd == "extract":
        run_stages(cfg, ["extract"], commands=commands)
        return 0
    if cmd == "eval":
        out = run_stages(cfg, ["eval"], checkpoint=args.checkpoint, commands=commands)
        for name, metrics in out.metrics.items():
            print(
                f"{name}: student mIoU {metrics['student']['miou']:.3f}; "
                + ", ".join(f"{k} {v['miou']:.3f}" for k, v in metrics["baselines"].items())
            )
        return 0
    raise AssertionError(cmd)


def _dry_run(cfg, args) -> int:
    """Per-worker memory and step cost of the training run, printed; nothing is started."""
    import json

    from .train import teacher_embed_dim
    from .train_plan import IN1K_TRAIN_IMAGES, estimate, format_estimate

    dim = teacher_embed_dim(cfg.teacher.model)
    if dim is None:
        raise ConfigError(
            f"teacher.model: open_clip has no architecture config for {cfg.teacher.model!r}, "
            "so its embedding size is unknown"
        )
    images = args.images or (cfg.world.n_train if cfg.world.generate else IN1K_TRAIN_IMAGES)
    est = estimate(cfg, dim, images, tflops=args.assume_tflops, mfu=args.assume_mfu)
    print(f"[train --dry-run] {cfg.train.name}: nothing is started")
    for line in format_estimate(est):
        print(f"  {line}")
    print(json.dumps({"dry_run": est}))
    return 0


def _eval_dry_run(cfg) -> int:
    """The evaluation plan, printed; no data is read and nothing is started."""
    import json

    from .eval_plan import format_plan, plan_eval

    plan = plan_eval(cfg)
    print(f"[eval --dry-run] {len(plan)} benchmark(s); nothing is read or started")
    for line in format_plan(plan):
        print(f"  {line}")
    print(json.dumps({"dry_run": plan}))
    return 0


def upstream_command(args, stage: str) -> str:
    """The command that produces ``stage``'s output for the same config and overrides, so a
    missing upstream names exactly what to run first."""
    import shlex

    parts = ["zeroseg", stage]
    if getattr(args, "config", None):
        parts += ["--config", args.config]
    parts += list(getattr(args, "overrides", None) or [])
    return " ".join(shlex.quote(p) for p in parts)


if __name__ == "__main__":
    sys.exit(main())
