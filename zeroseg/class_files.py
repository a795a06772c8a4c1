"""Class names with synonyms, one file per benchmark (``protocol_configs/classes/<name>.txt``).

The training-free segmenters' protocol scores a class by the best of several names (CLIP knows
"television" better than "tvmonitor") and replaces the weak "background" prompt by a list of
stuff words. A file holds exactly one line per label, in the benchmark's label order, names
separated by ``;``::

    tv monitor; television; monitor; screen

There are no comments and no blank lines, so line ``k + 1`` is always label ``k`` and an error's
line number points straight at the label. A foreground line starts with the benchmark's own
class name (``check_against`` refuses a file that drifted from its benchmark); line 1, the
background, may start with any stuff word, since "background" itself is the prompt we avoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CLASS_FILE_DIR = Path(__file__).resolve().parent / "protocol_configs" / "classes"


def list_class_files(folder: Path | None = None) -> list[str]:
    """The names ``load_class_file`` accepts (file stems), sorted."""
    return sorted(p.stem for p in Path(folder or CLASS_FILE_DIR).glob("*.txt"))


def load_class_file(
    name: str, class_names: Sequence[str] | None = None, folder: Path | None = None
) -> list[list[str]]:
    """The names of every label, background first, as written in ``<name>.txt``.

    Empty lines, empty names and a name used twice anywhere in the file are refused with the
    file and line, because each would silently merge or shift classes. With ``class_names``
    (a benchmark reader's) the file is also ``check_against`` them. ``folder`` replaces
    ``CLASS_FILE_DIR`` (tests, private class files).
    """
    path = Path(folder or CLASS_FILE_DIR) / f"{name}.txt"
    if not path.is_file():
        raise KeyError(
            f"no class file {name!r} in {path.parent}; known: {list_class_files(folder)}"
        )
    groups: list[list[str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name} line {number}"
        if not line.strip():
            raise ValueError(f"{where}: empty line (every line is one class, in label order)")
        names = [n.strip() for n in line.split(";")]
        if "" in names:
            raise ValueError(f"{where}: an empty name in {line!r}")
        for n in names:
            key = n.lower()
            if key in seen:
                raise ValueError(f"{where}: duplicate name {n!r}, already on line {seen[key]}")
            seen[key] = number
        groups.append(names)
    if class_names is not None:
        check_against(groups, list(class_names), path.name)
    return groups


def _same_class_name(a: str, b: str) -> bool:
    """Case-, space-, '_'- and '-'-insensitive, so "tv monitor" stands for "tvmonitor"."""

    def norm(s: str) -> str:
        return "".join(c for c in s.lower() if c not in " _-")

    return norm(a) == norm(b)


def check_against(names: list[list[str]], class_names: list[str], file: str) -> None:
    """Refuse a class file that does not label the benchmark's classes in the benchmark's order.

    Every line's first name must be its class's benchmark name, compared ignoring case, spaces,
    underscores and hyphens (the file may spell "tvmonitor" as the better prompt "tv monitor").
    Line 1 is exempt when the benchmark's label 0 is "background": its first name is a stuff
    word. ``file`` only names the file in the error.
    """
    for i, (group, want) in enumerate(zip(names, class_names)):
        if i == 0 and want.lower() == "background":
            continue
        if not group or not _same_class_name(group[0], want):
            got = group[0] if group else None
            raise ValueError(
                f"{file} line {i + 1}: label {i} is {want!r}, the line starts with {got!r}"
            )
    if len(names) != len(class_names):
        first = min(len(names), len(class_names)) + 1
        raise ValueError(
            f"{file} line {first}: the file has {len(names)} classes, the benchmark "
            f"{len(class_names)}"
        )


def flatten(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Every name in file order, and per name the index of its class.

    A caller embeds all names in one batch, then takes the max over each class's names
    (e.g. ``scatter_reduce(..., "amax")`` over the returned indices).
    """
    flat: list[str] = []
    owner: list[int] = []
    for k, group in enumerate(groups):
        flat.extend(group)
        owner.extend([k] * len(group))
    return flat, owner
