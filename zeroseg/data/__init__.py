"""Datasets: the synthetic shapes world (and, later, readers for real benchmarks)."""

from zeroseg.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    IGNORE_INDEX,
    SHAPES,
    TRAIN_BACKGROUNDS,
    BenchmarkLayoutError,
    Scene,
    SceneObject,
    WorldSettings,
    caption_for,
    read_benchmark,
    render_scene,
    scene_rng,
    write_split,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "IGNORE_INDEX",
    "SHAPES",
    "TRAIN_BACKGROUNDS",
    "BenchmarkLayoutError",
    "Scene",
    "SceneObject",
    "WorldSettings",
    "caption_for",
    "read_benchmark",
    "render_scene",
    "scene_rng",
    "write_split",
]
