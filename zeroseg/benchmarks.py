"""Readers for the labeled benchmarks, over any fsspec URL, with a registry by name.

Every reader turns one benchmark's public on-disk layout into the same two things: the ordered
class names (index 0 is the background) and, per sample id, an RGB image with an integer label
map (255 = ignore). Evaluation code then never knows which layout it reads. Construction does no
I/O, so a dry run can describe where a reader would look without the data being present;
``sample_ids()`` checks the layout and fails with the path and the expected layout.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
from PIL import Image

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# The 59 most frequent PASCAL Context classes, in the order of the converted label values 1..59.
CONTEXT_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)

# COCO's 80 thing categories in the order of their category ids; label k = the k-th name.
COCO_OBJECT_CLASSES: tuple[str, ...] = (
    "background",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


class BenchmarkDataError(FileNotFoundError):
    """The data root does not hold the benchmark's layout; the message names path and layout."""


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).copy()


def _decode_labels(data: bytes) -> np.ndarray:
    """Palette / grey PNG -> int64 label values (the palette index, not the colour)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"label PNGs must be palette or L mode, got {im.mode}")
        return np.asarray(im, dtype=np.uint8).astype(np.int64)


class BenchmarkReader:
    """One benchmark split under ``root``; subclasses fill in the layout."""

    name: str = ""
    #: Images in the public split; used by dry runs to count tasks without reading data.
    expected_images: int = 0
    #: The layout below ``root`` in words, quoted by every missing-data error.
    layout: str = ""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root = root.rstrip("/")
        self._options = storage_options or {}
        self._fs_path: tuple[fsspec.AbstractFileSystem, str] | None = None

    # --- file access -------------------------------------------------------------------------
    @property
    def _fs(self) -> fsspec.AbstractFileSystem:
        if self._fs_path is None:
            fs, path = fsspec.core.url_to_fs(self.root, **self._options)
            self._fs_path = (fs, path.rstrip("/"))
        return self._fs_path[0]

    def _path(self, *parts: str) -> str:
        self._fs  # noqa: B018 (resolves the filesystem)
        assert self._fs_path is not None
        return posixpath.join(self._fs_path[1], *parts)

    def _read(self, *parts: str) -> bytes:
        path = self._path(*parts)
        try:
            return self._fs.cat_file(path)
        except FileNotFoundError:
            raise BenchmarkDataError(self._missing(path)) from None

    def _missing(self, path: str) -> str:
        return f"{self.name}: {path} not found; expected under {self.root}: {self.layout}"

    def _require(self, *parts: str) -> str:
        path = self._path(*parts)
        if not self._fs.exists(path):
            raise BenchmarkDataError(self._missing(path))
        return path

    # --- the interface -----------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """Ordered names; index 0 is the background."""
        raise NotImplementedError

    def sample_ids(self) -> list[str]:
        """Every sample of the split in a stable order; checks the layout first."""
        raise NotImplementedError

    def load(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 HxWx3, labels int64 HxW)``; 255 marks pixels that are not scored."""
        raise NotImplementedError

    def locations(self) -> dict[str, str]:
        """What would be read, for dry runs (no I/O)."""
        return {"root": self.root}


class ShapesReader(BenchmarkReader):
    """The synthetic shapes world's labeled split (what ``zeroseg data shapes --labels`` writes)."""

    name = "shapes"
    layout = "images/*.png, masks/*.png (palette: 0 background, 255 ignore), classes.json"

    def class_names(self) -> list[str]:
        return list(json.loads(self._read("classes.json")))

    def sample_ids(self) -> list[str]:
        self._require("classes.json")
        images = self._path("images")
        found = sorted(
            posixpath.relpath(p, images)
            for p in self._fs.find(images)
            if p.lower().endswith(".png")
        )
        if not found:
            raise BenchmarkDataError(self._missing(posixpath.join(images, "*.png")))
        return found

    def load(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        return _decode_rgb(self._read("images", sample_id)), _decode_labels(
            self._read("masks", sample_id)
        )

    def locations(self) -> dict[str, str]:
        return {"images": f"{self.root}/images", "masks": f"{self.root}/masks"}


class _VocStyleReader(BenchmarkReader):
    """JPEG images, palette-PNG labels and a split list file, as in the VOCdevkit layout."""

    classes: tuple[str, ...] = ()
    list_file = ""
    label_dir = ""
    #: The folder below a root that holds VOCdevkit/ (the reader accepts either).
    devkit_dir = ""

    def _base(self) -> str:
        """``root`` when it is the year folder itself, else ``root/VOCdevkit/<year>``."""
        if not hasattr(self, "_base_cache"):
            direct = self._fs.exists(self._path(self.list_file))
            self._base_cache = "" if direct else self.devkit_dir
        return self._base_cache

    def class_names(self) -> list[str]:
        return list(self.classes)

    def sample_ids(self) -> list[str]:
        text = self._read(self._base(), self.list_file).decode()
        ids = [line.split()[0] for line in text.splitlines() if line.strip()]
        if not ids:
            raise BenchmarkDataError(f"{self.name}: {self.list_file} under {self.root} is empty")
        return ids

    def load(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = _decode_rgb(self._read(self._base(), "JPEGImages", f"{sample_id}.jpg"))
        labels = _decode_labels(self._read(self._base(), self.label_dir, f"{sample_id}.png"))
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{self.name} {sample_id}: labels {labels.shape} vs image")
        bad = (labels >= len(self.classes)) & (labels != IGNORE_INDEX)
        if bad.any():
            raise ValueError(
                f"{self.name} {sample_id}: label values {sorted(set(labels[bad].tolist()))[:5]} "
                f"outside 0..{len(self.classes) - 1} and 255"
            )
        return image, labels

    def locations(self) -> dict[str, str]:
        base = f"{self.root}/{self.devkit_dir}"
        return {
            "list": f"{base}/{self.list_file}",
            "images": f"{base}/JPEGImages",
            "labels": f"{base}/{self.label_dir}",
        }


class VocReader(_VocStyleReader):
    """PASCAL VOC 2012 val: 1449 images, 20 classes + background, 255 = boundary / ignore."""

    name = "voc"
    expected_images = 1449
    classes = VOC_CLASSES
    devkit_dir = "VOCdevkit/VOC2012"
    list_file = "ImageSets/Segmentation/val.txt"
    label_dir = "SegmentationClass"
    layout = (
        "VOCdevkit/VOC2012/{ImageSets/Segmentation/val.txt, JPEGImages/<id>.jpg, "
        "SegmentationClass/<id>.png (palette PNG, 0..20, 255 ignore)}"
    )


class ContextReader(_VocStyleReader):
    """PASCAL Context val in the converted-PNG layout: 5105 images, 59 classes + background."""

    name = "context"
    expected_images = 5105
    classes = CONTEXT_CLASSES
    devkit_dir = "VOCdevkit/VOC2010"
    list_file = "ImageSets/SegmentationContext/val.txt"
    label_dir = "SegmentationClassContext"
    layout = (
        "VOCdevkit/VOC2010/{ImageSets/SegmentationContext/val.txt, JPEGImages/<id>.jpg, "
        "SegmentationClassContext/<id>.png (0 background, 1..59 the Context-59 classes, "
        "255 ignore; see docs/benchmarks.md for the conversion)}"
    )


def rasterize_instances(
    annotations: list[dict[str, Any]], height: int, width: int, label_of: Callable[[int], int]
) -> np.ndarray:
    """Instance annotations -> one label map (0 background).

    Instances are painted from the largest area to the smallest, so a small object lying on a
    large one keeps its pixels; crowd regions are painted like any instance of their class.
    Polygons, uncompressed and compressed RLE are decoded by pycocotools.
    """
    from pycocotools import mask as mask_utils

    labels = np.zeros((height, width), np.int64)
    for ann in sorted(annotations, key=lambda a: -float(a.get("area", 0.0))):
        segm = ann.get("segmentation")
        if not segm:
            continue
        if isinstance(segm, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        m = mask_utils.decode(rle).astype(bool)
        if m.shape != (height, width):
            raise ValueError(f"annotation {ann.get('id')}: mask {m.shape} vs {height}x{width}")
        labels[m] = label_of(int(ann["category_id"]))
    return labels


class CocoObjectReader(BenchmarkReader):
    """COCO-Object val2017: 5000 images, 80 thing classes + background, rasterised from the
    instance annotations (every pixel no instance covers is background)."""

    name = "coco_object"
    expected_images = 5000
    annotations_file = "annotations/instances_val2017.json"
    image_dir = "val2017"
    layout = "annotations/instances_val2017.json (COCO instance annotations) and val2017/<file>.jpg"

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        super().__init__(root, storage_options)
        self._index: dict[str, Any] | None = None

    def class_names(self) -> list[str]:
        return list(COCO_OBJECT_CLASSES)

    def _load_index(self) -> dict[str, Any]:
        if self._index is None:
            raw = json.loads(self._read(self.annotations_file))
            position = {name: i for i, name in enumerate(COCO_OBJECT_CLASSES)}
            label_of_id = {}
            for cat in raw.get("categories", []):
                if cat["name"] not in position or cat["name"] == "background":
                    raise ValueError(
                        f"coco_object: category {cat['name']!r} in {self.annotations_file} is "
                        "not one of COCO's 80 thing classes"
                    )
                label_of_id[int(cat["id"])] = position[cat["name"]]
            anns: dict[int, list[dict[str, Any]]] = {}
            for ann in raw.get("annotations", []):
                anns.setdefault(int(ann["image_id"]), []).append(ann)
            images = {str(im["id"]): im for im in raw.get("images", [])}
            self._index = {"images": images, "anns": anns, "label_of_id": label_of_id}
        return self._index

    def sample_ids(self) -> list[str]:
        images = self._load_index()["images"]
        if not images:
            raise BenchmarkDataError(f"coco_object: no images listed in {self.annotations_file}")
        return sorted(images, key=int)

    def load(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        index = self._load_index()
        info = index["images"][sample_id]
        image = _decode_rgb(self._read(self.image_dir, info["file_name"]))
        h, w = int(info["height"]), int(info["width"])
        if image.shape[:2] != (h, w):
            raise ValueError(f"coco_object {sample_id}: image is {image.shape[:2]}, not {h}x{w}")
        lookup = index["label_of_id"]

        def label_of(category_id: int) -> int:
            if category_id not in lookup:
                raise ValueError(f"coco_object: unknown category id {category_id}")
            return lookup[category_id]

        labels = rasterize_instances(index["anns"].get(int(sample_id), []), h, w, label_of)
        return image, labels

    def locations(self) -> dict[str, str]:
        return {
            "annotations": f"{self.root}/{self.annotations_file}",
            "images": f"{self.root}/{self.image_dir}",
        }


BENCHMARKS: dict[str, type[BenchmarkReader]] = {
    r.name: r for r in (ShapesReader, VocReader, ContextReader, CocoObjectReader)
}

#: Where each benchmark sits below a shared data root when no per-benchmark root is given.
DEFAULT_SUBDIRS: dict[str, str] = {"voc": "", "context": "", "coco_object": "coco"}


def benchmark_names() -> list[str]:
    return sorted(BENCHMARKS)


def open_benchmark(
    name: str, root: str, storage_options: dict[str, Any] | None = None
) -> BenchmarkReader:
    """The reader registered as ``name`` over ``root`` (no I/O until it is used)."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {benchmark_names()}")
    return BENCHMARKS[name](root, storage_options)
