"""The public inference API on real parts: a trained run's ``final/`` folder rebuilt with
``create_student`` (locally and through fsspec), ``load_segmenter`` on it, and the training-free
methods on the packaged toy teacher. Random student weights, nothing trained or downloaded."""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import zeroseg
from tests.eval_fixtures import write_random_checkpoint
from zeroseg.checkpoint import CONFIG, WEIGHTS, final_folder, read_final_config
from zeroseg.models import create_student
from zeroseg.predict import baselines_for, method_cosines, text_embeddings
from zeroseg.teacher import Teacher

CLASSES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def final(tmp_path_factory) -> str:
    return write_random_checkpoint(str(tmp_path_factory.mktemp("run") / "final"))


def _image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def _same_weights(model: torch.nn.Module, weights: str) -> bool:
    saved = load_file(weights)
    state = model.state_dict()
    return saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def test_create_student_rebuilds_the_saved_run(final):
    weights = os.path.join(final, WEIGHTS)
    for uri in (final, final + "/", weights):
        assert final_folder(uri) == final
        model = create_student(pretrained=uri)
        assert not model.training
        assert _same_weights(model, weights)
    assert read_final_config(weights)["student"] == "student-tiny"
    # the architecture given explicitly must agree with the weights
    dim = read_final_config(final)["embed_dim"]
    assert _same_weights(create_student("student-tiny", pretrained=final, embed_dim=dim), weights)
    with pytest.raises(RuntimeError):
        create_student("student-small", pretrained=final)


def test_create_student_fresh_and_its_errors(tmp_path, final):
    dim = read_final_config(final)["embed_dim"]
    fresh = create_student("student-tiny", embed_dim=dim)
    assert fresh.training and fresh.embed_dim == dim
    with pytest.raises(ValueError, match="embed_dim"):
        create_student("student-tiny")
    # a bare weights file needs the architecture, since no config.json says what it is
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / WEIGHTS).write_bytes(open(os.path.join(final, WEIGHTS), "rb").read())
    with pytest.raises(FileNotFoundError, match=CONFIG):
        create_student(pretrained=str(bare / WEIGHTS))
    model = create_student("student-tiny", pretrained=str(bare / WEIGHTS), embed_dim=dim)
    assert _same_weights(model, os.path.join(final, WEIGHTS))


def test_create_student_reads_any_fsspec_uri_and_keeps_the_target_center(final):
    cfg = read_final_config(final)
    center = torch.linspace(-1, 1, cfg["embed_dim"])
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/run/final/" + WEIGHTS, open(os.path.join(final, WEIGHTS), "rb").read())
    fs.pipe_file(
        "/run/final/" + CONFIG, json.dumps({**cfg, "target_center": center.tolist()}).encode()
    )
    model = create_student(pretrained="memory://run/final")
    assert _same_weights(model, os.path.join(final, WEIGHTS))
    assert torch.allclose(model.target_center, center)


@pytest.mark.parametrize("form", ["flat", "flat with a legacy field", "nested"])
def test_a_saved_architecture_loads_in_either_form(tmp_path, final, form):
    """Runs save the flat dict (earlier ones with fields since dropped); a nested one reads too."""
    from zeroseg.models import nested_student_config, student_config

    arch = student_config("student-tiny")
    arch = {
        "flat": arch,
        "flat with a legacy field": {**arch, "mask_ratio": 0.6},
        "nested": nested_student_config(arch),
    }[form]
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(open(os.path.join(final, WEIGHTS), "rb").read())
    (folder / CONFIG).write_text(json.dumps({**read_final_config(final), "student": arch}))
    model = create_student(pretrained=str(folder))
    assert _same_weights(model, os.path.join(final, WEIGHTS))
    assert model.cfg.to_dict() == student_config("student-tiny")
    image = _image()
    labels = zeroseg.load_segmenter(str(folder)).segment(image, CLASSES)
    assert np.array_equal(labels, zeroseg.load_segmenter(final).segment(image, CLASSES))


def test_load_segmenter_on_a_run_labels_any_image(final):
    seg = zeroseg.load_segmenter(final, device="cpu")
    assert isinstance(seg, zeroseg.Segmenter)
    assert seg.method == "student" and seg.readout == "segments"
    assert seg.size == read_final_config(final)["views"]["crop_size"]
    image = _image()
    labels = seg.segment(image, CLASSES)
    assert labels.shape == (40, 56) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= len(CLASSES)
    # a PIL image (any mode) gives the same labels as its RGB array
    assert np.array_equal(seg.segment(Image.fromarray(image), CLASSES), labels)
    assert seg.segment(Image.fromarray(image).convert("L"), CLASSES).shape == (40, 56)
    # a rule that can never be met leaves every pixel background
    assert not seg.segment(image, CLASSES, background="cosine:2").any()
    with pytest.raises(ValueError, match="background"):
        seg.segment(image, ["background", "circle"])
    with pytest.raises(ValueError, match="uint8"):
        seg.segment(image.astype(np.float32), CLASSES)


def test_segmenter_maps_are_the_prediction_functions_maps(final):
    """Evaluation scores through the segmenter; it must add nothing to the methods' maps."""
    cfg = read_final_config(final)
    seg = zeroseg.load_segmenter(final, size=32, window=32, stride=16, readout="segments")
    student = create_student(pretrained=final)
    teacher = Teacher(cfg["teacher"]["model"], cfg["teacher"]["pretrained"])
    text = text_embeddings(teacher, CLASSES, cfg["templates"])
    assert torch.equal(seg.text_embeddings(CLASSES)[0], text)
    assert seg.text_embeddings(CLASSES)[1] is None  # one name per class
    image = _image(36, 60, seed=1)
    for method in ("student", *baselines_for(teacher.dense_modes)):
        ours = seg.cosines(image, CLASSES, method=method)
        theirs = method_cosines(
            method,
            image,
            text,
            student=student,
            teacher=teacher,
            size=32,
            window=32,
            stride=16,
            readout="segments",
        )
        if theirs is None:
            assert ours is None
        else:
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("method", ["maskclip_dense", "dense_raw", "grid_crop"])
def test_training_free_methods_on_the_shipped_teacher(method):
    seg = zeroseg.load_segmenter(method=method, teacher="zeroseg-toyclip", pretrained="shipped")
    assert seg.student is None and seg.method == method
    labels = seg.segment(_image(48, 64), CLASSES, background="prompt")
    assert labels.shape == (48, 64) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= len(CLASSES)


def test_load_segmenter_explains_what_it_needs(final):
    with pytest.raises(ValueError, match="training-free method"):
        zeroseg.load_segmenter(teacher="zeroseg-toyclip")
    with pytest.raises(ValueError, match="checkpoint"):
        zeroseg.load_segmenter(method="student", teacher="zeroseg-toyclip")
    with pytest.raises(ValueError, match="unknown method"):
        zeroseg.load_segmenter(final, method="magic")
    # a baseline on a run's own teacher does not keep the student
    assert zeroseg.load_segmenter(final, method="grid_crop").student is None
