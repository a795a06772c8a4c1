"""Training-free methods in the harness: method lists, synonyms, rules and protocol families."""

import numpy as np
import pytest
import torch

from pipeline.evaluate import eval_methods, protocol
from zeroseg.class_files import load_class_file
from zeroseg.config import BASELINE_METHODS, ConfigError, load_config
from zeroseg.predict import (
    apply_rule,
    baselines_for,
    dense_cosines,
    group_max,
    parse_rule,
    text_query,
)
from zeroseg.protocols import FAMILIES, load_protocol, protocol_file, template_set
from zeroseg.teacher import Teacher


def test_group_max_takes_each_class_best_name():
    cos = torch.tensor([[[0.1]], [[0.4]], [[0.3]], [[0.9]], [[-0.2]]])  # 5 names, 1 pixel
    out = group_max(cos, [0, 0, 1, 1, 2])
    assert out.shape == (3, 1, 1)
    assert out[:, 0, 0].tolist() == pytest.approx([0.4, 0.9, -0.2])
    assert group_max(cos, None) is cos
    with pytest.raises(ValueError, match="group"):
        group_max(cos, [0, 1])


def test_argmax_rule_keeps_confident_pixels_and_backgrounds_the_rest():
    # pixel 0: class 1 wins clearly; pixel 1: a near tie between all rows; pixel 2: background
    cos = torch.tensor([[0.0, 0.30, 0.9], [0.5, 0.31, 0.1], [0.1, 0.30, 0.2]])[:, None, :]
    assert parse_rule("argmax:0.5") == ("argmax", 0.5)
    labels = apply_rule(cos, "argmax:0.5", (1, 3), scale=40.0)
    assert labels.tolist() == [[1, 0, 0]]
    assert apply_rule(cos, "argmax:0.0", (1, 3), scale=40.0).tolist() == [[1, 1, 0]]
    with pytest.raises(ValueError, match="argmax"):
        parse_rule("argmax:")


@pytest.fixture(scope="module")
def lab_teacher():
    return Teacher("zeroseg-toyclip", "shipped")


def test_synonyms_score_the_max_over_their_names(lab_teacher):
    templates = ["a photo of a {}."]
    emb, groups = text_query(lab_teacher, ["circle", ["square", "star"]], templates)
    assert emb.shape[0] == 4 and groups == [0, 1, 2, 2]
    plain, none = text_query(lab_teacher, ["circle", "square"], templates)
    assert none is None and plain.shape[0] == 3
    stuff, g = text_query(lab_teacher, ["circle"], templates, background=["wall", "sky"])
    assert g == [0, 0, 1]
    with pytest.raises(ValueError, match="no names"):
        text_query(lab_teacher, ["circle", []], templates)


def test_dense_windows_cover_the_image_and_match_one_window(lab_teacher):
    image = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    text = lab_teacher.encode_text(["background", "circle"], ["a photo of a {}."])
    for mode in lab_teacher.dense_modes:
        whole = dense_cosines(lab_teacher, image, text, mode=mode)
        slid = dense_cosines(lab_teacher, image, text, mode=mode, windows=(64, 64, 32))
        assert whole.shape == slid.shape == (2, 48, 80), mode
        assert not torch.allclose(whole, slid)
    # a square image as large as one window: sliding is the single-window read-out
    square = image[:48, :48]
    one = dense_cosines(lab_teacher, square, text, input_size=64, mode="naclip")
    slid = dense_cosines(lab_teacher, square, text, mode="naclip", windows=(64, 64, 32))
    torch.testing.assert_close(one, slid, atol=1e-4, rtol=1e-4)


def test_the_baselines_follow_the_teacher():
    vit = load_config("jobs/demo.yaml")
    assert eval_methods(vit) == ["student", *BASELINE_METHODS]
    cnn = load_config("jobs/demo.yaml", ["teacher.model=zeroseg-toyclip-cnn"])
    methods = eval_methods(cnn)
    assert "sclip" not in methods and "maskclip_dense" in methods and "grid_crop" in methods
    assert baselines_for(("value", "raw")) == tuple(m for m in methods if m != "student")
    chosen = load_config("jobs/demo.yaml", ["eval.baselines=[naclip,all_background]"])
    assert eval_methods(chosen) == ["student", "naclip", "all_background"]
    wrong = load_config(
        "jobs/demo.yaml", ["teacher.model=zeroseg-toyclip-cnn", "eval.baselines=[sclip]"]
    )
    with pytest.raises(ConfigError, match="eval.baselines.*ViT"):
        eval_methods(wrong)


@pytest.mark.parametrize(
    "override, key",
    [
        ("eval.baselines=[segformer]", "eval.baselines"),
        ("eval.baselines=[sclip,sclip]", "eval.baselines"),
        ("eval.naclip_sigma=0", "eval.naclip_sigma"),
        ("eval.protocol=nope", "eval.protocol"),
        ("eval.protocol=sclip", "eval.protocol.*shapes_sclip"),
        ("eval.background_rules=[argmax:1.5]", "eval.background_rules"),
    ],
)
def test_bad_training_free_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("jobs/demo.yaml", [override])


def test_protocol_families_resolve_per_benchmark():
    assert FAMILIES == ("paper", "sclip")
    assert protocol_file("", "voc") == protocol_file("paper", "voc") == "voc"
    assert protocol_file("sclip", "context") == "context_sclip"
    assert protocol_file("voc_sclip", "voc") == "voc_sclip"
    for bench, classes, scale in (
        ("voc", 21, 40.0),
        ("context", 60, 50.0),
        ("coco_object", 81, 50.0),
    ):
        p = load_protocol(protocol_file("sclip", bench))
        assert (p.short_side, p.window, p.stride) == (336, 224, 112)
        assert p.family == "sclip" and p.teacher_windows and p.prob_scale == scale
        assert parse_rule(p.background) == ("argmax", 0.1)
        assert p.templates == "openai_imagenet"
        assert len(load_class_file(p.class_file)) == classes
    paper = load_protocol("voc")
    assert paper.family == "paper" and not paper.class_file and not paper.teacher_windows
    templates = template_set("openai_imagenet")
    assert len(templates) == 80 and all("{}" in t for t in templates)
    with pytest.raises(KeyError, match="template set"):
        template_set("nope")


def test_sclip_protocol_is_written_with_its_synonyms_and_templates():
    from zeroseg.benchmarks import VOC_CLASSES

    cfg = load_config(
        "jobs/demo.yaml", ["eval.benchmark=voc", "eval.protocol=sclip", "eval.data_root=/data"]
    )
    proto = protocol(cfg, list(VOC_CLASSES), 64, "voc")
    assert proto["name"] == "voc_sclip" and proto["version"] >= 4
    assert len(proto["templates"]) == 80
    assert len(proto["class_synonyms"]) == 21 and len(proto["class_synonyms"][0]) >= 15
    assert proto["background_prompt"] == proto["class_synonyms"][0]
    assert proto["background_rules"] == ["argmax:0.1"] and proto["teacher_windows"]
    assert proto["methods"][0] == "student" and "naclip" in proto["methods"]
    paper = protocol(load_config("jobs/demo.yaml"), ["background", "circle"], 64, "shapes")
    assert paper["class_synonyms"] is None and paper["background_prompt"] == "background"
