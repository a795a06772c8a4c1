"""Shared fixtures: one real local Ray per test session, tiny configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray Train polls its workers every 2 s and starts a preemption watcher actor (one more process
# importing torch) per run; the tests train dozens of tiny runs on a machine that is never
# preempted, so they poll faster and go without the watcher. Ray Train hands both settings on
# from the driver to its controller and workers.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def pytest_collection_modifyitems(session, config, items) -> None:
    """The minutes-long CPU checks (``slow``) run first, before the session's Ray starts: a
    torch job on two threads slows down by a third beside even an idle Ray node."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1, credentials in the standard environment
    variables. Started before Ray so Ray's workers inherit the same environment."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "zeroseg-test",
            "AWS_SECRET_ACCESS_KEY": "zeroseg-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_server):
    import ray

    if not ray.is_initialized():
        # The node offers a custom resource, as an extraction worker group would, so tests can
        # pin the extract actor pool to it (extract.resource_label).
        ray.init(
            num_cpus=2,
            resources={"extract_worker": 1},
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            logging_level="WARNING",
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """Cache folder for toy teachers of other recipes; the tests' runs use the shipped one."""
    return str(tmp_path_factory.mktemp("teachers"))


def tiny_overrides(root: str, teacher_cache: str) -> list[str]:
    return [
        f"storage.root={root}",
        f"teacher.cache_dir={teacher_cache}",
        "world.n_train=40",
        "world.n_val=8",
        "world.n_bench=10",
        "extract.images_per_shard=16",
        "extract.batch_size=32",
        "extract.cpus_per_actor=1",
        "train.epochs=2",
        "train.batch_size=8",
        "train.cpus_per_worker=1",
        "train.checkpoint_every_steps=4",
        "eval.images_per_task=4",
        "eval.overlays=2",
        "eval.background_rules=[prompt,threshold:0.6]",
    ]
