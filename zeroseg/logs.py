"""Quiet third-party logs, so a run prints its own progress and results.

open_clip logs through the root logger: an INFO line for every step of building a model or a
tokenizer ("Loaded built-in ... model config", "Loading full pretrained weights ..."), and the
warning "No pretrained weights loaded for model ... Model initialized randomly" each time a model
is built without weights, which is how the toy teacher's training and the student's teacher stem
build theirs before loading the weights themselves. Ray workers log the root logger at INFO, so
every extract actor and training worker printed a dozen such lines.

:func:`quiet_third_party_logs` (called when :mod:`zeroseg.teacher` is imported, in the driver
and in every Ray worker that builds a model) drops those records below ERROR; errors always
pass. Verbose mode brings them back: ``ZEROSEG_VERBOSE=1`` in the environment (``zeroseg
--verbose`` sets it before Ray starts, so local Ray workers inherit it) or
:func:`set_verbose`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from functools import cache

VERBOSE_ENV = "ZEROSEG_VERBOSE"
# Packages whose log records below ERROR are dropped unless verbose.
QUIETED_PACKAGES = ("open_clip",)
# Ray's Python loggers whose records below ERROR say nothing a zeroseg user acts on: the notice
# that a local Ray enabled token authentication, Ray Data's "progress bars disabled" (we draw
# our own), Ray Data's "Dataset ... execution finished in N seconds" (our extract summary says
# it with numbers), and Ray Train's "Reporting training result ..." at every checkpoint (we log
# ours).
QUIETED_LOGGERS = (
    "ray._private.authentication.authentication_token_setup",
    "ray.data._internal.progress",
    "ray.data._internal.execution.streaming_executor",
)
# Loggers named by their module's file path (``logging.getLogger(__file__)``): package, file
QUIETED_FILE_LOGGERS = (("ray", "train/v2/_internal/execution/context.py"),)


def verbose() -> bool:
    """Whether third-party log records are let through (``ZEROSEG_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    """Let third-party log records through (or not) in this process and in processes it starts
    afterwards (the environment carries the setting)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


@cache
def _package_dirs() -> tuple[str, ...]:
    dirs = []
    for name in QUIETED_PACKAGES:
        spec = importlib.util.find_spec(name)
        for d in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.realpath(d), ""))
    return tuple(dirs)


def from_quieted_package(record: logging.LogRecord) -> bool:
    """The record was logged from one of the quieted packages' files."""
    path = os.path.realpath(record.pathname)
    return any(path.startswith(d) for d in _package_dirs())


class QuietThirdParty(logging.Filter):
    """Drops quieted packages' records below ERROR unless :func:`verbose`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or verbose():
            return True
        return not from_quieted_package(record)


_FILTER = QuietThirdParty()


def quiet_named_loggers() -> None:
    """Raise :data:`QUIETED_LOGGERS` to ERROR, or back to their default in verbose mode. Called
    where Ray is started and in each training worker (the loggers live per process)."""
    level = logging.NOTSET if verbose() else logging.ERROR
    for name in quieted_logger_names():
        logging.getLogger(name).setLevel(level)


def quieted_logger_names() -> list[str]:
    """:data:`QUIETED_LOGGERS` plus the path-named ones of packages already imported (a
    package not imported yet has logged nothing; importing it here would pull Ray into the
    library)."""
    names = list(QUIETED_LOGGERS)
    for package, relative in QUIETED_FILE_LOGGERS:
        module = sys.modules.get(package)
        if module is not None and getattr(module, "__file__", None):
            names.append(os.path.join(os.path.dirname(module.__file__), relative))
    return names


def quiet_third_party_logs() -> None:
    """Install the filter (once) on the root logger, which open_clip logs through. A logger's
    filters see only the records logged on that logger itself, so records other loggers
    propagate to the root's handlers are not touched."""
    root = logging.getLogger()
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)
