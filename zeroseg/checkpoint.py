"""The ``final/`` folder a finished training run leaves, named in one place.

``final/`` holds :data:`WEIGHTS` (safetensors, written last in the folder; the run's marker
and ``_SUCCESS`` follow it) and :data:`CONFIG` (the resolved student config, the teacher it was
distilled from, its views and, when the targets were centred, ``target_center``). The trainer
that writes the folder and every reader (evaluation, ``zeroseg segment``,
:func:`zeroseg.models.create_student`) take the names from here. Light on purpose: importing
it loads neither torch nor the models.
"""

from __future__ import annotations

from typing import Any

from zeroseg import storage

FINAL = "final"  # a run's folder of finished weights
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def final_folder(uri: str) -> str:
    """The ``final/`` folder of ``uri``, which names either the folder or its weights file."""
    uri = storage.normalize(uri)
    if uri.endswith(WEIGHTS):
        uri = uri[: -len(WEIGHTS)].rstrip("/")
    return uri


def read_final_config(uri: str) -> dict[str, Any]:
    """The ``config.json`` of a ``final/`` folder (or of the folder holding its weights)."""
    return storage.read_json(storage.join(final_folder(uri), CONFIG))
