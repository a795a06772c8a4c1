"""The stage protocol shared by extract, train and eval.

plan deterministic units -> drop units that already have a marker -> run the rest -> finalize
(manifest, ``_SUCCESS``). Markers are written last, so a unit without a marker does not exist for
readers and rerunning it is harmless. A fingerprint of everything that changes a stage's outputs
names its directory, so a changed setting never mixes with old results.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
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

    def mark_success(self) -> None:
        storage.write_text(self.path(SUCCESS), now() + "\n")

    def clear(self) -> None:
        storage.remove(self.uri)


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
