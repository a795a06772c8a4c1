"""``zeroseg submit`` against a real three-node Ray cluster on this machine (head, an
``extract_worker`` node, a ``train_worker`` node; token authentication on) with a real S3
server: extract, train and eval run as Ray jobs, each stage on its own worker group, and no
credential leaks into outputs or logs.

Run it alone with ``pytest -m cluster``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET = "zeroseg-cluster"


@pytest.fixture(scope="module")
def cluster(teacher_cache):
    """Starts infra/local/start_cluster.sh with planted secrets; stops exactly that cluster."""
    state = tempfile.mkdtemp(prefix="zs", dir="/tmp")  # short: Ray's socket paths are limited
    secret = {
        "aws": "zs-planted-aws-" + secrets.token_hex(12),
        "token": "zs-planted-ray-" + secrets.token_hex(12),
    }
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RAY_")) or k.startswith("RAY_TRAIN_")  # conftest's
        },
        "AWS_ACCESS_KEY_ID": "zeroseg-cluster",
        "AWS_SECRET_ACCESS_KEY": secret["aws"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_AUTH_TOKEN": secret["token"],
        "ZS_S3_BUCKET": BUCKET,
        "ZS_VENV": str(BIN.parent),
    }
    start = subprocess.run(
        ["bash", str(ROOT / "infra/local/start_cluster.sh"), state],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        settings = {}
        for line in Path(state, "cluster.env").read_text().splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            settings[key] = value
        client_env = {
            **env,
            "RAY_API_SERVER_ADDRESS": settings["RAY_API_SERVER_ADDRESS"],
            "AWS_ENDPOINT_URL": settings["AWS_ENDPOINT_URL"],
            "PATH": f"{BIN}:{env.get('PATH', '')}",
        }
        yield {
            "state": state,
            "env": client_env,
            "secret": secret,
            "logs": [start.stdout, start.stderr],
        }
    finally:
        subprocess.run(
            ["bash", str(ROOT / "infra/local/stop_cluster.sh"), state], timeout=120, check=False
        )


def _zeroseg(cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(BIN / "zeroseg"), *args],
        cwd=ROOT,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    cluster["logs"] += [out.stdout, out.stderr]
    return out


def _s3(cluster):
    import s3fs

    env = cluster["env"]
    return s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )


def _nodes(cluster) -> dict[str, dict[str, float]]:
    code = (
        "import json, os\n"
        "from ray.util.state import list_nodes\n"
        "nodes = list_nodes(address=os.environ['RAY_API_SERVER_ADDRESS'], detail=True)\n"
        "print(json.dumps({n.node_id: n.resources_total for n in nodes}))\n"
    )
    env = {**cluster["env"], "RAY_AUTH_MODE": "token"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_submit_stages_to_separate_worker_groups(cluster, teacher_cache):
    root = f"s3://{BUCKET}/run"
    overrides = [
        *tiny_overrides(root, teacher_cache),
        "extract.resource_label=extract_worker",
        "train.resource_label=train_worker",
        "eval.num_cpus_per_task=1",
    ]
    # the shapes world on the cluster's S3 server (what a user's own data would be)
    world = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from pipeline.run import ensure_world\n"
            "from zeroseg.config import load_config\n"
            "ensure_world(load_config('jobs/demo.yaml', sys.argv[1:]), log=lambda *a: None)\n",
            *overrides,
        ],
        cwd=ROOT,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert world.returncode == 0, world.stderr

    # a bad key fails before anything is submitted
    bad = _zeroseg(cluster, "submit", "extract", "--config", "jobs/demo.yaml", "extract.nope=1")
    assert bad.returncode == 2 and "extract.nope" in bad.stderr
    assert "submitted" not in bad.stdout

    ids = {}
    for stage in ("extract", "train", "eval"):
        out = _zeroseg(cluster, "submit", stage, "--config", "jobs/demo.yaml", *overrides, "--wait")
        assert out.returncode == 0, f"{stage}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        line = next(x for x in out.stdout.splitlines() if x.startswith("submitted "))
        ids[stage] = line.split()[1].rstrip(":")
        assert ids[stage].startswith(f"zeroseg-{stage}-"), ids[stage]
        assert f"job {ids[stage]}: SUCCEEDED" in out.stdout

    listed = _zeroseg(cluster, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    for job_id in ids.values():
        assert job_id in listed.stdout
    show = _zeroseg(cluster, "jobs", "show", ids["train"])
    assert "'project': 'zeroseg'" in show.stdout and "'stage': 'train'" in show.stdout
    assert "status: SUCCEEDED" in show.stdout
    logs = _zeroseg(cluster, "jobs", "logs", ids["extract"])
    assert logs.returncode == 0 and "zeroseg extract" in logs.stdout

    # every output is on the S3 server
    fs = _s3(cluster)
    (extract,) = fs.ls(f"{BUCKET}/run/extract")
    assert fs.exists(f"{extract}/_SUCCESS")
    (run,) = [p for p in fs.ls(f"{BUCKET}/run/train") if fs.isdir(p)]
    assert fs.exists(f"{run}/final/model.safetensors")
    (evaluation,) = fs.ls(f"{BUCKET}/run/eval")
    assert fs.exists(f"{evaluation}/shapes/metrics.json")

    # each stage ran only on its own worker group
    nodes = _nodes(cluster)
    extract_nodes = {n for n, r in nodes.items() if "extract_worker" in r}
    train_nodes = {n for n, r in nodes.items() if "train_worker" in r}
    assert len(nodes) == 3 and len(extract_nodes) == 1 and len(train_nodes) == 1
    markers = [json.loads(fs.cat_file(p)) for p in fs.ls(f"{extract}/shards")]
    assert markers and {m["node_id"] for m in markers} == extract_nodes
    ranks = [json.loads(fs.cat_file(p)) for p in fs.ls(f"{run}/workers")]
    assert ranks and {r["node_id"] for r in ranks} == train_nodes

    # no credential in any output object, in the job logs or in what the commands printed
    for job_id in ids.values():
        cluster["logs"].append(_zeroseg(cluster, "jobs", "logs", job_id).stdout)
    texts = {p: fs.cat_file(p) for p in fs.find(f"{BUCKET}/run")}
    texts["<command output and job logs>"] = "\n".join(cluster["logs"]).encode()
    assert len(texts) > 20
    for planted in cluster["secret"].values():
        leaked = [p for p, data in texts.items() if planted.encode() in data]
        assert leaked == [], leaked
