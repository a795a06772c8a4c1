"""Feed a training worker from the teacher cache: in memory for small caches, streamed for big ones.

Both sources hand out the same kind of batch, ``(pixels uint8 (B, S, S, 3), embeddings float16
(B, V, D))``, for ``(epoch, first batch)``, so resuming part-way through an epoch needs no replay.

The streaming source never holds the cache: each epoch it permutes the shard order with a seeded
generator, lays the valid rows of the shards end to end in that order and gives rank r the r-th
equal block (disjoint rows, mostly whole shards, so each rank touches about 1/world of the shard
objects). An in-memory shuffle buffer mixes rows across shards. The buffer is simulated on row
ids first, so the whole epoch order is known up front and a background thread reads shards
ahead of the training step. Memory per worker is about ``shuffle_buffer`` rows plus one shard.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from zeroseg.config import ConfigError

from .cache import CacheReader

Batch = tuple[np.ndarray, np.ndarray]


def expected_manifest(cfg: Any, embed_dim: int | None) -> dict[str, Any]:
    """What the training config expects of a cache, keyed by the config key that sets it."""
    expected: dict[str, Any] = {
        "teacher.model": cfg.teacher.model,
        "teacher.normalize": bool(cfg.teacher.normalize),
        "views.levels": list(cfg.views.levels),
        "views.crop_size": int(cfg.views.crop_size),
    }
    if cfg.teacher.pretrained:
        expected["teacher.pretrained"] = cfg.teacher.pretrained
    if embed_dim is not None:
        expected["teacher.model (embedding dim)"] = int(embed_dim)
    return expected


def manifest_values(manifest: dict[str, Any]) -> dict[str, Any]:
    """The same keys as :func:`expected_manifest`, read from a cache manifest."""
    teacher = manifest["teacher"]
    return {
        "teacher.model": teacher["model"],
        "teacher.pretrained": teacher.get("pretrained", ""),
        "teacher.normalize": bool(teacher.get("normalize", True)),
        "views.levels": list(manifest["levels"]),
        "views.crop_size": int(manifest["crop_size"]),
        "teacher.model (embedding dim)": int(teacher["embed_dim"]),
    }


def check_manifest(manifest: dict[str, Any], expected: dict[str, Any], cache_uri: str) -> None:
    """Refuse a cache made with another teacher, embedding size, grid or crop than the config
    says, naming the config key: training on it would fail late or learn the wrong targets."""
    found = manifest_values(manifest)
    for key, want in expected.items():
        if key in found and found[key] != want:
            raise ConfigError(
                f"{key}: the training config expects {want!r} but the cache {cache_uri} was "
                f"made with {found[key]!r}; train on a cache extracted with this config, or "
                "change the key"
            )


def cache_payload_bytes(reader: CacheReader) -> int:
    """Uncompressed bytes of the usable rows (pixels + fp16 embeddings)."""
    layout = reader.layout
    per_row = layout.crop_size**2 * 3 + layout.num_views * layout.embed_dim * 2
    return len(reader) * per_row


def choose_reader(setting: str, reader: CacheReader, stream_above_mb: float) -> str:
    """``memory`` or ``stream`` for ``train.reader`` (``auto`` decides by payload size)."""
    if setting != "auto":
        return setting
    return "stream" if cache_payload_bytes(reader) > stream_above_mb * 2**20 else "memory"


def batch_geometry(num_rows: int, world: int, batch_size: int) -> tuple[int, int, int]:
    """``(rows per rank, per-rank batch, steps per epoch)``; the global batch is split over
    ranks, and every rank runs the same number of steps (DDP needs it)."""
    if num_rows < world:
        raise RuntimeError(f"cache has {num_rows} usable images for {world} workers")
    per_rank = num_rows // world
    batch = max(1, min(batch_size // world, per_rank))
    return per_rank, batch, max(1, per_rank // batch)


def shard_rows(reader: CacheReader) -> list[np.ndarray]:
    """Valid row ids of every cache shard (empty for shards without a marker)."""
    layout = reader.layout
    valid = reader.valid_rows
    out = []
    for s in range(layout.num_shards):
        a, b = layout.shard_rows(s)
        lo, hi = np.searchsorted(valid, [a, b])
        out.append(valid[lo:hi])
    return out


def epoch_order(
    shards: list[np.ndarray],
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    shuffle_buffer: int,
) -> np.ndarray:
    """Row ids in the order rank ``rank`` sees them in ``epoch``: seeded shard permutation, this
    rank's block of it, then a shuffle buffer of ``shuffle_buffer`` rows."""
    order = np.random.default_rng((seed, epoch)).permutation(len(shards))
    seq = np.concatenate([shards[s] for s in order]) if shards else np.zeros(0, np.int64)
    per_rank = len(seq) // world
    mine = seq[rank * per_rank : (rank + 1) * per_rank]
    rng = np.random.default_rng((seed, epoch, rank, 1))
    out = np.empty_like(mine)
    n_out = 0
    buf = list(mine[:shuffle_buffer])
    picks = rng.integers(0, 2**62, size=max(0, len(mine) - len(buf)))
    for k, row in enumerate(mine[len(buf) :]):
        j = int(picks[k] % len(buf))
        out[n_out] = buf[j]
        n_out += 1
        buf[j] = row
    rest = np.asarray(buf, dtype=mine.dtype)
    rng.shuffle(rest)
    out[n_out:] = rest
    return out


class MemorySource:
    """Every usable row in memory; the per-epoch order is a seeded permutation of the rows.

    Small caches (the demo's) use it; its order is the one this stage always had, so results
    of existing configs do not change."""

    kind = "memory"

    def __init__(self, reader: CacheReader, rank: int, world: int, batch_size: int, seed: int):
        self.rows = reader.valid_rows
        self.rank, self.seed = rank, seed
        self.per_rank, self.batch, self.steps_per_epoch = batch_geometry(
            len(self.rows), world, batch_size
        )
        self.pixels, self.embeddings = reader.read_rows(self.rows)
        self.wait_s = 0.0

    def run(self, start_step: int, total_steps: int, with_rows: bool = False) -> Iterator[tuple]:
        """``(epoch, pixels, embeddings)`` for steps ``start_step .. total_steps - 1``; with
        ``with_rows`` also the batch's positions in ``self.pixels`` (for per-row data the
        trainer computed once, such as frozen stem features)."""
        step = start_step
        while step < total_steps:
            epoch, first = divmod(step, self.steps_per_epoch)
            perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.rows))
            mine = perm[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            for b in range(first, self.steps_per_epoch):
                if step >= total_steps:
                    return
                idx = mine[b * self.batch : (b + 1) * self.batch]
                if with_rows:
                    yield epoch, self.pixels[idx], self.embeddings[idx], idx
                else:
                    yield epoch, self.pixels[idx], self.embeddings[idx]
                step += 1

    def close(self) -> None:
        pass


class StreamSource:
    """Streams this rank's rows of the cache from any fsspec URL with a prefetch thread.

    ``wait_s`` accumulates the seconds the training step spent blocked on the next batch."""

    kind = "stream"

    def __init__(
        self,
        reader: CacheReader,
        rank: int,
        world: int,
        batch_size: int,
        seed: int,
        shuffle_buffer: int = 2048,
        prefetch_batches: int = 4,
    ):
        self.reader = reader
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_buffer, self.prefetch = shuffle_buffer, max(1, prefetch_batches)
        self.shards = shard_rows(reader)
        self.per_rank, self.batch, self.steps_per_epoch = batch_geometry(
            len(reader), world, batch_size
        )
        self.ipc = reader.layout.images_per_shard
        self.wait_s = 0.0
        self.read_s = 0.0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def order(self, epoch: int) -> np.ndarray:
        rows = epoch_order(
            self.shards, self.seed, epoch, self.rank, self.world, self.shuffle_buffer
        )
        return rows[: self.steps_per_epoch * self.batch]

    def _produce(self, start_step: int, total_steps: int, out: queue.Queue, stop: threading.Event):
        try:
            step = start_step
            while step < total_steps and not stop.is_set():
                epoch, first = divmod(step, self.steps_per_epoch)
                n = min(self.steps_per_epoch - first, total_steps - step)
                for batch in self._epoch_batches(epoch, first, n):
                    while not stop.is_set():
                        try:
                            out.put((epoch, *batch), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                step += n
            out.put(None)
        except BaseException as exc:  # handed to the training thread, which raises it
            out.put(exc)

    def _epoch_batches(self, epoch: int, first: int, n: int) -> Iterator[Batch]:
        """Batches ``first .. first + n - 1`` of ``epoch``; each shard's rows are read once."""
        todo = self.order(epoch)[first * self.batch : (first + n) * self.batch]
        shard_of = todo // self.ipc
        by_shard = {int(s): np.sort(todo[shard_of == s]) for s in np.unique(shard_of)}
        loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for b in range(n):
            idx = todo[b * self.batch : (b + 1) * self.batch]
            for s in {int(r) // self.ipc for r in idx}:
                if s in by_shard:  # the first row needed from this shard: read its rows
                    rows = by_shard.pop(s)
                    t0 = time.perf_counter()
                    px, emb = self.reader.read_rows(rows)
                    self.read_s += time.perf_counter() - t0
                    for k, r in enumerate(rows):
                        loaded[int(r)] = (px[k], emb[k])
            items = [loaded.pop(int(r)) for r in idx]
            yield np.stack([p for p, _ in items]), np.stack([e for _, e in items])

    def run(
        self, start_step: int, total_steps: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(epoch, pixels, embeddings)`` for steps ``start_step .. total_steps - 1``, read
        ahead by a background thread across epoch boundaries."""
        self.close()
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._produce,
            args=(start_step, total_steps, out, stop),
            daemon=True,
            name="cache-reader",
        )
        self._stop, self._thread = stop, thread
        thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = out.get()
                self.wait_s += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError(f"reading the teacher cache failed: {item}") from item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._stop = self._thread = None


def make_source(
    kind: str,
    reader: CacheReader,
    rank: int,
    world: int,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    prefetch_batches: int,
) -> MemorySource | StreamSource:
    """The batch source for ``train.reader`` already resolved to ``memory`` or ``stream``."""
    if kind == "memory":
        return MemorySource(reader, rank, world, batch_size, seed)
    return StreamSource(reader, rank, world, batch_size, seed, shuffle_buffer, prefetch_batches)


def partial_center_sum(
    reader: CacheReader,
    rank: int,
    world: int,
    view_idx: list[int] | None,
    normalize: bool = True,
) -> tuple[np.ndarray, int]:
    """(float64 sum, count) of the (L2-normalised) teacher embeddings in shards ``rank::world``.

    Ranks sum disjoint shards and all-reduce, so the dataset-mean target centre costs one
    streaming pass split over the workers and is the same on every rank."""
    total: np.ndarray | None = None
    count = 0
    layout = reader.layout
    for s, rows in enumerate(shard_rows(reader)):
        if s % world != rank or len(rows) == 0:
            continue
        a, b = layout.shard_rows(s)
        emb = np.asarray(reader.embeddings[a:b])[rows - a].astype(np.float32)
        if view_idx is not None:
            emb = emb[:, view_idx]
        emb = emb.reshape(-1, emb.shape[-1])
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        part = emb.sum(0, dtype=np.float64)
        total = part if total is None else total + part
        count += emb.shape[0]
    if total is None:
        total = np.zeros(layout.embed_dim, np.float64)
    return total, count
