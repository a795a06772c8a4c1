"""Checks that fail fast, before Ray starts: can we write the outputs and read the inputs?"""

from __future__ import annotations

import uuid

from zeroseg import storage
from zeroseg.config import Config
from zeroseg.toy_assets import SHIPPED, ShippedAssetError, verified_shipped_init


class PreflightError(RuntimeError):
    """Storage or input problems found before any cluster work; the message says what to fix."""


CREDENTIALS_HINT = (
    "the storage refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE, AWS_ENDPOINT_URL) in the environment and that they may {what} there"
)


def _hint(exc: Exception, what: str, uri: str) -> str:
    if isinstance(exc, PermissionError) and not storage.is_local(uri):
        return CREDENTIALS_HINT.format(what=what)
    return (
        f"check that the bucket or folder exists and that the credentials in the environment may "
        f"{what} there"
    )


def check_writable(uri: str, what: str) -> None:
    """Write and delete a probe object: catches a missing bucket or a read-only credential."""
    try:
        storage.check_output_folder(uri, what)
    except storage.NotAFolder as exc:
        raise PreflightError(str(exc)) from None
    probe = storage.join(uri, f".zeroseg-probe-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_bytes(probe, b"ok")
        storage.remove(probe, recursive=False)
    except Exception as exc:  # the storage backend decides the type; we only add context
        raise PreflightError(
            f"cannot write to {what}={uri}: {type(exc).__name__}: {exc}; {_hint(exc, 'write', uri)}"
        ) from None


def check_readable_folder(uri: str, what: str) -> None:
    try:
        found = storage.exists(uri)
    except Exception as exc:
        raise PreflightError(
            f"cannot read {what}={uri}: {type(exc).__name__}: {exc}; {_hint(exc, 'read', uri)}"
        ) from None
    if not found:
        raise PreflightError(f"{what}={uri} does not exist")


def check_shipped_init_fits(cfg: Config) -> None:
    """The packaged tower is intact and loads into the configured student (a tiny model: the
    check costs milliseconds and saves a cluster start that would fail in every worker)."""
    from zeroseg.config import student_architecture
    from zeroseg.models import build_student
    from zeroseg.models.encoder_init import InitMismatch, load_encoder_init

    try:
        verified_shipped_init()
        load_encoder_init(build_student(student_architecture(cfg), embed_dim=64), SHIPPED)
    except (ShippedAssetError, InitMismatch) as exc:
        raise PreflightError(f"student.init=shipped: {exc}") from None


def preflight(cfg: Config, stage: str) -> None:
    """The checks a stage needs; ``run`` generates the world itself when configured to."""
    check_writable(cfg.storage.root, "storage.root")
    if stage in ("train", "run", "ablate") and cfg.student.init == SHIPPED:
        check_shipped_init_fits(cfg)
    elif stage in ("train", "run", "ablate") and cfg.student.init:
        check_readable_folder(cfg.student.init, "student.init")
    if stage == "extract" or (stage == "run" and not cfg.world.generate):
        check_readable_folder(cfg.data.train, "data.train")
    if stage == "run" and not cfg.world.generate:
        check_readable_folder(cfg.data.bench, "data.bench")
    if stage == "eval":
        from zeroseg.config import eval_benchmarks

        from .evaluate import benchmark_root

        for name in eval_benchmarks(cfg.eval):
            key = "data.bench" if name == "shapes" else f"eval.data_root ({name})"
            check_readable_folder(benchmark_root(cfg, name), key)
