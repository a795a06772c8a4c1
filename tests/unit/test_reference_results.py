"""The recorded reference run (zeroseg/assets/reference_results.json): shipped with the package,
one entry per job naming every method, printed in the results table's ref column, and the same
numbers as the demo table of docs/results.md."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from pipeline.run import format_table
from zeroseg.config import load_config
from zeroseg.predict import METHODS
from zeroseg.reference import ASSET, format_reference, reference_for, reference_results

ROOT = Path(__file__).resolve().parents[2]
DASHES = {"—", "–", "-"}


def test_the_asset_ships_with_the_package():
    asset = ROOT / "zeroseg" / "assets" / ASSET
    assert asset.is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["zeroseg"]
    assert any(fnmatch.fnmatch(f"assets/{ASSET}", p) for p in patterns), patterns
    # read the way an installed package reads it (importlib.resources), not by path
    assert set(reference_results()) >= {"about", "source", "jobs"}


def test_every_job_names_every_method():
    data = reference_results()
    assert {"run", "machine"} <= set(data["source"])
    assert {"demo", "quality"} <= set(data["jobs"])
    for job, entry in data["jobs"].items():
        # keyed by the config's train.name, which is what `zeroseg run` looks up
        assert load_config(ROOT / entry["config"]).train.name == job
        tables = [entry["miou_pct"]]
        if job == "quality":
            tables.append(entry["generalisation_miou_pct"])
        for table in tables:
            assert tuple(table) == METHODS, job
            for value in table.values():
                assert value is None or 0.0 <= value <= 100.0, (job, value)
    assert reference_for("demo") == data["jobs"]["demo"]
    assert reference_for("no-such-job") is None and reference_for(None) is None


def _summary(job: str | None) -> dict:
    miou = dict(zip(METHODS, (0.431, 0.328, 0.35, 0.422, 0.2, 0.3, 0.31, 0.32, 0.114)))
    return {
        "job": job,
        "student": {"miou": miou["student"], "per_class": {"circle": 0.5}, "rule": "prompt"},
        "baselines": {m: {"miou": miou[m], "per_class": {}, "rule": "prompt"} for m in METHODS[1:]},
        "timings_s": {"total": 1.0},
    }


def _row(table: str, method: str) -> list[str]:
    """The method's row of the benchmark table (the lines above its ``ref:`` note)."""
    rows = table.split("\nref: ")[0].splitlines()
    (line,) = [r for r in rows if r.split()[:1] == [method]]
    return line.split()


def test_the_results_table_prints_the_reference_column():
    ref = {"miou_pct": dict(zip(METHODS, (43.0, None, 33.0, 42.2, None, None, None, None, 11.4)))}
    table = format_table(_summary("demo"), reference=ref)
    assert table.splitlines()[0].split()[:3] == ["method", "mIoU", "ref"]
    assert _row(table, "student")[1:3] == ["43.1%", "43.0%"]
    assert _row(table, "grid_crop")[1:3] == ["32.8%", "-"]
    assert _row(table, "multigrid_crop")[1:3] == ["35.0%", "33.0%"]
    assert _row(table, "dense_raw")[1:3] == ["20.0%", "-"]
    assert _row(table, "all_background")[1:3] == ["11.4%", "11.4%"]
    assert "ref: the recorded fresh-clone run of job 'demo'" in table
    unknown = format_table(_summary("my-experiment"))  # looked up in the asset: not there
    assert all(_row(unknown, m)[2] == "-" for m in METHODS)
    assert "no recorded numbers for job 'my-experiment'" in unknown
    assert format_reference(None) == "-" and format_reference(7.25) == "7.2%"


def _docs_table(text: str, job: str) -> dict[str, str]:
    """method -> the mIoU cell of the table right after ``<!-- reference:<job> -->``."""
    marker = f"<!-- reference:{job} -->"
    assert marker in text, f"docs/results.md has no {marker} before the {job} results table"
    rows = []
    for line in text.split(marker, 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert len(rows) > 2, f"no table after {marker}"
    header, body = rows[0], rows[2:]
    (col,) = [i for i, h in enumerate(header) if h.startswith("mIoU")]
    cells: dict[str, str] = {}
    for row in body:
        name = re.match(r"[`*\s]*([a-z_]+)", row[0])
        assert name, f"row {row} names no method"
        assert name.group(1) not in cells, f"{name.group(1)} appears twice after {marker}"
        cells[name.group(1)] = row[col].replace("*", "").replace("%", "").strip()
    return cells


def test_docs_results_demo_table_agrees_with_the_asset():
    cells = _docs_table((ROOT / "docs" / "results.md").read_text(), "demo")
    recorded = reference_results()["jobs"]["demo"]["miou_pct"]
    assert set(cells) == set(recorded), "the docs table and the asset list other methods"
    for method, value in recorded.items():
        if value is None:
            assert cells[method] in DASHES, (
                f"{method}: no recorded number, docs show {cells[method]}"
            )
        else:
            assert cells[method] not in DASHES, f"{method}: recorded {value}, docs show a dash"
            assert float(cells[method]) == pytest.approx(value, abs=0.05), method
