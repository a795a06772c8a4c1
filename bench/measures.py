"""The output format every benchmark shares: one JSON line per measure, printed as it is known,
so a long run that is stopped still leaves the measures it finished."""

from __future__ import annotations

import json
from collections.abc import Callable


def emitter(bench: str) -> Callable[..., None]:
    """``emit(measure, value, goal, unit, **extra)`` printing
    ``{"bench", "measure", "value", "goal", "unit", ...}`` for ``bench``."""

    def emit(measure: str, value: float, goal: float | None, unit: str, **extra) -> None:
        row = {"bench": bench, "measure": measure, "value": round(value, 4), "goal": goal}
        print(json.dumps({**row, "unit": unit, **extra}), flush=True)

    return emit
