"""docs/interfaces.md follows the code: every name a library section lists exists in its module,
and every call it spells out with parameters names parameters the function really takes."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "interfaces.md"
# a section heading names its module(s): "## zeroseg.models / losses / inference / metrics"
HEADING = re.compile(r"^##+ (?:`)?(zeroseg[\w.]*(?: / \w+)*)", re.M)
# a listed name: `name`, `name(...)`, `Name`, `NAME`, `zeroseg.module.name` (not `.attribute`)
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*[A-Za-z0-9_])")
# where names a section mentions may also come from: Python itself, open_clip and timm
ELSEWHERE = ("builtins", "open_clip", "open_clip.model", "open_clip.timm_model", "timm")


def sections() -> list[tuple[list[str], str]]:
    text = DOC.read_text()
    found = list(HEADING.finditer(text))
    out = []
    for i, m in enumerate(found):
        first, *rest = m.group(1).split(" / ")
        parent = first.rsplit(".", 1)[0] if rest else None
        modules = [first] + [f"{parent}.{r}" for r in rest]
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        body = text[m.end() : end].split("\n## ", 1)[0]
        out.append((modules, body))
    return out


def listed(body: str) -> list[tuple[str, str | None]]:
    """(name, its parenthesised arguments or None) of every backticked name in the section."""
    out = []
    for m in NAME.finditer(body):
        args, end = None, m.end()
        if end < len(body) and body[end] == "(":  # the balanced group right after the name
            depth = 0
            for i in range(end, len(body)):
                depth += {"(": 1, ")": -1}.get(body[i], 0)
                if depth == 0:
                    args = body[end : i + 1]
                    break
        out.append((m.group(1), args))
    return out


def _resolve(modules, name):
    if name.startswith("zeroseg."):  # fully qualified: the module it names
        mod, _, attr = name.rpartition(".")
        try:
            return importlib.import_module(name)
        except ImportError:
            return getattr(importlib.import_module(mod), attr, None)
    if "." in name:
        return True  # `obj.attr`, `file.json`: not a name of the module
    for mod in [*modules, *ELSEWHERE]:
        obj = getattr(importlib.import_module(mod), name, None)
        if obj is not None:
            return obj
    return None


def _parameters(args: str) -> list[str]:
    """Parameter names of a spelled-out call: ``(a, b=1, *, c: int = 2)`` -> [a, b, c]."""
    inner = args[1:-1]
    depth, cur, parts = 0, "", []
    for ch in inner:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    names = []
    for p in parts:
        p = p.strip()
        m = re.match(r"\*{0,2}([A-Za-z_][A-Za-z0-9_]*)\s*(?:[:=]|$)", p)
        if m and p not in ("*", "...") and not p.startswith("..."):
            names.append(m.group(1))
    return names


def documented() -> list[tuple[list[str], str, str | None]]:
    """Every listed name with the modules it may come from: the section's, and for a bullet
    that opens with a module (``- `zeroseg.checkpoint`: ...``) that module first."""
    out = []
    for modules, body in sections():
        for bullet in re.split(r"\n(?=- )", body):
            head = re.match(r"- `(zeroseg[\w.]*)`", bullet)
            mods = [head.group(1), *modules] if head else modules
            out += [(mods, name, args) for name, args in listed(bullet)]
    return out


DOCUMENTED = documented()
# words in backticks that are not names of the module: values, keys, file names, types
NOT_NAMES = {
    "uint8", "float32", "float", "int", "str", "bool", "dict", "list", "tuple", "None", "True",
    "False", "np", "torch", "Tensor", "PIL", "background", "zeroseg", "pretrained", "normalize",
}  # fmt: skip


def test_the_doc_lists_library_modules():
    mods = [m for modules, _ in sections() for m in modules]
    assert "zeroseg.storage" in mods and "zeroseg.segmenter" in mods
    assert len(DOCUMENTED) > 50


@pytest.mark.parametrize(
    ("modules", "name", "args"),
    [d for d in DOCUMENTED if d[2] is not None or d[1][0].isupper() or d[1].startswith("zeroseg.")],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_listed_name_exists_with_its_parameters(modules, name, args):
    if name in NOT_NAMES:
        return
    obj = _resolve(modules, name)
    assert obj is not None, f"docs/interfaces.md lists `{name}` under {modules}; the code has not"
    if args is None or not callable(obj):
        return
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = set(sig.parameters)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for p in _parameters(args):
        assert p in params or takes_kwargs, f"`{name}{args}`: {name} takes no parameter {p!r}"
