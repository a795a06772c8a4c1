"""The stage protocol shared by extract, train and eval, and the loop that drives it.

plan deterministic units -> drop units that already have a marker -> run the rest, retrying
only failures a retry can fix -> finalize (manifest, ``_SUCCESS``). Markers are written last, so
a unit without a marker does not exist for readers and rerunning it is harmless. A fingerprint
of everything that changes a stage's outputs names its directory, so a changed setting never
mixes with old results.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zeroseg
from zeroseg import storage

SUCCESS = "_SUCCESS"


def fingerprint(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable description."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def code_version() -> dict[str, Any]:
    """Package version plus the git commit (and dirty flag) when running from a checkout."""
    info: dict[str, Any] = {"zeroseg": zeroseg.__version__}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode == 0:
            info["git_sha"] = sha.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "open_clip_torch", "ray", "zarr", "pyarrow", "fsspec", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class StageDir:
    """A stage's output directory with its unit markers."""

    uri: str
    marker_dir: str = "shards"

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def marker_uri(self, unit: int) -> str:
        return self.path(self.marker_dir, f"{unit:05d}.json")

    def done_units(self) -> set[int]:
        fs, path = storage.fs_and_path(self.path(self.marker_dir))
        fs.invalidate_cache(path)  # markers come and go from other processes (and this one)
        if not fs.exists(path):
            return set()
        done = set()
        for p in fs.ls(path, detail=False):
            name = os.path.basename(p)
            if name.endswith(".json") and name[:-5].isdigit():
                done.add(int(name[:-5]))
        return done

    def write_marker(self, unit: int, stats: dict[str, Any]) -> None:
        storage.write_json(self.marker_uri(unit), stats)

    def read_marker(self, unit: int) -> dict[str, Any]:
        return storage.read_json(self.marker_uri(unit))

    def succeeded(self) -> bool:
        return storage.exists(self.path(SUCCESS))

    def failure_uri(self, unit: int) -> str:
        return self.path(FAILED_DIR, f"{unit:05d}.json")

    def failed_units(self) -> dict[int, dict[str, Any]]:
        """Failure records ``failed/NNNNN.json`` (attempts, traceback) of units without a
        marker: what the last run could not finish."""
        fs, path = storage.fs_and_path(self.path(FAILED_DIR))
        if not fs.exists(path):
            return {}
        done = self.done_units()
        out = {}
        for p in sorted(fs.ls(path, detail=False)):
            name = os.path.basename(p)
            if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in done:
                out[int(name[:-5])] = storage.read_json(self.failure_uri(int(name[:-5])))
        return out

    def record_failure(self, unit: int, attempts: int, failure: UnitFailure) -> None:
        storage.write_json(
            self.failure_uri(unit),
            {
                "unit": unit,
                "attempts": attempts,
                "transient": failure.transient,
                "error": failure.error,
                "at": now(),
            },
        )

    def clear_failure(self, unit: int) -> None:
        storage.remove(self.failure_uri(unit), recursive=False)

    def mark_success(self) -> None:
        storage.write_text(self.path(SUCCESS), now() + "\n")

    def clear(self) -> None:
        storage.remove(self.uri)

    def clear_success(self) -> None:
        if storage.exists(self.path(SUCCESS)):
            storage.remove(self.path(SUCCESS), recursive=False)

    def remove_marker(self, unit: int) -> None:
        if storage.exists(self.marker_uri(unit)):
            storage.remove(self.marker_uri(unit), recursive=False)


def pending_units(
    all_units: list[int], done: set[int], mode: str = "resume", redo: list[int] | None = None
) -> list[int]:
    """Which units to run: everything for ``overwrite``, else the unmarked plus ``redo``."""
    if mode == "overwrite":
        return list(all_units)
    redo_set = set(redo or [])
    unknown = redo_set - set(all_units)
    if unknown:
        raise ValueError(f"--redo-shards names shards that do not exist: {sorted(unknown)}")
    return [u for u in all_units if u not in done or u in redo_set]


def write_run_info(stage_dir: str, stage: str, cfg_dict: dict[str, Any], **extra: Any) -> None:
    """The resolved config and code version, written into every output directory."""
    storage.write_json(
        storage.join(stage_dir, "config.json"),
        {"stage": stage, "config": cfg_dict, "code": code_version(), "written_at": now(), **extra},
    )


# ---------------------------------------------------------------------------------------------
# the protocol every stage implements, and the one loop that drives it

FAILED_DIR = "failed"
# Errors a retry can fix: storage and network trouble, a worker or node that died. Anything else
# (a bad value, a bug, a missing file) fails the same way every time and is reported at once.
_PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)
_TRANSIENT_RAY_ERRORS = (
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "OutOfMemoryError",
    "RaySystemError",
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the unit that raised ``exc`` can succeed. Wrapped errors (a Ray task
    error around the worker's exception, ``raise ... from``) are judged by their cause."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _PERMANENT_OS_ERRORS):
            return False
        names = {c.__name__ for c in type(exc).__mro__}
        if names & set(_TRANSIENT_RAY_ERRORS):
            return True
        if isinstance(exc, (ConnectionError, TimeoutError, OSError, MemoryError)):
            return True
        inner = getattr(exc, "cause", None)  # RayTaskError keeps the worker's exception here
        exc = inner if isinstance(inner, BaseException) else exc.__cause__
    return False


@dataclass
class UnitFailure:
    """Why one unit failed: the traceback a user needs, and whether a retry can help."""

    error: str
    transient: bool

    @classmethod
    def of(cls, exc: BaseException) -> UnitFailure:
        import traceback

        return cls("".join(traceback.format_exception(exc)), is_transient(exc))


class StageFailed(RuntimeError):
    """Units of a stage failed for good; finished units are kept, a rerun resumes."""


class Stage:
    """One stage: a fingerprinted output folder of deterministic units (extract: shards;
    train: the run; eval: parts of the benchmark splits).

    :func:`run_stage` drives every stage the same way: ``locate`` (the upstream is finished and
    matches; the output folder named by the fingerprint) -> skip when ``_SUCCESS`` is there ->
    ``prepare`` -> run the units without a marker, retrying *transient* failures up to
    ``max_retries`` times -> ``finalize`` -> ``_SUCCESS``. A subclass writes a unit's marker
    last, when the unit's outputs are complete, so a unit without one is simply run again.
    """

    name: str = "stage"
    unit_name: str = "unit"
    skip_message: str = "finished, skipping"
    max_retries: int = 0

    def locate(self) -> StageDir:
        """Check the upstream and return the output folder (no writes)."""
        raise NotImplementedError

    def units(self) -> list[int]:
        raise NotImplementedError

    def check(self) -> None:
        """Refuse to start (resources, upstream) before anything is cleared or written."""

    def done_units(self) -> set[int]:
        """Units that are finished: those with a marker (a stage may also ask for outputs)."""
        return self.locate().done_units()

    def redo(self) -> list[int]:
        """Finished units to compute again on request."""
        return []

    def damaged(self) -> tuple[dict[int, str], list[str]]:
        """What a cheap check of the stored outputs found: finished units whose outputs are not
        as written (unit -> why), and stage-level problems that need the stage finalized
        again. Both make a finished stage incomplete."""
        return {}, []

    def overwrite(self) -> bool:
        """Start from an empty folder, discarding finished units."""
        return False

    def prepare(self) -> None:
        """Write what the units need (plan, arrays, config); only when there is work."""

    def announce(self, total: int, pending: int) -> None:
        """A line saying what is about to run."""

    def run_units(self, pending: list[int]) -> dict[int, UnitFailure]:
        """Run the units; return the failed ones (a finished unit has written its marker)."""
        raise NotImplementedError

    def finalize(self, seconds: float) -> None:
        """Gather the markers into the stage's manifest (``_SUCCESS`` follows)."""

    def result(self) -> Any:
        """What the finished stage hands downstream (a URI, the metrics)."""
        raise NotImplementedError


def run_stage(stage: Stage, log: Callable[[str], None] = print) -> Any:
    """Drive ``stage`` through the protocol; returns ``stage.result()``."""
    out = stage.locate()
    overwrite, redo = stage.overwrite(), stage.redo()
    damaged, broken = ({}, []) if overwrite else stage.damaged()
    intact = not damaged and not broken
    if not overwrite and not redo and intact and out.succeeded():
        log(f"[{stage.name}] {stage.skip_message}: {out.uri}")
        return stage.result()
    from .lease import Lease

    stage.check()  # resources, upstream: before the lease, so a refusal writes nothing
    with Lease(out.uri, stage.name, log) as lease:
        if not overwrite and not redo and intact and out.succeeded():  # the run before ours
            log(f"[{stage.name}] {stage.skip_message}: {out.uri}")
            return stage.result()
        if not intact:
            found = [f"{stage.unit_name} {u}: {why}" for u, why in sorted(damaged.items())]
            log(
                f"[{stage.name}] the stored outputs are not as written "
                f"({'; '.join(found + broken)}): recomputing {len(damaged)} "
                f"{stage.unit_name}(s) and finalizing again"
            )
            out.clear_success()
            for unit in damaged:
                out.remove_marker(unit)
        _run_pending(stage, out, overwrite, redo, lease, log)
    return stage.result()


def _run_pending(stage: Stage, out: StageDir, overwrite: bool, redo: list[int], lease, log) -> None:
    if overwrite:
        out.clear()
        lease.renew()
    stage.prepare()
    units = stage.units()
    done = stage.done_units() - set(redo)
    pending = pending_units(units, done, "overwrite" if overwrite else "resume", redo)
    stage.announce(len(units), len(pending))
    t0 = time.perf_counter()
    attempts: dict[int, int] = {}
    recorded = set(out.failed_units())
    attempt = 0
    while pending:
        failed = stage.run_units(pending)
        for unit in pending:
            if unit in failed:
                attempts[unit] = attempts.get(unit, 0) + 1
                out.record_failure(unit, attempts[unit], failed[unit])
                recorded.add(unit)
            elif unit in recorded:  # succeeded on a retry or a later run
                out.clear_failure(unit)
                recorded.discard(unit)
        if not failed:
            break
        attempt += 1
        permanent = sorted(u for u, f in failed.items() if not f.transient)
        if permanent or attempt > stage.max_retries:
            for unit, f in sorted(failed.items()):
                what = f"{stage.unit_name} {unit}"
                log(f"[{stage.name}] {what} failed after {attempts[unit]} attempt(s):\n{f.error}")
            why = (
                f"{len(permanent)} of them with an error a retry cannot fix"
                if permanent
                else f"after {attempt} attempts"
            )
            raise StageFailed(
                f"[{stage.name}] {len(failed)} {stage.unit_name}(s) failed: {sorted(failed)} "
                f"({why}; "
                f"tracebacks in {out.path(FAILED_DIR)}); rerun the same command to retry them "
                f"(finished {stage.unit_name}s are kept)"
            )
        what = f"{len(failed)} failed {stage.unit_name}(s)"
        log(f"[{stage.name}] retrying {what} (attempt {attempt + 1})")
        pending = sorted(failed)
    stage.finalize(time.perf_counter() - t0)
    out.mark_success()
