"""``zeroseg segment`` on a batch: folders, globs, a classes file, and bad images that are
recorded without stopping the batch (real tiny student and toy CLIP, random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.segment import expand_inputs, output_names, parse_classes
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
    # a file the glob matched that is not an image is listed, not silently dropped
    assert f"skipping {tmp_path / 'a' / 'notes.txt'}: unsupported_format (.txt)" in summary
    assert "skipped 1 file(s) that are not images" in summary
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped == {str(tmp_path / "a" / "notes.txt"): "unsupported_format (.txt)"}


def test_segment_never_overwrites_one_output_with_another(tmp_path, capsys):
    """Same file names in two folders, one stem in two formats, a GIF inside a folder: one
    output each, and the count printed is the count written."""
    final = write_random_checkpoint(str(tmp_path / "final"))
    rng = np.random.default_rng(1)
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(
            tmp_path / "in" / sub / "x.png"
        )
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(tmp_path / "in" / "x.jpg")
    Image.fromarray(rng.integers(0, 255, (24, 24), np.uint8), mode="L").save(
        tmp_path / "in" / "a" / "anim.gif"
    )
    out = tmp_path / "out"
    common = ["--classes", "circle", "--checkpoint", final, "--device", "cpu"]
    assert main(["segment", str(tmp_path / "in"), "-o", str(out), *common]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a__x.png", "anim.png", "b__x.png", "in__x.png"]
    assert "wrote 4 overlay(s)" in capsys.readouterr().out
    # an output path that is a file is refused before any work, with the path named
    (tmp_path / "taken.png").write_bytes(b"x")
    assert main(["segment", str(tmp_path / "in"), "-o", str(tmp_path / "taken.png"), *common])
    assert "taken.png is a file" in capsys.readouterr().err
    assert (tmp_path / "taken.png").read_bytes() == b"x"


def test_output_names_keep_just_enough_of_the_path():
    assert output_names(["/d/a/x.png", "/d/b/x.png", "/d/y.png"]) == {
        "/d/a/x.png": "a__x",
        "/d/b/x.png": "b__x",
        "/d/y.png": "y",
    }
    assert output_names(["/d/x.png", "/d/x.jpg"]) == {"/d/x.png": "x_png", "/d/x.jpg": "x_jpg"}
    names = output_names(["/d/x.png", "/d/x.jpg", "/d/x_png.png"])
    assert len(set(names.values())) == 3


def test_class_names_and_inputs_errors(tmp_path):
    assert parse_classes("cat, sofa,cat", None) == ["cat", "sofa"]
    with pytest.raises(ValueError, match="no class names"):
        parse_classes(" , ", None)
    with pytest.raises(ValueError, match="background"):
        parse_classes("background,cat", None)
    assert expand_inputs([str(tmp_path / "*.jpg")]) == []


def test_segment_with_a_training_free_method_and_no_student(tmp_path, capsys):
    """The same outputs as the student path, from the shipped lab teacher alone; synonyms and
    PAMR on the way."""
    from zeroseg.data.shapes import render_scene

    image = render_scene(np.random.default_rng(3)).image
    Image.fromarray(image).save(tmp_path / "scene.png")
    outputs = {}
    for method, extra in (("naclip", []), ("sclip", ["--pamr"]), ("grid_crop", [])):
        out = tmp_path / method
        rc = main(
            [
                "segment",
                str(tmp_path / "scene.png"),
                "--classes",
                "circle|round disc,square,star",
                "--method",
                method,
                "--teacher",
                "zeroseg-toyclip",
                "--pretrained",
                "shipped",
                "--naclip-sigma",
                "3",
                "-o",
                str(out),
                "--device",
                "cpu",
                "--save-labels",
                *extra,
            ]
        )
        assert rc == 0
        labels = np.load(out / "scene.npy")
        assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2, 3}
        assert (out / "scene.png").is_file() and (out / "scene_labels.png").is_file()
        outputs[method] = labels
        assert f"wrote 1 overlay(s) to {out} ({method}, cpu)" in capsys.readouterr().out
    assert not np.array_equal(outputs["naclip"], outputs["grid_crop"])
    assert main(["segment", str(tmp_path / "scene.png"), "--classes", "star", "-o", "o"]) == 1
    assert "a training-free method" in capsys.readouterr().err  # neither student nor teacher
    empty = ["--classes", "star|", "--method", "naclip", "--teacher", "zeroseg-toyclip"]
    assert main(["segment", str(tmp_path / "scene.png"), *empty, "-o", "o"]) == 1
    assert "empty synonym" in capsys.readouterr().err
