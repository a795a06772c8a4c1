"""The same three stages with every input and output on an S3-protocol server (moto)."""

from __future__ import annotations

import json

import pytest
import s3fs

from pipeline.run import run_all
from tests.conftest import tiny_overrides
from zeroseg.config import load_config

pytestmark = pytest.mark.integration


def test_pipeline_on_s3(ray_local, s3_server, teacher_cache):
    fs = s3fs.S3FileSystem()
    fs.mkdir("zeroseg-it")
    # also exercises the centred per-patch targets in the train loop
    overrides = [*tiny_overrides("s3://zeroseg-it/run", teacher_cache), "train.center_targets=true"]
    cfg = load_config("jobs/demo.yaml", overrides)
    summary = run_all(cfg, log=lambda *_: None)
    stored = json.loads(fs.cat_file("zeroseg-it/run/summary.json"))
    assert stored["student"]["miou"] == pytest.approx(summary["student"]["miou"])
    (extract,) = fs.ls("zeroseg-it/run/extract")
    for name in ("_SUCCESS", "manifest.json", "index.parquet", "cache.zarr/zarr.json"):
        assert fs.exists(f"{extract}/{name}"), name
    assert summary["checkpoint"].startswith("s3://zeroseg-it/run/train/")
    final = summary["checkpoint"].removeprefix("s3://")
    assert fs.exists(f"{final}/model.safetensors") and fs.exists(f"{final}/config.json")
    assert (
        len(fs.ls(f"{extract}/shards"))
        == json.loads(fs.cat_file(f"{extract}/manifest.json"))["num_shards"]
    )
    # a second run finds every stage finished on object storage
    logs: list[str] = []
    run_all(cfg, log=logs.append)
    assert sum("skipping" in line for line in logs) == 3


def test_missing_bucket_fails_before_ray(s3_server, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "rc = main(['extract', '--config', 'jobs/demo.yaml',\n"
        "           'storage.root=s3://zeroseg-no-such-bucket/run', 'data.train=/tmp'])\n"
        "assert 'ray' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "cannot write to storage.root=s3://zeroseg-no-such-bucket/run" in out.stderr
