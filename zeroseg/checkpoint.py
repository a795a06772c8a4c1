"""The ``final/`` folder a finished training run leaves, named in one place.

``final/`` holds :data:`WEIGHTS` (safetensors, written last in the folder; the run's marker
and ``_SUCCESS`` follow it) and :data:`CONFIG` (the resolved student config, the teacher it was
distilled from, its views and, when the targets were centred, ``target_center``). The trainer
that writes the folder and every reader (evaluation, ``zeroseg segment``,
:func:`zeroseg.models.create_student`) take the names from here. Light on purpose: importing
it loads neither torch nor the models.
"""

from __future__ import annotations

import io
import json
import struct
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


class BadCheckpoint(ValueError):
    """Weights that are missing, truncated or not a safetensors file."""


MAX_HEADER = 100 << 20  # a safetensors header is JSON of tensor names and shapes: small


def check_weights(uri: str) -> dict[str, Any]:
    """The safetensors header of a ``final/`` folder's weights (or of a weights file), read
    from its first bytes only, so a damaged checkpoint is refused with its path and the reason
    before any model is built or any cluster work starts."""
    weights = storage.join(final_folder(uri), WEIGHTS)
    try:
        fs, path = storage.fs_and_path(weights)
        size = fs.size(path)
        with fs.open(path, "rb") as f:
            return _header(f.read, size, weights)
    except FileNotFoundError:
        raise BadCheckpoint(f"{weights} does not exist") from None


def check_weight_bytes(data: bytes, where: str) -> dict[str, Any]:
    """:func:`check_weights` on weights already read (one read of the file, not two)."""
    view = io.BytesIO(data)
    return _header(view.read, len(data), where)


def _header(read, size: int, where: str) -> dict[str, Any]:
    """Parse and check a safetensors header through ``read`` (file positioned at 0)."""
    head = read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 2 <= n <= min(MAX_HEADER, size - 8):
        raise BadCheckpoint(
            f"{where} is not a safetensors checkpoint (no valid header; {size} bytes): damaged, "
            "truncated or another format"
        )
    try:
        header = json.loads(read(n))
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BadCheckpoint(f"{where} is not a safetensors checkpoint ({exc!r})") from None
    if 8 + n + end > size:
        raise BadCheckpoint(
            f"{where} is truncated: its header describes {8 + n + end} bytes, the file has {size}"
        )
    return header
