import pytest

from pipeline.preflight import PreflightError, preflight
from zeroseg.config import load_config


def test_unwritable_root_and_missing_inputs_are_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = load_config(None, [f"storage.root={blocker}/out"])
    with pytest.raises(PreflightError, match="cannot write to storage.root"):
        preflight(cfg, "extract")
    cfg = load_config(None, [f"storage.root={tmp_path}/out", f"data.train={tmp_path}/nothing"])
    with pytest.raises(PreflightError, match="data.train=.*does not exist"):
        preflight(cfg, "extract")
    preflight(cfg, "run")  # run generates the world itself
    assert not list((tmp_path / "out").glob(".zeroseg-probe-*"))
