"""The streaming cache reader: seeded shard order, disjoint ranks, resumable order, prefetch,
and the manifest check (real Zarr v3 caches on disk and on an S3-protocol server)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache import CacheReader
from pipeline.cache_stream import (
    MemorySource,
    StreamSource,
    check_manifest,
    choose_reader,
    epoch_order,
    expected_manifest,
    partial_center_sum,
    shard_rows,
)
from tests.synthetic_cache import write_cache
from zeroseg.config import ConfigError, load_config
from zeroseg.losses import target_center


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("cache") / "extract" / "fp")
    return write_cache(uri, n=70, images_per_shard=8, skipped_rows=(5, 40), unfinished_shards=(3,))


def test_epoch_order_is_seeded_disjoint_and_shuffled(cache):
    shards = shard_rows(CacheReader(cache))
    valid = np.concatenate(shards)
    assert 24 not in valid and 5 not in valid  # unfinished shard 3 and a skipped row
    world = 3
    orders = [epoch_order(shards, 7, 0, r, world, 6) for r in range(world)]
    per_rank = len(valid) // world
    assert all(len(o) == per_rank for o in orders)
    flat = np.concatenate(orders)
    assert len(set(flat.tolist())) == len(flat)  # ranks read disjoint rows
    assert set(flat.tolist()) <= set(valid.tolist())
    # each rank reads a few whole shards, not a sliver of every shard
    assert all(len({int(r) // 8 for r in o}) <= len(shards) // world + 2 for o in orders)
    again = epoch_order(shards, 7, 0, 1, world, 6)
    assert np.array_equal(again, orders[1])
    assert not np.array_equal(epoch_order(shards, 7, 1, 1, world, 6), orders[1])
    assert not np.array_equal(epoch_order(shards, 8, 0, 1, world, 6), orders[1])
    # the shuffle buffer mixes rows across shard boundaries
    block = np.sort(orders[0])
    assert not np.array_equal(orders[0], block)


def _collect(source, start, total):
    return [(epoch, px.copy(), emb.copy()) for epoch, px, emb in source.run(start, total)]


def test_stream_source_follows_the_order_and_resumes_mid_epoch(cache):
    reader = CacheReader(cache)
    src = StreamSource(reader, rank=1, world=2, batch_size=8, seed=3, shuffle_buffer=5)
    assert src.batch == 4 and src.steps_per_epoch == len(reader) // 2 // 4
    total = src.steps_per_epoch * 2 + 3  # crosses two epoch boundaries
    full = _collect(src, 0, total)
    assert len(full) == total
    px_all, emb_all = np.asarray(reader.pixels[:]), np.asarray(reader.embeddings[:])
    for step, (epoch, px, emb) in enumerate(full):
        b = step % src.steps_per_epoch
        rows = src.order(epoch)[b * 4 : (b + 1) * 4]
        assert epoch == step // src.steps_per_epoch
        assert np.array_equal(emb, emb_all[rows])
        assert np.array_equal(px, px_all[rows])
    assert src.wait_s > 0 and src.read_s > 0
    start = src.steps_per_epoch + 2  # a resume part-way through the second epoch
    tail = _collect(
        StreamSource(reader, rank=1, world=2, batch_size=8, seed=3, shuffle_buffer=5),
        start,
        total,
    )
    assert len(tail) == total - start
    for (e1, p1, m1), (e2, p2, m2) in zip(full[start:], tail):
        assert e1 == e2 and np.array_equal(p1, p2) and np.array_equal(m1, m2)


def test_stream_source_stops_early_and_reports_read_errors(cache, tmp_path):
    reader = CacheReader(cache)
    src = StreamSource(reader, 0, 1, 4, 0, shuffle_buffer=4, prefetch_batches=2)
    it = src.run(0, 100)
    next(it)
    it.close()  # leaving early stops the reader thread
    assert src._thread is None
    reader.pixels = None  # a broken store: the error reaches the training thread
    with pytest.raises(RuntimeError, match="reading the teacher cache failed"):
        next(StreamSource(reader, 0, 1, 4, 0).run(0, 3))


def test_memory_source_keeps_the_in_memory_order(cache):
    reader = CacheReader(cache)
    src = MemorySource(reader, rank=0, world=1, batch_size=8, seed=0)
    (epoch, px, emb), *_ = list(src.run(0, 1))
    perm = np.random.default_rng((0, 0)).permutation(len(reader))
    rows = reader.valid_rows[perm[:8]]
    assert epoch == 0 and np.array_equal(emb, np.asarray(reader.embeddings[:])[rows])


def test_center_from_partial_sums_equals_the_dataset_mean(cache):
    reader = CacheReader(cache)
    parts = [partial_center_sum(reader, r, 3, None) for r in range(3)]
    center = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    _, emb = reader.load_all()
    assert np.allclose(center, target_center(emb).numpy(), atol=1e-6)
    sub = [partial_center_sum(reader, 0, 1, [0])]
    assert np.allclose(sub[0][0] / sub[0][1], target_center(emb[:, [0]]).numpy(), atol=1e-6)


def test_reader_choice_by_size(cache):
    reader = CacheReader(cache)
    assert choose_reader("auto", reader, 1024) == "memory"
    assert choose_reader("auto", reader, 0.5) == "stream"  # 62 rows of ~35 KB
    assert choose_reader("memory", reader, 0.0) == "memory"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("views.crop_size=96", "views.crop_size"),
        ("views.levels=[1,2]", "views.levels"),
        ("teacher.model=ViT-B-32", "teacher.model"),
        ("teacher.normalize=false", "teacher.normalize"),
    ],
)
def test_manifest_mismatch_names_the_key(cache, override, key):
    reader = CacheReader(cache)
    check_manifest(reader.manifest, expected_manifest(load_config("jobs/demo.yaml"), 128), cache)
    cfg = load_config("jobs/demo.yaml", [override])
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: the training config"):
        check_manifest(reader.manifest, expected_manifest(cfg, None), cache)


def test_embedding_dim_mismatch_is_refused(cache):
    reader = CacheReader(cache)
    with pytest.raises(ConfigError, match="embedding dim.*expects 768.*made with 128"):
        check_manifest(
            reader.manifest, expected_manifest(load_config("jobs/demo.yaml"), 768), cache
        )


@pytest.mark.integration
def test_stream_from_s3_equals_local(s3_server, cache):
    import s3fs

    fs = s3fs.S3FileSystem()
    if not fs.exists("zeroseg-stream"):
        fs.mkdir("zeroseg-stream")
    uri = write_cache(
        "s3://zeroseg-stream/extract/fp",
        n=70,
        images_per_shard=8,
        skipped_rows=(5, 40),
        unfinished_shards=(3,),
    )
    local, remote = CacheReader(cache), CacheReader(uri)
    assert np.array_equal(local.valid_rows, remote.valid_rows)
    a = _collect(StreamSource(local, 0, 2, 8, 1, 6), 0, 10)
    b = _collect(StreamSource(remote, 0, 2, 8, 1, 6), 0, 10)
    for (e1, p1, m1), (e2, p2, m2) in zip(a, b):
        assert e1 == e2 and np.array_equal(p1, p2) and np.array_equal(m1, m2)
