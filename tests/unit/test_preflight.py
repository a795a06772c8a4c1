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


def test_an_output_folder_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    from pipeline.cli import main

    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    cfg = load_config(None, [f"storage.root={existing}"])
    with pytest.raises(PreflightError, match=f"storage.root={existing} is a file, not a folder"):
        preflight(cfg, "run")
    for argv in (
        ["data", "shapes", "--out", str(existing), "--n", "2"],
        ["teacher-pretrain", "--out", str(existing)],
        ["extract", "--config", "jobs/demo.yaml", f"storage.root={existing}"],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert f"={existing} is a file, not a folder" in err, err
    assert existing.read_text() == "keep me"


def test_a_missing_or_unusable_student_init_is_named_before_any_work(tmp_path):
    from zeroseg.config import ConfigError

    absent = tmp_path / "mae" / "encoder.safetensors"
    cfg = load_config(None, [f"storage.root={tmp_path}/out", f"student.init={absent}"])
    for stage in ("train", "run", "ablate"):
        with pytest.raises(PreflightError, match="student.init=.*does not exist"):
            preflight(cfg, stage)
    with pytest.raises(PreflightError, match="data.bench"):  # eval reads a finished student,
        preflight(cfg, "eval")  # not its init: only its own inputs are checked
    # an init needs the ViT patch embedding it loads into: the teacher stem is refused
    with pytest.raises(ConfigError, match="student.init: loads a ViT's patch embedding"):
        load_config("jobs/demo.yaml", [f"student.init={absent}"])
    with pytest.raises(ConfigError, match="student.init"):
        load_config(None, ["student.init=s3:/one-slash/encoder.safetensors"])
