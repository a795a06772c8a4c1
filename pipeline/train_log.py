"""Training metrics beside the checkpoints: a JSON-lines log and TensorBoard events.

Rank 0 writes both into the run folder (``<root>/train/<run>/``), which may be on object
storage. TensorBoard writes to a local folder, which is copied to ``<run>/tensorboard/`` at every
checkpoint and at the end; ``metrics.jsonl`` is rewritten from the checkpointed history, so after
a resume it holds exactly the rows of the run that led to the newest weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from zeroseg import storage

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


class MetricsLog:
    """Collects the report rows of rank 0 and mirrors them to the run folder."""

    def __init__(self, run_uri: str, enabled: bool = True):
        self.run_uri = run_uri
        self.enabled = enabled
        self._writer = None
        self._local = None
        self._uploaded: dict[str, int] = {}
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            if storage.is_local(run_uri):
                self._local = storage.join(run_uri, TENSORBOARD)
            else:
                self._local = tempfile.mkdtemp(prefix="zeroseg-tb-")
            self._writer = SummaryWriter(log_dir=self._local)

    def add(self, row: dict[str, Any]) -> None:
        """One report row as TensorBoard scalars (``loss_*`` under ``loss/``)."""
        if self._writer is None:
            return
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            tag = f"loss/{key[5:]}" if key.startswith("loss_") else f"train/{key}"
            self._writer.add_scalar(tag, float(value), step)

    def sync(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` and copy new TensorBoard event bytes to the run folder."""
        if not self.enabled:
            return
        storage.write_text(
            storage.join(self.run_uri, METRICS), "".join(json.dumps(r) + "\n" for r in history)
        )
        if self._writer is None:
            return
        self._writer.flush()
        if storage.is_local(self.run_uri):
            return
        for name in sorted(os.listdir(self._local)):
            path = os.path.join(self._local, name)
            size = os.path.getsize(path)
            if self._uploaded.get(name) != size:
                with open(path, "rb") as f:
                    storage.write_bytes(storage.join(self.run_uri, TENSORBOARD, name), f.read())
                self._uploaded[name] = size

    def close(self, history: list[dict[str, Any]]) -> None:
        self.sync(history)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
