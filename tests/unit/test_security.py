"""Checkpoints never unpickle arbitrary objects: every ``torch.load`` in the project's code passes
``weights_only=True`` (safetensors needs no such care)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("zeroseg", "pipeline", "bench", "tests")


def _unsafe_torch_loads(path: Path) -> list[int]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if not (isinstance(fn, ast.Attribute) and fn.attr == "load"):
            continue
        if not (isinstance(fn.value, ast.Name) and fn.value.id == "torch"):
            continue
        safe = any(
            kw.arg == "weights_only"
            and isinstance(kw.value, ast.Constant)
            and kw.value.value is True
            for kw in node.keywords
        )
        if not safe:
            bad.append(node.lineno)
    return bad


def test_every_torch_load_is_weights_only():
    files = [p for d in SOURCES for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50  # the scan really reads the code base
    found = {str(p.relative_to(ROOT)): _unsafe_torch_loads(p) for p in files}
    assert {k: v for k, v in found.items() if v} == {}
    assert sum(1 for p in files if "torch.load(" in p.read_text()) >= 2


def test_the_scan_catches_an_unsafe_load(tmp_path):
    src = tmp_path / "x.py"
    src.write_text(
        "import torch\n"
        "a = torch.load('a.pt', weights_only=True)\n"
        "b = torch.load('b.pt')\n"
        "c = torch.load('c.pt', weights_only=False)\n"
    )
    assert _unsafe_torch_loads(src) == [3, 4]
