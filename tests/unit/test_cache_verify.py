"""A finished cache checks itself: every kind of stored object (a zarr shard, a marker, the
manifest, the index, ``_SUCCESS``) deleted, truncated or overwritten is found, by the cheap
check (presence and sizes) when the size changes and by the full check (checksums) always.
The cache is written by the stage's own code (arrays, shard writes, markers, finalize) with
made-up embeddings; tests/integration/test_extract_scale.py repairs damage with real reruns."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache import ZARR_NAME, CacheLayout, create_arrays, shard_keys, write_shard
from pipeline.cache_verify import CacheDamaged, require_intact, verify_cache
from pipeline.extract import finalize_extract
from pipeline.runner import StageDir
from zeroseg import storage
from zeroseg.config import load_config

LAYOUT = CacheLayout(num_images=12, num_views=5, embed_dim=8, crop_size=8, images_per_shard=4)


def build_cache(uri: str) -> StageDir:
    stage = StageDir(uri)
    rng = np.random.default_rng(0)
    storage.write_json(stage.path("plan.json"), {"num_shards": LAYOUT.num_shards})
    create_arrays(stage.path(ZARR_NAME), LAYOUT)
    for s in range(LAYOUT.num_shards):
        a, b = LAYOUT.shard_rows(s)
        n = b - a
        emb = rng.standard_normal((n, 5, 8)).astype(np.float32)
        px = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        objects = write_shard(stage.path(ZARR_NAME), LAYOUT, s, emb, px, np.ones(n, np.uint8))
        rows = [
            {"row": r, "key": f"img{r}.png", "width": 8, "height": 8, "status": "ok"}
            for r in range(a, b)
        ]
        stage.write_marker(
            s,
            {
                "shard": s,
                "rows": [a, b],
                "ok": n,
                "skipped": 0,
                "skip_reasons": {},
                "index": rows,
                "objects": objects,
                "seconds": {"total": 0.1},
            },
        )
    finalize_extract(stage, LAYOUT, {}, load_config(None), "fp", 1.0, lambda *_: None, 12)
    stage.mark_success()
    return stage


def _where(kind: str, stage: StageDir) -> str:
    return {
        "chunk": stage.path(ZARR_NAME, shard_keys(LAYOUT, 1)["embeddings"]),
        "marker": stage.marker_uri(1),
        "manifest": stage.path("manifest.json"),
        "index": stage.path("index.parquet"),
        "success": stage.path("_SUCCESS"),
    }[kind]


def _damage(uri: str, how: str) -> None:
    data = storage.read_bytes(uri)
    if how == "delete":
        storage.remove(uri, recursive=False)
    elif how == "truncate":
        storage.write_bytes(uri, data[: len(data) // 2])
    else:  # the same number of bytes, other contents
        storage.write_bytes(uri, bytes(b ^ 0x5A for b in data))


# kind, damage -> (what the cheap check says, what the full check says); None = not damage
EXPECT = {
    ("chunk", "delete"): ("shard 1: embeddings/c/1/0/0 is missing",) * 2,
    ("chunk", "truncate"): ("shard 1: embeddings/c/1/0/0 has",) * 2,
    ("chunk", "corrupt"): (None, "shard 1: embeddings/c/1/0/0 has other contents"),
    ("marker", "delete"): ("shard 1: its marker is missing",) * 2,
    ("marker", "truncate"): ("shard 1: shards/00001.json has",) * 2,
    ("marker", "corrupt"): (None, "shard 1: shards/00001.json has other contents"),
    ("manifest", "delete"): ("manifest.json is missing",) * 2,
    ("manifest", "truncate"): ("manifest.json does not parse",) * 2,
    ("manifest", "corrupt"): ("manifest.json does not parse",) * 2,
    ("index", "delete"): ("index.parquet is missing",) * 2,
    ("index", "truncate"): ("index.parquet has",) * 2,
    ("index", "corrupt"): (None, "index.parquet has other contents"),
    ("success", "delete"): ("_SUCCESS is missing",) * 2,
}


def _s3_root(request, tmp_path) -> str:
    import s3fs

    request.getfixturevalue("s3_server")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists("zeroseg-verify"):
        fs.mkdir("zeroseg-verify")
    return f"s3://zeroseg-verify/{tmp_path.name}"


def test_an_intact_cache_passes_both_checks(tmp_path):
    stage = build_cache(str(tmp_path / "extract" / "fp"))
    for mode in ("sizes", "full"):
        verdict = verify_cache(stage.uri, mode)
        assert verdict.ok and not verdict.unverifiable, verdict.describe()
        # 3 markers + the index + 3 arrays x 3 shards
        assert verdict.checked_objects == 3 + 1 + 9
    require_intact(stage.uri)


@pytest.mark.parametrize("kind, how", sorted(EXPECT))
def test_each_kind_of_damage_is_found(tmp_path, kind, how):
    stage = build_cache(str(tmp_path / "extract" / f"{kind}-{how}"))
    _damage(_where(kind, stage), how)
    for mode, expected in zip(("sizes", "full"), EXPECT[(kind, how)]):
        verdict = verify_cache(stage.uri, mode)
        if expected is None:
            assert verdict.ok, (mode, verdict.describe())
            continue
        assert not verdict.ok and expected in verdict.describe(), (mode, verdict.describe())
    if EXPECT[(kind, how)][0] is not None:  # what training's cheap check refuses
        with pytest.raises(CacheDamaged, match="Rerun the extract stage"):
            require_intact(stage.uri)


def test_damage_on_object_storage_is_found_the_same_way(request, tmp_path):
    """One cache on the S3 server, damaged in several independent places at once."""
    stage = build_cache(storage.join(_s3_root(request, tmp_path), "extract", "fp"))
    assert verify_cache(stage.uri, "full").ok
    _damage(stage.path(ZARR_NAME, shard_keys(LAYOUT, 0)["pixels"]), "truncate")
    _damage(stage.marker_uri(2), "delete")
    _damage(stage.path("index.parquet"), "corrupt")
    cheap = verify_cache(stage.uri, "sizes").describe()
    assert "shard 0: pixels/c/0/0/0/0 has" in cheap and "shard 2: its marker is missing" in cheap
    assert "index.parquet" not in cheap  # same size: only the checksums see it
    assert "index.parquet has other contents" in verify_cache(stage.uri, "full").describe()
    _damage(stage.path("manifest.json"), "delete")
    assert "manifest.json is missing" in verify_cache(stage.uri, "sizes").describe()
    _damage(stage.path("_SUCCESS"), "delete")
    assert "_SUCCESS is missing" in verify_cache(stage.uri, "sizes").describe()


def test_a_shard_of_fill_values_is_recorded_absent(tmp_path):
    """zarr stores no object for a shard whose values are all the fill value (a shard of
    skipped images has an all-zero ``valid``): its record says so, and a check expects none."""
    stage = StageDir(str(tmp_path / "fp"))
    create_arrays(stage.path(ZARR_NAME), LAYOUT)
    objects = write_shard(
        stage.path(ZARR_NAME),
        LAYOUT,
        0,
        np.zeros((4, 5, 8), np.float32),
        np.zeros((4, 8, 8, 3), np.uint8),
        np.zeros(4, np.uint8),
    )
    assert objects == dict.fromkeys(shard_keys(LAYOUT, 0).values())


def test_without_a_manifest_the_markers_still_check_their_objects(tmp_path):
    """A lost manifest does not hide a lost zarr object: the markers know their own shards, so
    one rerun finds (and repairs) both."""
    stage = build_cache(str(tmp_path / "extract" / "fp"))
    _damage(stage.path("manifest.json"), "corrupt")
    _damage(_where("chunk", stage), "delete")
    _damage(stage.marker_uri(2), "truncate")
    text = verify_cache(stage.uri, "sizes").describe()
    assert "manifest.json does not parse" in text
    assert "shard 1: embeddings/c/1/0/0 is missing" in text
    assert "shard 2: its marker does not parse" in text
