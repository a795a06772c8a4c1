"""The recorded reference run: what a fresh clone's ``zeroseg run`` scored, per job.

``zeroseg/assets/reference_results.json`` (shipped with the package) holds, for each job name
(the config's ``train.name``), the mIoU in percent of every method on the benchmark and, where
the job has one, on the generalisation split, plus where the numbers come from. The results
table printed by ``zeroseg run`` puts them beside a new run's, so a newcomer sees at once how
far a run is from the recorded one. A value of ``null`` means not recorded yet.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

ASSET = "reference_results.json"


def reference_results() -> dict[str, Any]:
    """The whole asset: ``about``, ``source`` (run, machine, code, date) and ``jobs``."""
    text = (resources.files("zeroseg") / "assets" / ASSET).read_text(encoding="utf-8")
    return json.loads(text)


def reference_for(job: str | None) -> dict[str, Any] | None:
    """One job's entry (``miou_pct``, maybe ``generalisation_miou_pct``); None if unknown."""
    if not job:
        return None
    return reference_results()["jobs"].get(job)


def format_reference(value: float | None) -> str:
    """``43.0%`` for a recorded value, ``-`` when there is none."""
    return "-" if value is None else f"{value:.1f}%"
