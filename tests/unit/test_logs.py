"""Third-party log lines stay out of a run's output unless verbose: open_clip narrates every model
it builds, and warns "initialized randomly" right before our code loads the weights itself."""

from __future__ import annotations

import logging

import pytest

from pipeline.cli import main
from zeroseg import logs
from zeroseg.teacher import Teacher
from zeroseg.toy_teacher import build_model


def _build_toy_teachers() -> None:
    Teacher("zeroseg-toyclip", pretrained="shipped")  # the weights the package ships
    build_model()  # random init, as the toy teacher's training starts: open_clip warns


def _open_clip_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if logs.from_quieted_package(r)]


def test_building_the_toy_teacher_logs_nothing_from_open_clip(caplog, monkeypatch):
    monkeypatch.setenv(logs.VERBOSE_ENV, "0")
    caplog.set_level(logging.INFO)  # the level Ray workers log at
    _build_toy_teachers()
    assert _open_clip_records(caplog) == []


def test_verbose_brings_open_clip_lines_back(caplog, monkeypatch):
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    caplog.set_level(logging.INFO)
    _build_toy_teachers()
    records = _open_clip_records(caplog)
    messages = [(r.levelno, r.getMessage()) for r in records]
    assert any(lvl == logging.INFO and "zeroseg-toyclip model config" in m for lvl, m in messages)
    assert any(lvl == logging.INFO and "pretrained weights" in m for lvl, m in messages)
    assert any(lvl == logging.WARNING and "initialized randomly" in m for lvl, m in messages)


@pytest.mark.parametrize(
    ("path", "level", "kept"),
    [
        ("open_clip/factory.py", logging.WARNING, False),
        ("open_clip/factory.py", logging.ERROR, True),  # errors always pass
        ("elsewhere/module.py", logging.INFO, True),  # nobody else's records are touched
    ],
)
def test_only_open_clip_records_below_error_are_dropped(monkeypatch, path, level, kept):
    monkeypatch.setenv(logs.VERBOSE_ENV, "0")
    (package_dir,) = logs._package_dirs()
    if path.startswith("open_clip/"):
        path = package_dir + path.split("/", 1)[1]
    record = logging.LogRecord("root", level, path, 1, "a message", None, None)
    assert logs.QuietThirdParty().filter(record) is kept


def test_cli_verbose_flag_before_or_after_the_command(monkeypatch, tmp_path):
    configured = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: configured.append(kw))
    for argv in (["status", str(tmp_path)], ["--verbose", "status", str(tmp_path)]):
        monkeypatch.setenv(logs.VERBOSE_ENV, "0")
        main(argv)
        assert logs.verbose() == ("--verbose" in argv)
    assert [kw["level"] for kw in configured] == [logging.INFO]
    monkeypatch.setenv(logs.VERBOSE_ENV, "0")
    main(["status", str(tmp_path), "-v"])
    assert logs.verbose()


@pytest.mark.parametrize("verbose_env", ["0", "1"])
def test_rays_chatty_loggers_are_raised_to_error_unless_verbose(monkeypatch, verbose_env):
    """Ray's token-auth notice, Ray Data's "progress bars disabled" and "execution finished",
    and Ray Train's per-report line are dropped in a normal run and come back with --verbose."""
    import ray.data._internal.execution.streaming_executor as data_executor
    import ray.train.v2._internal.execution.context as report_module

    monkeypatch.setenv(logs.VERBOSE_ENV, verbose_env)
    logs.quiet_named_loggers()
    names = logs.quieted_logger_names()
    assert report_module.logger.name in names  # Ray Train names this logger by its file path
    assert data_executor.logger.name in names  # "Dataset ... execution finished in N seconds"
    for name in names:
        logger = logging.getLogger(name)
        assert logger.isEnabledFor(logging.WARNING) is (verbose_env == "1"), name
        assert logger.isEnabledFor(logging.ERROR), name
    monkeypatch.setenv(logs.VERBOSE_ENV, "0")
    logs.quiet_named_loggers()
