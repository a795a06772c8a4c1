"""Submitting stages to a Ray cluster through the Ray Jobs API, and finding them again.

The job runs the same ``zeroseg <stage> --config ... key=value`` command a laptop would, with the
repository (code and job configs) as its working dir, packaged by Ray from
``jobs/runtime_env.yaml``. Every job carries metadata (project, stage, fingerprint, config, git
commit) so ``zeroseg jobs`` lists this project's jobs only. Credentials are never shipped: the
cluster's nodes read storage credentials from their own environment, and the Ray auth token only
travels as an HTTP header.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from zeroseg.config import Config, ConfigError, config_to_dict, load_config

from .run import STAGES as PIPELINE_STAGES
from .runner import code_version, fingerprint

PROJECT = "zeroseg"
# a submitted job runs the same command on the cluster, so it goes through the same runner
STAGES = (*PIPELINE_STAGES, "run")
ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = ROOT / "jobs" / "runtime_env.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

# The config sections each stage's outputs depend on; ``run`` depends on all of them. Ray and
# ablation settings never change what a stage writes.
STAGE_SECTIONS = {
    "extract": ("storage", "data", "world", "teacher", "views", "extract"),
    "train": ("storage", "data", "world", "teacher", "views", "extract", "student", "train"),
    "eval": (
        "storage",
        "data",
        "world",
        "teacher",
        "views",
        "extract",
        "student",
        "train",
        "eval",
    ),
}
STAGE_SECTIONS["run"] = STAGE_SECTIONS["eval"]


def config_fingerprint(cfg: Config, stage: str) -> str:
    """A short hash of the settings ``stage`` reads: the same config gives the same id prefix.

    The output folders' own fingerprints also hash the input listing and the teacher weights,
    which only the cluster reads; this one needs nothing but the config."""
    d = config_to_dict(cfg)
    return fingerprint({k: d[k] for k in STAGE_SECTIONS[stage]}, length=10)


def submission_id(stage: str, fp: str) -> str:
    """``zeroseg-<stage>-<fingerprint>-<utc time>-<random>``: sortable, unique, greppable."""
    return f"{PROJECT}-{stage}-{fp}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-" + (
        secrets.token_hex(2)
    )


def runtime_env(root: Path = ROOT) -> dict[str, Any]:
    """``jobs/runtime_env.yaml`` with the working dir resolved against the repository root."""
    env = yaml.safe_load(RUNTIME_ENV.read_text()) if (root / "jobs").is_dir() else {}
    env = dict(env or {})
    env["working_dir"] = str((root / env.get("working_dir", ".")).resolve())
    return env


def shipped_config_path(config: str | None, root: Path = ROOT) -> str | None:
    """The config's path inside the working dir the job receives; it must be in there."""
    if not config:
        return None
    path = Path(config).resolve()
    if not path.is_file():
        raise ConfigError(f"--config: no such file: {config}")
    from zeroseg.config import config_files

    inside = None
    for file in config_files(path):  # the job file and every file its defaults: build on
        try:
            rel = file.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            what = "--config" if file.resolve() == path else f"--config {config} builds on"
            raise ConfigError(
                f"{what} {file}, outside the working dir {root} that is shipped with the job; "
                "put the config under jobs/ (or anywhere below the repository root)"
            ) from None
        if file.resolve() == path:
            inside = rel
    return inside


def entrypoint(stage: str, config: str | None, overrides: list[str], extra: list[str]) -> str:
    """The shell command the job runs: the local CLI, unchanged."""
    parts = ["zeroseg", stage]
    if config:
        parts += ["--config", config]
    return shlex.join([*parts, *extra, *overrides])


def read_token(token_file: str | None = None) -> str | None:
    """The Ray auth token: ``--token-file``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, then
    ``~/.ray/auth_token`` (what ``ray start`` writes). None when there is none."""
    if token_file:
        return Path(token_file).expanduser().read_text().strip() or None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), "~/.ray/auth_token"):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip() or None
    return None


def client(address: str, token_file: str | None = None):
    """A Jobs API client; the token (if any) goes only into the Authorization header."""
    from ray.job_submission import JobSubmissionClient

    token = read_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address and os.environ.get("RAY_ADDRESS", "").startswith("http"):
        address = os.environ["RAY_ADDRESS"]
    if not address:
        raise ConfigError(
            "--address: the Ray dashboard address is required, e.g. --address http://HEAD:8265 "
            "(or set RAY_API_SERVER_ADDRESS)"
        )
    return address


def prepare(
    stage: str,
    config: str | None,
    overrides: list[str],
    extra: list[str] | None = None,
    root: Path = ROOT,
) -> dict[str, Any]:
    """Everything a submission needs, validated locally before the cluster is contacted: a bad
    config fails here with its key named."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    cfg = load_config(config, overrides)
    shipped = shipped_config_path(config, root)
    fp = config_fingerprint(cfg, stage)
    return {
        "submission_id": submission_id(stage, fp),
        "entrypoint": entrypoint(stage, shipped, overrides, extra or []),
        "runtime_env": runtime_env(root),
        "metadata": {
            "project": PROJECT,
            "stage": stage,
            "fingerprint": fp,
            "config": shipped or "",
            "git_sha": str(code_version().get("git_sha", "unknown")),
            "storage_root": cfg.storage.root,
        },
    }


def submit(
    stage: str,
    address: str | None,
    config: str | None,
    overrides: list[str],
    extra: list[str] | None = None,
    wait: bool = False,
    entrypoint_num_cpus: float = 0,
    entrypoint_num_gpus: float = 0,
    token_file: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Submit one stage (or ``run``); with ``wait`` follow its logs and return its exit status."""
    job = prepare(stage, config, overrides, extra)
    c = client(resolve_address(address), token_file)
    job_id = c.submit_job(
        entrypoint=job["entrypoint"],
        submission_id=job["submission_id"],
        runtime_env=job["runtime_env"],
        metadata=job["metadata"],
        entrypoint_num_cpus=entrypoint_num_cpus or None,
        entrypoint_num_gpus=entrypoint_num_gpus or None,
    )
    print(f"submitted {job_id}: {job['entrypoint']}", file=out, flush=True)
    if not wait:
        print(f"follow it with: zeroseg jobs logs {job_id} --address ...", file=out)
        return 0
    return follow(c, job_id, out)


def follow(c, job_id: str, out: TextIO = sys.stdout) -> int:
    """Stream the job's logs until it ends; 0 when it succeeded, 1 otherwise."""

    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    status = str(c.get_job_status(job_id).value)
    while status not in TERMINAL:  # the log stream can close a moment before the status flips
        time.sleep(0.5)
        status = str(c.get_job_status(job_id).value)
    info = c.get_job_info(job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if info.message else ""), file=out)
    return 0 if status == "SUCCEEDED" else 1


def project_jobs(c) -> list[Any]:
    """This project's jobs, oldest first (other jobs on the cluster are left out)."""
    jobs = [j for j in c.list_jobs() if (j.metadata or {}).get("project") == PROJECT]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


def jobs_command(
    action: str,
    address: str | None,
    job_id: str | None = None,
    token_file: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """``zeroseg jobs list|show|stop|logs``: this project's jobs on a cluster."""
    if action != "list" and not job_id:
        raise ConfigError(f"zeroseg jobs {action} needs a submission id")
    c = client(resolve_address(address), token_file)
    if action == "list":
        rows = project_jobs(c)
        print(f"{'submission id':<52} {'status':<10} {'stage':<8} started (UTC)", file=out)
        for j in rows:
            md = j.metadata or {}
            print(
                f"{j.submission_id:<52} {j.status.value:<10} {md.get('stage', '-'):<8} "
                f"{_when(j.start_time)}",
                file=out,
            )
        return 0
    if action == "show":
        j = c.get_job_info(job_id)
        fields = {
            "submission_id": j.submission_id,
            "status": j.status.value,
            "entrypoint": j.entrypoint,
            "message": j.message,
            "metadata": j.metadata,
            "started": _when(j.start_time),
            "ended": _when(j.end_time),
            "driver_exit_code": getattr(j, "driver_exit_code", None),
        }
        for k, v in fields.items():
            print(f"{k}: {v}", file=out)
        return 0
    if action == "stop":
        stopped = c.stop_job(job_id)
        print(f"{job_id}: {'stop requested' if stopped else 'already finished'}", file=out)
        return 0
    if action == "logs":
        out.write(c.get_job_logs(job_id))
        return 0
    raise ConfigError(f"unknown jobs action {action!r}")
