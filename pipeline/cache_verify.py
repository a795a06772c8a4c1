"""Caches verify themselves: every stored object of a finished cache is checked against what
was written, so a deleted, truncated or overwritten object is found before anything trains on
it (a missing zarr shard would otherwise read back as the array's fill value, all zeros).

What is recorded: each shard marker lists its zarr objects (size, sha256) as read back after
the write; the manifest repeats those lists, and records the size and sha256 of every marker and
of ``index.parquet``. The cheap check (``mode="sizes"``) reads the manifest and lists the
folder: every object present with its size. The full check (``mode="full"``) also reads every
object and compares checksums. A damaged shard is recomputed by the next extract run; damage to
the manifest, the index or ``_SUCCESS`` makes the next run finalize the stage again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from zeroseg import storage

from .cache import ZARR_NAME
from .runner import SUCCESS, StageDir

MODES = ("sizes", "full")


@dataclass
class Verdict:
    """What a check found: shards to recompute (shard -> why) and stage-level problems (the
    manifest, the index, ``_SUCCESS``) that only need the stage finalized again."""

    shards: dict[int, str] = field(default_factory=dict)
    stage: list[str] = field(default_factory=list)
    unverifiable: bool = False  # made before caches recorded their objects
    checked_objects: int = 0

    @property
    def ok(self) -> bool:
        return not self.shards and not self.stage

    def describe(self, limit: int = 5) -> str:
        parts = [f"shard {s}: {why}" for s, why in sorted(self.shards.items())[:limit]]
        if len(self.shards) > limit:
            parts.append(f"... {len(self.shards) - limit} more shard(s)")
        return "; ".join(parts + self.stage)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(uri: str) -> dict[str, Any]:
    data = storage.read_bytes(uri)
    return {"size": len(data), "sha256": _sha256(data)}


def marker_records(stage: StageDir, num_shards: int) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every shard marker (keyed by shard number as text, for JSON); read
    in parallel, since on object storage each is one request."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        records = pool.map(lambda s: _record(stage.marker_uri(s)), range(num_shards))
        return {str(s): r for s, r in zip(range(num_shards), records)}


def index_record(stage: StageDir) -> dict[str, Any]:
    return _record(stage.path("index.parquet"))


def _listing(uri: str) -> dict[str, int]:
    """Relative path -> size of every object below ``uri`` (one listing, also on S3)."""
    fs, path = storage.fs_and_path(uri)
    fs.invalidate_cache(path)  # a listing cached earlier in this process may be out of date
    if not fs.exists(path):
        return {}
    found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return {p[len(base) :]: int(info.get("size") or 0) for p, info in found.items()}


def _compare(
    uri: str, want: dict[str, Any] | None, sizes: dict[str, int], key: str, full: bool
) -> str | None:
    """Why the object ``key`` (listed in ``sizes``) is not what was written, if it is not."""
    if want is None:
        unexpected = f"{key} should not exist (its values were all the fill value)"
        return unexpected if key in sizes else None
    if key not in sizes:
        return f"{key} is missing"
    if sizes[key] != want["size"]:
        return f"{key} has {sizes[key]} bytes, {want['size']} were written"
    if full:
        try:
            got = _sha256(storage.read_bytes(storage.join(uri, key)))
        except FileNotFoundError:
            return f"{key} is missing"
        if got != want["sha256"]:
            return f"{key} has other contents than were written (checksum)"
    return None


def verify_cache(stage_uri: str, mode: str = "sizes") -> Verdict:
    """Check a cache folder against its records (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"verify mode must be one of {MODES}, got {mode!r}")
    full = mode == "full"
    stage = StageDir(stage_uri)
    verdict = Verdict()
    files = _listing(stage.uri)
    if "plan.json" in files:
        num_shards = int(storage.read_json(stage.path("plan.json"))["num_shards"])
    elif "manifest.json" in files:  # written by other code than the extract stage
        num_shards = int(storage.read_json(stage.path("manifest.json"))["num_shards"])
    else:
        return Verdict(unverifiable=True)
    markers = stage.marker_dir + "/"
    for s in range(num_shards):
        if f"{markers}{s:05d}.json" not in files:
            verdict.shards[s] = "its marker is missing"
    if SUCCESS not in files:
        verdict.stage.append(f"{SUCCESS} is missing")
    manifest = None
    try:
        if "manifest.json" in files:
            manifest = storage.read_json(stage.path("manifest.json"))
    except ValueError:
        verdict.stage.append("manifest.json does not parse")
        manifest = None
    if manifest is None:
        if "manifest.json" not in files and SUCCESS in files:
            verdict.stage.append("manifest.json is missing")
        # the markers still know their shards' objects: check those, so one rerun repairs all
        entries = _entries_from_markers(stage, num_shards, verdict)
        _check_objects(stage, entries, files, full, verdict)
        return verdict
    if "markers" not in manifest:  # a cache from before objects were recorded
        verdict.unverifiable = True
        return verdict
    for s_text, want in manifest["markers"].items():
        s = int(s_text)
        if s in verdict.shards:
            continue
        why = _compare(stage.uri, want, files, f"{markers}{s:05d}.json", full)
        if why:
            verdict.shards[s] = why
    verdict.checked_objects += len(manifest["markers"])
    index = manifest.get("index")
    if index:
        why = _compare(stage.uri, index, files, "index.parquet", full)
        if why:
            verdict.stage.append(why)
        verdict.checked_objects += 1
    _check_objects(stage, manifest["shards"], files, full, verdict)
    return verdict


def _entries_from_markers(stage: StageDir, num_shards: int, verdict: Verdict) -> list[dict]:
    """Per-shard object records read from the markers themselves (no usable manifest)."""
    entries = []
    for s in range(num_shards):
        if s in verdict.shards:
            continue
        try:
            marker = stage.read_marker(s)
        except ValueError:
            verdict.shards[s] = "its marker does not parse"
            continue
        except FileNotFoundError:
            verdict.shards[s] = "its marker is missing"
            continue
        entries.append({"shard": s, "objects": marker.get("objects")})
    if entries and not any(e["objects"] for e in entries):
        verdict.unverifiable = True
    return entries


def _check_objects(
    stage: StageDir, entries: list[dict], files: dict[str, int], full: bool, verdict: Verdict
) -> None:
    group = f"{ZARR_NAME}/"
    group_uri = stage.path(ZARR_NAME)
    sizes = {k[len(group) :]: v for k, v in files.items() if k.startswith(group)}
    for entry in entries:
        s = int(entry["shard"])
        if s in verdict.shards or not entry.get("objects"):
            continue
        for key, want in entry["objects"].items():
            why = _compare(group_uri, want, sizes, key, full)
            if why:
                verdict.shards[s] = why
                break
        verdict.checked_objects += len(entry["objects"])


class CacheDamaged(RuntimeError):
    """A finished cache whose stored objects are not what was written."""


def require_intact(stage_uri: str, mode: str = "sizes") -> Verdict:
    """Refuse (``CacheDamaged``) a cache that fails the check; training calls this first."""
    verdict = verify_cache(stage_uri, mode)
    if not verdict.ok:
        raise CacheDamaged(
            f"the teacher cache {stage_uri} is damaged ({verdict.describe()}); training would "
            f"read those rows as zeros. Rerun the extract stage with the same config (`zeroseg "
            f"extract --config ...` or `zeroseg run`): it recomputes the damaged shard(s) only"
        )
    return verdict
