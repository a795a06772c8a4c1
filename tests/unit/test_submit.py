"""What ``zeroseg submit`` sends, worked out locally before any cluster is contacted."""

from __future__ import annotations

import re
import shlex

import pytest

from pipeline.submit import (
    ROOT,
    config_fingerprint,
    prepare,
    read_token,
    resolve_address,
    shipped_config_path,
)
from zeroseg.config import ConfigError, load_config


def test_a_submission_names_its_stage_and_config_and_runs_the_local_cli():
    job = prepare("extract", str(ROOT / "jobs/demo.yaml"), ["extract.max_actors=4"])
    assert re.fullmatch(
        r"zeroseg-extract-[0-9a-f]{10}-\d{8}-\d{6}-[0-9a-f]{4}", job["submission_id"]
    )
    assert shlex.split(job["entrypoint"]) == [
        "zeroseg",
        "extract",
        "--config",
        "jobs/demo.yaml",
        "extract.max_actors=4",
    ]
    md = job["metadata"]
    assert md["project"] == "zeroseg" and md["stage"] == "extract"
    assert md["config"] == "jobs/demo.yaml" and md["storage_root"] == "runs/demo"
    assert job["submission_id"].split("-")[2] == md["fingerprint"]
    env = job["runtime_env"]
    assert env["working_dir"] == str(ROOT) and ".git" in env["excludes"]
    # overrides with spaces survive the shell
    odd = prepare("train", "jobs/demo.yaml", ["train.name=my run"])
    assert shlex.split(odd["entrypoint"])[-1] == "train.name=my run"


def test_fingerprints_follow_what_each_stage_reads():
    base = load_config("jobs/demo.yaml")
    lr = load_config("jobs/demo.yaml", ["train.lr=0.01"])
    assert config_fingerprint(lr, "extract") == config_fingerprint(base, "extract")
    assert config_fingerprint(lr, "train") != config_fingerprint(base, "train")
    cpus = load_config("jobs/demo.yaml", ["ray.num_cpus=8"])
    assert config_fingerprint(cpus, "run") == config_fingerprint(base, "run")


def test_bad_submissions_fail_locally_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="extract.nope"):
        prepare("extract", "jobs/demo.yaml", ["extract.nope=1"])
    with pytest.raises(ConfigError, match="stage must be one of"):
        prepare("distill", "jobs/demo.yaml", [])
    with pytest.raises(ConfigError, match="no such file"):
        shipped_config_path("jobs/missing.yaml")
    outside = tmp_path / "mine.yaml"
    outside.write_text("train:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match="outside the working dir"):
        shipped_config_path(str(outside))
    # a job file inside the repository that builds on one outside it would not find it there
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "job.yaml").write_text(f"defaults: [{outside}]\n")
    with pytest.raises(ConfigError, match="builds on .*mine.yaml, outside the working dir"):
        shipped_config_path(str(repo / "job.yaml"), root=repo)
    assert shipped_config_path("jobs/demo.yaml") == "jobs/demo.yaml"  # its defaults ship too


def test_address_and_token_come_from_flags_then_the_environment(tmp_path, monkeypatch):
    for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="--address"):
        resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not the Jobs API
    with pytest.raises(ConfigError, match="--address"):
        resolve_address(None)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265")
    assert resolve_address(None) == "http://head:8265"
    assert resolve_address("http://other:8265") == "http://other:8265"

    assert read_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert read_token() == "from-home"
    path = tmp_path / "token"
    path.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert read_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_token() == "from-env"
    flag = tmp_path / "flag"
    flag.write_text("from-flag")
    assert read_token(str(flag)) == "from-flag"
