"""Connecting to Ray: a local instance on a laptop, an existing cluster when configured."""

from __future__ import annotations

import logging
import os

from zeroseg.config import Config
from zeroseg.logs import quiet_named_loggers


def ensure_ray(cfg: Config) -> None:
    """Start or join Ray once per process, quietly."""
    import ray

    if ray.is_initialized():
        return
    quiet_named_loggers()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # The dashboard serves Ray's state API, which Ray Train's controller polls. A local
        # node offers extract.resource_label itself, so a config pinned to an extraction
        # worker group also runs on a laptop.
        label = cfg.extract.resource_label
        ray.init(
            num_cpus=cfg.ray.num_cpus or None,
            resources={label: 1.0} if label else None,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            **kwargs,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
