"""Every numeric key of the schema has a range, checked before any work with the key named; the
values that only make sense together (crop, patch grid, levels, background rules) are checked
together."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from zeroseg.config import NUMERIC_RULES, Bound, Config, ConfigError, load_config

JOB = "jobs/demo.yaml"


def numeric_keys(cls: type = Config, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out |= numeric_keys(kind, f"{prefix}{f.name}.")
        elif kind in (int, float):
            out.add(prefix + f.name)
    return out


def test_every_numeric_key_has_a_rule():
    keys = numeric_keys()
    assert sorted(keys - set(NUMERIC_RULES)) == [], "numeric keys without a range rule"
    assert sorted(set(NUMERIC_RULES) - keys) == [], "rules for keys the schema does not have"


def _outside(bound: Bound, integer: bool) -> list[float]:
    """Values just outside the bound (an int key gets int values)."""
    step = 1 if integer else 0.5
    out = []
    if bound.lo is not None:
        out.append(bound.lo if bound.lo_open else bound.lo - step)
    if bound.hi is not None:
        out.append(bound.hi if bound.hi_open else bound.hi + step)
    return out


def _inside(bound: Bound, integer: bool) -> float:
    """A value on the boundary (or just inside an open one)."""
    if bound.lo is not None:
        if not bound.lo_open:
            return bound.lo
        return bound.lo + 1 if integer else bound.lo + 0.25
    return bound.hi if not bound.hi_open else bound.hi - 1


def _fmt(value: float, integer: bool) -> str:
    return str(int(value)) if integer else repr(float(value))


def _is_int(key: str) -> bool:
    section, name = key.split(".")
    cls = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(cls)[name] is int


@pytest.mark.parametrize("key", sorted(NUMERIC_RULES))
def test_a_value_outside_the_range_is_refused_naming_the_key(key):
    bound, integer = NUMERIC_RULES[key], _is_int(key)
    for value in _outside(bound, integer):
        with pytest.raises(ConfigError) as err:
            load_config(JOB, [f"{key}={_fmt(value, integer)}"])
        assert f"{key}: {bound.describe()}" in str(err.value)


# Keys whose boundary value also needs another key to move with it.
COMPANIONS = {
    "views.crop_size": ["views.levels=[1]", "student.overrides.patch_size=1"],
}


@pytest.mark.parametrize("key", sorted(NUMERIC_RULES))
def test_the_boundary_value_itself_is_accepted(key):
    bound, integer = NUMERIC_RULES[key], _is_int(key)
    value = _inside(bound, integer)
    assert bound.holds(value) and math.isfinite(value)
    cfg = load_config(JOB, [f"{key}={_fmt(value, integer)}", *COMPANIONS.get(key, [])])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["views.crop_size=7"], "views.crop_size", "not a multiple of the student's patch size 8"),
        (["views.crop_size=24"], "views.crop_size", "3x3 patch grid, coarser than the finest 4x4"),
        (["views.levels=[1,2,2]"], "views.levels", "lists a level twice"),
        (["views.levels=[2,4]"], "views.levels", "must contain 1"),
        (["train.view_levels=[1,5]"], "train.view_levels", "subset of views.levels"),
        (["extract.redo_shards=[-1]"], "extract.redo_shards", ">= 0"),
        (["extract.min_actors=3", "extract.max_actors=2"], "extract.min_actors", "above"),
        (["eval.background_rules=[threshold:1.5]"], "eval.background_rules", "in [0, 1]"),
        (["eval.background_rules=[cosine:-2]"], "eval.background_rules", "in [-1, 1]"),
        (["eval.background_rules=[threshold:x]"], "eval.background_rules", "bad rule"),
        (["train.epochs=0"], "train.epochs", "must be >= 1"),
        (["train.lr=-1"], "train.lr", "must be > 0"),
    ],
)
def test_values_that_must_agree_are_checked_together(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(JOB, overrides)
    text = str(err.value)
    assert f"{key}:" in text and words in text, text


def test_a_crop_that_fits_the_grid_of_the_levels_training_uses_passes():
    # 24 px at patch 8 is a 3x3 patch grid: too coarse for 4x4 views, fine when training uses
    # only levels 1..3 of the cache
    cfg = load_config(JOB, ["views.crop_size=24", "train.view_levels=[1,2,3]"])
    assert cfg.views.crop_size == 24
