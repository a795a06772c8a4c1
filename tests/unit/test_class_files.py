"""The shipped synonym files fit their benchmarks; damaged files are refused by name."""

import pytest

from zeroseg.benchmarks import COCO_OBJECT_CLASSES, CONTEXT_CLASSES, VOC_CLASSES
from zeroseg.class_files import (
    CLASS_FILE_DIR,
    check_against,
    flatten,
    list_class_files,
    load_class_file,
)

SHIPPED = {"voc21": VOC_CLASSES, "context60": CONTEXT_CLASSES, "coco_object": COCO_OBJECT_CLASSES}


def test_every_file_is_shipped_and_listed():
    assert list_class_files() == sorted(SHIPPED)
    assert all((CLASS_FILE_DIR / f"{n}.txt").is_file() for n in SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_files_fit_their_benchmark(name):
    classes = list(SHIPPED[name])
    groups = load_class_file(name)
    check_against(groups, classes, f"{name}.txt")
    assert load_class_file(name, classes) == groups
    assert len(groups) == len(classes)
    background, foreground = groups[0], groups[1:]
    assert len(background) >= 15
    assert "background" not in {n.lower() for n in background}
    fg = {n.lower() for names in foreground for n in names}
    assert not fg & {n.lower() for n in background}
    # the benchmark's own names are never background words either
    assert not {c.lower() for c in classes[1:]} & {n.lower() for n in background}
    every = [n.lower() for names in groups for n in names]
    assert len(every) == len(set(every)), "a name repeats across lines"
    assert all(n == n.strip() and n == n.lower() for n in every)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_flatten_round_trips(name):
    groups = load_class_file(name)
    flat, owner = flatten(groups)
    assert len(flat) == len(owner) == sum(map(len, groups))
    assert owner == sorted(owner) and set(owner) == set(range(len(groups)))
    rebuilt = [[n for n, k in zip(flat, owner) if k == c] for c in range(len(groups))]
    assert rebuilt == groups
    assert flatten([["a", "b"], ["c"]]) == (["a", "b", "c"], [0, 0, 1])


def test_unknown_file_lists_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="voc21"):
        load_class_file("voc")
    (tmp_path / "mine.txt").write_text("sky\ncat\n")
    with pytest.raises(KeyError, match="'nope'.*mine"):
        load_class_file("nope", folder=tmp_path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("sky; wall\n\ncat\n", "bad.txt line 2: empty line"),
        ("sky; wall\n   \n", "bad.txt line 2: empty line"),
        ("sky\ncat; ; kitten\n", "bad.txt line 2: an empty name"),
        ("sky\ncat;\n", "bad.txt line 2: an empty name"),
        ("sky; wall\ncat; Sky\n", "bad.txt line 2: duplicate name 'Sky', already on line 1"),
        ("sky\ncat; kitten; cat\n", "bad.txt line 2: duplicate name 'cat', already on line 2"),
    ],
)
def test_damaged_files_name_file_and_line(tmp_path, text, match):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_class_file("bad", folder=tmp_path)


def test_a_file_that_drifted_from_its_benchmark_is_refused(tmp_path):
    (tmp_path / "two.txt").write_text("sky; wall\nTV Monitor; television\n")
    groups = load_class_file("two", folder=tmp_path)
    assert groups == [["sky", "wall"], ["TV Monitor", "television"]]
    # background line may start with anything; spacing / case of the class name is free
    check_against(groups, ["background", "tvmonitor"], "two.txt")
    assert load_class_file("two", ["background", "tv_monitor"], tmp_path) == groups
    with pytest.raises(ValueError, match="two.txt line 2: label 1 is 'dog'"):
        load_class_file("two", ["background", "dog"], tmp_path)
    with pytest.raises(ValueError, match="two.txt line 3: the file has 2 classes, the bench"):
        load_class_file("two", ["background", "tvmonitor", "dog"], tmp_path)
    with pytest.raises(ValueError, match="two.txt line 2: the file has 2 classes, the bench"):
        check_against(groups, ["background"], "two.txt")
    # label 0 is only exempt when the benchmark calls it background
    with pytest.raises(ValueError, match="two.txt line 1: label 0 is 'cat'"):
        check_against(groups, ["cat", "tvmonitor"], "two.txt")
