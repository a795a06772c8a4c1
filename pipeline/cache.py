"""The teacher cache: Zarr v3 arrays whose shards line up with extraction shards.

``embeddings`` (N, V, D) float16 and ``pixels`` (N, S, S, 3) uint8 are sharded along rows by
``images_per_shard``, so each extraction shard writes exactly one shard object per array and two
writers never touch the same object. ``valid`` (N,) uint8 flags rows whose image was processed;
skipped rows stay zero. See docs/cache_format.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zeroseg import storage

from .runner import StageDir

CACHE_VERSION = 1
ZARR_NAME = "cache.zarr"


@dataclass(frozen=True)
class CacheLayout:
    num_images: int
    num_views: int
    embed_dim: int
    crop_size: int
    images_per_shard: int

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.num_images // self.images_per_shard))

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.images_per_shard
        return start, min(start + self.images_per_shard, self.num_images)


def _chunk_rows(images_per_shard: int) -> int:
    # Inner chunks let readers fetch part of a shard; 16 rows divides typical shard sizes.
    for rows in (16, 8, 4, 2, 1):
        if images_per_shard % rows == 0:
            return rows
    return 1


def create_arrays(cache_uri: str, layout: CacheLayout, overwrite: bool = False) -> None:
    """Create (or reopen) the arrays; only metadata is written here, never shard data."""
    import zarr

    store = storage.zarr_store(cache_uri)
    root = zarr.open_group(store, mode="w" if overwrite else "a")
    s = layout.images_per_shard
    c = _chunk_rows(s)
    specs = {
        "embeddings": (
            (layout.num_images, layout.num_views, layout.embed_dim),
            "float16",
            (c, layout.num_views, layout.embed_dim),
            (s, layout.num_views, layout.embed_dim),
        ),
        "pixels": (
            (layout.num_images, layout.crop_size, layout.crop_size, 3),
            "uint8",
            (c, layout.crop_size, layout.crop_size, 3),
            (s, layout.crop_size, layout.crop_size, 3),
        ),
        "valid": ((layout.num_images,), "uint8", (s,), (s,)),
    }
    for name, (shape, dtype, chunks, shards) in specs.items():
        if name in root:
            arr = root[name]
            if tuple(arr.shape) != shape or str(arr.dtype) != dtype:
                raise RuntimeError(
                    f"existing cache array {name} has shape {arr.shape} {arr.dtype}, "
                    f"expected {shape} {dtype}; rerun with extract.mode=overwrite"
                )
            continue
        root.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, shards=shards, fill_value=0
        )
    root.attrs["cache_version"] = CACHE_VERSION


ARRAYS = ("embeddings", "pixels", "valid")


def shard_keys(layout: CacheLayout, shard: int) -> dict[str, str]:
    """The storage key, inside the zarr group, of each array's object for one shard."""
    ndim = {"embeddings": 3, "pixels": 4, "valid": 1}
    return {
        name: f"{name}/c/" + "/".join([str(shard)] + ["0"] * (ndim[name] - 1)) for name in ARRAYS
    }


def object_records(group_uri: str, keys: list[str]) -> dict[str, dict[str, Any] | None]:
    """Size and sha256 of each object as stored (None: absent, as zarr leaves a shard whose
    values are all the fill value)."""
    import hashlib

    out: dict[str, dict[str, Any] | None] = {}
    for key in keys:
        uri = storage.join(group_uri, key)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            out[key] = None
            continue
        out[key] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


def write_shard(
    cache_uri: str,
    layout: CacheLayout,
    shard: int,
    embeddings: np.ndarray,
    pixels: np.ndarray,
    valid: np.ndarray,
) -> dict[str, dict[str, Any] | None]:
    """Write one extraction shard: whole zarr shards, one writer. Returns the objects as they
    landed on storage (read back: what a later check compares with)."""
    import zarr

    start, stop = layout.shard_rows(shard)
    n = stop - start
    if embeddings.shape[0] != n or pixels.shape[0] != n or valid.shape[0] != n:
        raise ValueError(f"shard {shard} expects {n} rows")
    keys = list(shard_keys(layout, shard).values())
    # zarr merges a write into an existing shard object, so one left by an earlier attempt (half
    # written by a killed run, or damaged) would be read first; this shard's writer owns them
    for key in keys:
        fs, path = storage.fs_and_path(storage.join(cache_uri, key))
        if fs.isfile(path):
            fs.rm(path)
    root = zarr.open_group(storage.zarr_store(cache_uri), mode="r+")
    root["embeddings"][start:stop] = embeddings.astype(np.float16)
    root["pixels"][start:stop] = pixels.astype(np.uint8)
    root["valid"][start:stop] = valid.astype(np.uint8)
    return object_records(cache_uri, keys)


class CacheReader:
    """Read rows of a finished cache; rows of shards without a marker are refused."""

    def __init__(self, stage_uri: str):
        import zarr

        self.stage = StageDir(stage_uri)
        if not self.stage.succeeded():
            raise FileNotFoundError(
                f"teacher cache {stage_uri} is not complete (no _SUCCESS); run `zeroseg extract` "
                "first"
            )
        self.manifest: dict[str, Any] = storage.read_json(self.stage.path("manifest.json"))
        root = zarr.open_group(
            storage.zarr_store(self.stage.path(ZARR_NAME), read_only=True), mode="r"
        )
        self.embeddings = root["embeddings"]
        self.pixels = root["pixels"]
        valid = np.asarray(root["valid"][:]).astype(bool)
        layout = self.layout
        done = self.stage.done_units()
        for shard in range(layout.num_shards):
            if shard not in done:
                a, b = layout.shard_rows(shard)
                valid[a:b] = False
        self.valid_rows = np.flatnonzero(valid)

    @property
    def layout(self) -> CacheLayout:
        m = self.manifest
        return CacheLayout(
            m["num_images"],
            m["num_views"],
            m["teacher"]["embed_dim"],
            m["crop_size"],
            m["images_per_shard"],
        )

    def __len__(self) -> int:
        return len(self.valid_rows)

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pixels uint8 (n,S,S,3), embeddings float16 (n,V,D))`` for sorted row ids."""
        rows = np.asarray(rows)
        if rows.size == 0:
            raise ValueError("no rows requested")
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * rows.size:
            px = np.asarray(self.pixels[lo:hi])[rows - lo]
            emb = np.asarray(self.embeddings[lo:hi])[rows - lo]
        else:
            px = np.asarray(self.pixels.get_orthogonal_selection((rows,)))
            emb = np.asarray(self.embeddings.get_orthogonal_selection((rows,)))
        return px, emb

    def load_all(self) -> tuple[np.ndarray, np.ndarray]:
        return self.read_rows(self.valid_rows)
