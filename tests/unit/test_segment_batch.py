"""``zeroseg segment`` on a batch: folders, globs, a classes file, and bad images that are
recorded without stopping the batch (real tiny student and toy CLIP, random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.segment import expand_inputs, parse_classes
from tests.eval_fixtures import write_random_checkpoint


def test_segment_batch_with_globs_folders_and_failures(tmp_path, capsys):
    final = write_random_checkpoint(str(tmp_path / "final"))
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8)).save(tmp_path / "a" / "x.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), np.uint8)).save(tmp_path / "a" / "y.png")
    Image.new("L", (20, 36), 90).save(tmp_path / "b" / "sub" / "z.png")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\ncircle\nstar, ring\n")
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(tmp_path / "a" / "*.*"),
            str(tmp_path / "b"),
            str(tmp_path / "missing.png"),
            "--classes-file",
            str(classes),
            "--classes",
            "square",
            "--checkpoint",
            final,
            "-o",
            str(out),
            "--background",
            "threshold:0.5",
            "--device",
            "cpu",
            "--readout",
            "segments",
            "--save-labels",
        ]
    )
    assert rc == 1
    for stem, shape in (("x", (40, 56)), ("y", (30, 30)), ("z", (36, 20))):
        labels = np.load(out / f"{stem}.npy")
        assert labels.shape == shape and set(np.unique(labels)) <= set(range(5))
        with Image.open(out / f"{stem}_labels.png") as im:
            assert im.mode == "P" and np.array_equal(np.asarray(im), labels)
        with Image.open(out / f"{stem}.png") as im:  # image + overlay side by side, legend below
            assert im.width > 2 * shape[1] and im.height > shape[0]
    failures = json.loads((out / "failures.json").read_text())
    assert failures == {
        str(tmp_path / "b" / "broken.jpg"): "not_an_image",
        str(tmp_path / "missing.png"): "FileNotFoundError",
    }
    summary = capsys.readouterr().out
    assert "wrote 3 overlay(s)" in summary and "2 image(s) could not be read" in summary
    assert "FileNotFoundError: 1" in summary and "not_an_image: 1" in summary


def test_class_names_and_inputs_errors(tmp_path):
    assert parse_classes("cat, sofa,cat", None) == ["cat", "sofa"]
    with pytest.raises(ValueError, match="no class names"):
        parse_classes(" , ", None)
    with pytest.raises(ValueError, match="background"):
        parse_classes("background,cat", None)
    assert expand_inputs([str(tmp_path / "*.jpg")]) == []
