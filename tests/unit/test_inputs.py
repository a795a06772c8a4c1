"""Input planning: folders (ImageNet layout), list files (text, Parquet) and tar shards, locally
and on the S3-protocol test server; tar members are fetched with one ranged read."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.inputs import input_kind, plan_inputs, read_input, split_member
from zeroseg import storage


def _png(seed: int, size: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _imagenet(root: str) -> dict[str, bytes]:
    """``train/<wnid>/*.JPEG`` with a non-image file beside the images."""
    files = {}
    for w, wnid in enumerate(("n01440764", "n01443537")):
        for i in range(3):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            files[rel] = _png(10 * w + i)
    for rel, data in files.items():
        storage.write_bytes(storage.join(root, rel), data)
    storage.write_bytes(storage.join(root, "train/LOC_synset_mapping.txt"), b"n01440764 tench\n")
    return files


def test_kind_comes_from_the_uri():
    assert input_kind("s3://b/imgs") == "folder"
    assert input_kind("s3://b/list.TXT") == "list"
    assert input_kind("/data/train.lst") == "list"
    assert input_kind("gs://b/index.parquet") == "parquet"
    assert input_kind("/data/shard-000.tar") == "tar"
    assert split_member("s3://b/s-0.tar#a/b.jpg") == ("s3://b/s-0.tar", "a/b.jpg")
    assert split_member("s3://b/x.jpg") is None


def test_imagenet_folder_is_listed_recursively_and_sorted(tmp_path):
    files = _imagenet(str(tmp_path / "in"))
    plan = plan_inputs(str(tmp_path / "in" / "train"))
    assert plan.kind == "folder" and not plan.has_spans
    assert plan.keys == [str(tmp_path / "in" / rel) for rel in sorted(files)]
    assert read_input(plan.keys[0]) == files[sorted(files)[0]]


def test_text_and_parquet_lists_keep_their_order_and_resolve_relative_entries(tmp_path):
    files = _imagenet(str(tmp_path))
    rels = sorted(files, reverse=True)
    (tmp_path / "list.txt").write_text(
        "# one URI per line\n\n" + "\n".join(rels[:3]) + "\n" + str(tmp_path / rels[3]) + "\n"
    )
    plan = plan_inputs(str(tmp_path / "list.txt"))
    assert plan.kind == "list"
    assert plan.keys == [str(tmp_path / r) for r in rels[:4]]
    pq.write_table(
        pa.table({"uri": rels, "label": list(range(len(rels)))}), tmp_path / "index.parquet"
    )
    plan = plan_inputs(str(tmp_path / "index.parquet"))
    assert plan.kind == "parquet" and plan.keys == [str(tmp_path / r) for r in rels]
    pq.write_table(pa.table({"a": rels, "b": rels}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no 'uri' column .*columns: a, b"):
        plan_inputs(str(tmp_path / "bad.parquet"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_tar_shards_plan_members_and_read_them_by_range(tmp_path, where, request):
    members = {f"{i:06d}.jpg": _png(i) for i in range(4)}
    shard0 = _tar(
        [("000000.jpg", members["000000.jpg"]), ("000000.cls", b"3"), ("000001.jpg", b"")]
        + [("000002.jpg", members["000002.jpg"])]
    )
    shard1 = _tar([("000003.jpg", members["000003.jpg"]), ("sub/", b"")])
    if where == "local":
        root = str(tmp_path / "shards")
    else:
        request.getfixturevalue("s3_server")
        import s3fs

        fs = s3fs.S3FileSystem()
        if not fs.exists("zeroseg-inputs"):
            fs.mkdir("zeroseg-inputs")
        root = "s3://zeroseg-inputs/shards"
    storage.write_bytes(storage.join(root, "train-000001.tar"), shard1)
    storage.write_bytes(storage.join(root, "train-000000.tar"), shard0)
    plan = plan_inputs(root)
    t0, t1 = storage.join(root, "train-000000.tar"), storage.join(root, "train-000001.tar")
    assert plan.kind == "folder" and plan.has_spans
    # tars in sorted order, members in archive order, only image members
    assert plan.keys == [f"{t0}#000000.jpg", f"{t0}#000001.jpg", f"{t0}#000002.jpg"] + [
        f"{t1}#000003.jpg"
    ]
    got = [read_input(k, s) for k, s in zip(plan.keys, plan.spans, strict=True)]
    assert got == [members["000000.jpg"], b"", members["000002.jpg"], members["000003.jpg"]]
    single = plan_inputs(t1)
    assert single.kind == "tar" and single.keys == [f"{t1}#000003.jpg"]
    assert plan_inputs(root) == plan  # deterministic
    # a list may name whole tars and single members
    lst = storage.join(root, "..", "list.txt") if where == "local" else "s3://zeroseg-inputs/l.txt"
    storage.write_text(lst, f"{t1}\n{t0}#000002.jpg\n")
    listed = plan_inputs(lst)
    assert listed.keys == [f"{t1}#000003.jpg", f"{t0}#000002.jpg"]
    assert read_input(listed.keys[1], listed.spans[1]) == members["000002.jpg"]
    storage.write_text(lst, f"{t0}#nope.jpg\n")
    with pytest.raises(ValueError, match="has no image member 'nope.jpg'"):
        plan_inputs(lst)


def test_corrupt_tar_and_empty_inputs_are_named(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="data.train: .*bad.tar is not a readable tar"):
        plan_inputs(str(tmp_path / "bad.tar"))
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(FileNotFoundError, match="no images .* in data.train="):
        plan_inputs(str(tmp_path / "empty"))


def test_student_pretrain_refuses_a_training_set_too_large_to_hold_before_reading_it(tmp_path):
    import numpy as np
    import pytest
    from PIL import Image

    from pipeline.student_pretrain import load_training_images

    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    logs = []
    images = load_training_images(str(tmp_path), 32, log=logs.append)
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    assert "skipped 1 images: {'not_an_image': 1}" in logs[0]
    with pytest.raises(SystemExit, match="4 images at 32 px .* point data.train at a subset"):
        load_training_images(str(tmp_path), 32, max_bytes=4 * 3 * 32 * 32 - 1)
