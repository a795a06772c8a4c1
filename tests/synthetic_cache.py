"""A finished teacher cache written through the real cache code (Zarr v3, markers, manifest),
with random embeddings: training tests need the format, not a trained teacher's numbers."""

from __future__ import annotations

import numpy as np

from pipeline.cache import ZARR_NAME, CacheLayout, create_arrays, write_shard
from pipeline.runner import StageDir
from zeroseg import storage

LEVELS = [1, 2, 3, 4]


def write_cache(
    uri: str,
    n: int = 48,
    images_per_shard: int = 16,
    embed_dim: int = 128,
    crop_size: int = 64,
    seed: int = 0,
    skipped_rows: tuple[int, ...] = (),
    unfinished_shards: tuple[int, ...] = (),
    model: str = "zeroseg-toyclip",
) -> str:
    """Write ``n`` rows; ``skipped_rows`` are marked invalid and ``unfinished_shards`` get no
    marker (so readers must ignore them). Returns the stage URI."""
    rng = np.random.default_rng(seed)
    layout = CacheLayout(n, 30, embed_dim, crop_size, images_per_shard)
    stage = StageDir(uri)
    create_arrays(stage.path(ZARR_NAME), layout)
    for s in range(layout.num_shards):
        a, b = layout.shard_rows(s)
        emb = rng.standard_normal((b - a, 30, embed_dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
        px = rng.integers(0, 256, (b - a, crop_size, crop_size, 3), dtype=np.uint8)
        valid = np.array([r not in skipped_rows for r in range(a, b)], dtype=np.uint8)
        write_shard(stage.path(ZARR_NAME), layout, s, emb, px, valid)
        if s not in unfinished_shards:
            stage.write_marker(s, {"rows": b - a, "ok": int(valid.sum())})
    storage.write_json(
        stage.path("manifest.json"),
        {
            "stage": "extract",
            "fingerprint": f"synthetic{seed}n{n}",
            "num_images": n,
            "num_views": 30,
            "num_shards": layout.num_shards,
            "images_per_shard": images_per_shard,
            "levels": LEVELS,
            "crop_size": crop_size,
            "teacher": {
                "model": model,
                "pretrained": "synthetic",
                "embed_dim": embed_dim,
                "image_size": crop_size,
                "normalize": True,
            },
        },
    )
    stage.mark_success()
    return storage.normalize(uri)
