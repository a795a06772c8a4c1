"""Benchmark readers on tiny fixtures written in each benchmark's public layout."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from zeroseg.benchmarks import (
    COCO_OBJECT_CLASSES,
    CONTEXT_CLASSES,
    VOC_CLASSES,
    BenchmarkDataError,
    benchmark_names,
    open_benchmark,
)
from zeroseg.overlay import palette

# COCO's real category ids of its 80 thing classes (ids skip numbers).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _jpeg(path, h, w, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
    Image.fromarray(arr).save(path, quality=95)


def _palette_png(path, labels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([int(v) for v in palette(256).ravel()])
    im.save(path)


def _voc_style(root, year, list_file, label_dir, n_classes):
    base = os.path.join(root, "VOCdevkit", year)
    ids = ["2008_000002", "2008_000009"]
    truth = {}
    for k, sid in enumerate(ids):
        _jpeg(os.path.join(base, "JPEGImages", f"{sid}.jpg"), 12, 16 + 4 * k, k)
        labels = np.zeros((12, 16 + 4 * k), np.uint8)
        labels[2:6, 3:9] = n_classes - 1 - k
        labels[0, :] = 255  # ignore border
        _palette_png(os.path.join(base, label_dir, f"{sid}.png"), labels)
        truth[sid] = labels
    os.makedirs(os.path.join(base, os.path.dirname(list_file)), exist_ok=True)
    with open(os.path.join(base, list_file), "w") as f:
        f.write("\n".join(ids) + "\n")
    return ids, truth


def test_registry_names_and_class_lists():
    assert benchmark_names() == ["coco_object", "context", "shapes", "voc"]
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"
    assert len(CONTEXT_CLASSES) == 60 and CONTEXT_CLASSES[59] == "wood"
    assert len(COCO_OBJECT_CLASSES) == 81 and COCO_OBJECT_CLASSES[80] == "toothbrush"
    assert len(set(CONTEXT_CLASSES)) == 60 and len(set(COCO_OBJECT_CLASSES)) == 81
    with pytest.raises(KeyError, match="known"):
        open_benchmark("imagenet", "/nowhere")


@pytest.mark.parametrize(
    "name,year,list_file,label_dir,n",
    [
        ("voc", "VOC2012", "ImageSets/Segmentation/val.txt", "SegmentationClass", 21),
        (
            "context",
            "VOC2010",
            "ImageSets/SegmentationContext/val.txt",
            "SegmentationClassContext",
            60,
        ),
    ],
)
def test_voc_style_readers(tmp_path, name, year, list_file, label_dir, n):
    ids, truth = _voc_style(str(tmp_path), year, list_file, label_dir, n)
    reader = open_benchmark(name, str(tmp_path))
    assert len(reader.class_names()) == n
    assert reader.sample_ids() == ids
    for sid in ids:
        image, labels = reader.load(sid)
        assert image.dtype == np.uint8 and image.shape == (*truth[sid].shape, 3)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, truth[sid])  # palette index, not colour
    # the year folder itself also works as the root, through a file:// URL
    direct = open_benchmark(name, f"file://{tmp_path}/VOCdevkit/{year}")
    np.testing.assert_array_equal(direct.load(ids[1])[1], truth[ids[1]])


def test_missing_data_names_the_path_and_the_layout(tmp_path):
    for name in ("voc", "context", "coco_object", "shapes"):
        with pytest.raises(BenchmarkDataError) as err:
            open_benchmark(name, str(tmp_path / "empty")).sample_ids()
        assert str(tmp_path / "empty") in str(err.value) and "expected" in str(err.value)
    assert "VOCdevkit/VOC2012" in open_benchmark("voc", "/x").layout


def test_voc_label_out_of_range_is_an_error(tmp_path):
    ids, _ = _voc_style(str(tmp_path), "VOC2012", "ImageSets/Segmentation/val.txt", "S", 21)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    os.rename(base / "S", base / "SegmentationClass")
    _palette_png(str(base / "SegmentationClass" / f"{ids[0]}.png"), np.full((12, 16), 40))
    with pytest.raises(ValueError, match="outside"):
        open_benchmark("voc", str(tmp_path)).load(ids[0])


def test_coco_object_rasterises_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    _jpeg(str(root / "val2017" / "000000000139.jpg"), 20, 30, 0)
    _jpeg(str(root / "val2017" / "000000000285.jpg"), 10, 10, 1)
    big = np.zeros((20, 30), np.uint8)
    big[2:18, 2:28] = 1
    rle = mask_utils.encode(np.asfortranarray(big))
    rle["counts"] = rle["counts"].decode()
    annotations = [
        # a large "dining table" (id 67) given as compressed RLE
        {"id": 1, "image_id": 139, "category_id": 67, "segmentation": rle, "area": 416.0},
        # a small "cup" (id 47) polygon on top of it: must stay visible
        {
            "id": 2,
            "image_id": 139,
            "category_id": 47,
            "segmentation": [[5, 5, 10, 5, 10, 10, 5, 10]],
            "area": 25.0,
        },
        # a "toothbrush" (id 90) as uncompressed RLE, flagged crowd
        {
            "id": 3,
            "image_id": 285,
            "category_id": 90,
            "iscrowd": 1,
            "segmentation": {"size": [10, 10], "counts": [0, 20, 80]},
            "area": 20.0,
        },
    ]
    doc = {
        "images": [
            {"id": 285, "file_name": "000000000285.jpg", "height": 10, "width": 10},
            {"id": 139, "file_name": "000000000139.jpg", "height": 20, "width": 30},
        ],
        "annotations": annotations,
        "categories": [
            {"id": i, "name": n, "supercategory": "x"}
            for i, n in zip(COCO_IDS, COCO_OBJECT_CLASSES[1:])
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    reader = open_benchmark("coco_object", str(root))
    assert len(reader.class_names()) == 81
    assert reader.sample_ids() == ["139", "285"]
    image, labels = reader.load("139")
    assert image.shape == (20, 30, 3)
    table, cup = COCO_OBJECT_CLASSES.index("dining table"), COCO_OBJECT_CLASSES.index("cup")
    assert labels[0, 0] == 0 and labels[15, 20] == table and labels[7, 7] == cup
    assert set(np.unique(labels)) == {0, table, cup}
    _, crowd = reader.load("285")
    # column-major RLE: the first 20 pixels are the first two columns
    assert (crowd[:, :2] == 80).all() and (crowd[:, 2:] == 0).all()
