"""A folder mixing every kind of odd input with good images: each row is processed correctly or
recorded with a reason, never a crash, never a lost good image."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image

from pipeline.extract import run_extract
from tests.conftest import tiny_overrides
from zeroseg.config import load_config

pytestmark = pytest.mark.integration


def _rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


def _bomb_png() -> bytes:
    """A valid tiny PNG whose header claims 30000 x 30000 pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _write_zoo(folder: str) -> dict[str, str]:
    """file name -> expected status."""
    os.makedirs(folder)
    expected = {}

    def save(name: str, img: Image.Image, fmt: str, status: str = "ok", **kw) -> None:
        img.save(os.path.join(folder, name), fmt, **kw)
        expected[name] = status

    for i in range(4):
        save(f"good_{i}.png", _rgb(48 + 8 * i, 64, i), "PNG")
    save("cmyk.jpg", _rgb(40, 50).convert("CMYK"), "JPEG")
    save("gray.png", _rgb(40, 50).convert("L"), "PNG")
    save("gray16.png", Image.fromarray(np.full((40, 50), 40000, np.uint16)), "PNG")
    save("palette.png", _rgb(40, 50).convert("P"), "PNG")
    save("alpha.png", _rgb(40, 50).convert("RGBA"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", _rgb(30, 60), "JPEG", exif=exif)
    save("tiny.png", _rgb(3, 3), "PNG", status="skipped:too_small")
    raw = {
        "empty.png": (b"", "skipped:empty_file"),
        "text.jpg": (b"this is not an image\n", "skipped:not_an_image"),
        "bomb.png": (_bomb_png(), "skipped:too_large"),
    }
    good = io.BytesIO()
    _rgb(64, 64).save(good, "JPEG")
    raw["truncated.jpg"] = (good.getvalue()[: len(good.getvalue()) // 3], "skipped:corrupt")
    for name, (data, status) in raw.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        expected[name] = status
    return expected


def test_every_odd_input_is_processed_or_recorded(ray_local, tmp_path, teacher_cache):
    expected = _write_zoo(str(tmp_path / "zoo"))
    overrides = tiny_overrides(str(tmp_path / "out"), teacher_cache)
    cfg = load_config("jobs/demo.yaml", [*overrides, f"data.train={tmp_path / 'zoo'}"])
    stage = run_extract(cfg, log=lambda *_: None)
    index = pq.read_table(os.path.join(stage, "index.parquet")).to_pylist()
    got = {os.path.basename(r["key"]): r for r in index}
    assert {k: r["status"] for k, r in got.items()} == expected
    assert (got["rotated.jpg"]["width"], got["rotated.jpg"]["height"]) == (30, 60)
    root = zarr.open_group(os.path.join(stage, "cache.zarr"), mode="r")
    emb = np.asarray(root["embeddings"][:]).astype(np.float32)
    valid = np.asarray(root["valid"][:]).astype(bool)
    for r in index:
        ok = r["status"] == "ok"
        assert valid[r["row"]] == ok
        assert (
            np.linalg.norm(emb[r["row"]], axis=-1).min() > 0.99 if ok else not emb[r["row"]].any()
        )
