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
    # a zarr shard object lost on the server: status --verify names it, the next run
    # recomputes that shard only (training and eval are finished and stay so)
    from pipeline.cli import main
    from pipeline.run import run_stages

    # Every kind of object damaged at once on the server: a zarr shard object lost, a marker
    # lost, the index truncated, the manifest overwritten: status --verify names them, one
    # rerun recomputes the two shards and finalizes again, to the same bytes
    lost = f"{extract}/cache.zarr/pixels/c/1/0/0/0"
    kept = {
        name: fs.cat_file(f"{extract}/{name}")
        for name in ("cache.zarr/pixels/c/1/0/0/0", "cache.zarr/embeddings/c/2/0/0")
    }
    fs.rm(lost)
    fs.rm(f"{extract}/shards/00002.json")
    index = fs.cat_file(f"{extract}/index.parquet")
    fs.pipe_file(f"{extract}/index.parquet", index[: len(index) // 2])
    fs.pipe_file(f"{extract}/manifest.json", b"{ not json")
    assert main(["status", f"s3://{extract}", "--verify"]) == 1
    logs.clear()
    run_stages(cfg, ["extract"], logs.append, world=True)
    assert any("manifest.json does not parse" in line for line in logs), logs
    assert any("(1 done, 2 to run)" in line for line in logs), logs
    for name, data in kept.items():
        assert fs.cat_file(f"{extract}/{name}") == data, name
    assert fs.cat_file(f"{extract}/index.parquet") == index
    assert main(["status", f"s3://{extract}", "--verify", "full"]) == 0
    fs.rm(f"{extract}/_SUCCESS")  # lost last: finalized again, nothing recomputed
    logs.clear()
    run_stages(cfg, ["extract"], logs.append, world=True)
    assert any("(3 done, 0 to run)" in line for line in logs), logs
    assert main(["status", f"s3://{extract}", "--verify", "full"]) == 0


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


AUTH_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture
def s3_with_auth():
    """A second S3-protocol server that checks credentials: its first 4 requests (bucket, IAM
    user, access key, policy) are unauthenticated, every later one must be signed by a known
    key. Runs in its own process, since moto reads that switch once per process."""
    import os
    import subprocess
    import sys

    import boto3

    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-c", AUTH_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        endpoint = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        admin = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "bootstrap",
            "aws_secret_access_key": "bootstrap",
        }
        boto3.client("s3", **admin).create_bucket(Bucket="zeroseg-auth")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="extractor")
        key = iam.create_access_key(UserName="extractor")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="extractor", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_wrong_credential_fails_before_ray(s3_with_auth, tmp_path):
    import os
    import subprocess
    import sys

    endpoint, key_id, secret = s3_with_auth
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "rc = main(['extract', '--config', 'jobs/demo.yaml', *sys.argv[1:]])\n"
        "assert 'ray' not in sys.modules\n"
        "sys.exit(rc)\n"
    )

    def extract(key: str, secret: str, *args: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
        }
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
        )

    hint = "the storage refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    out = extract("AKIAWRONGWRONGWRONG0", secret, "storage.root=s3://zeroseg-auth/run")
    assert out.returncode == 1, out.stderr
    assert "cannot write to storage.root=s3://zeroseg-auth/run: PermissionError" in out.stderr
    assert hint in out.stderr
    out = extract(key_id, "not-the-secret", "storage.root=s3://zeroseg-auth/run")
    assert out.returncode == 1 and hint in out.stderr, out.stderr
    # reading the inputs with a refused credential is named the same way
    out = extract(
        "AKIAWRONGWRONGWRONG0",
        secret,
        f"storage.root={tmp_path}/out",
        "data.train=s3://zeroseg-auth/images/list.txt",
    )
    assert out.returncode == 1, out.stderr
    assert "cannot read data.train=s3://zeroseg-auth/images/list.txt: PermissionError" in out.stderr
    assert "may read there" in out.stderr
    # the right key passes the same checks: the server really tells keys apart
    out = extract(key_id, secret, "storage.root=s3://zeroseg-auth/run", "data.train=/nonexistent")
    assert out.returncode == 1
    assert "data.train=/nonexistent does not exist" in out.stderr, out.stderr
