"""Sizing and placing the extraction actor pool from config and the command line, without
changing the cache fingerprint."""

from __future__ import annotations

import pytest
from ray.data import ActorPoolStrategy

from pipeline.cli import _load, build_parser
from pipeline.extract import (
    check_pool_resources,
    extract_fingerprint,
    pool_options,
    pool_resource_problems,
)
from pipeline.inputs import InputPlan
from zeroseg.config import ConfigError, actor_range, load_config

TEACHER = {"model": "zeroseg-toyclip", "pretrained": ""}
PLAN = InputPlan("folder", ["/d/a.png", "/d/b.png"], [None, None])


def test_num_actors_still_means_a_fixed_pool():
    cfg = load_config("jobs/demo.yaml", ["extract.num_actors=3"])
    assert actor_range(cfg.extract) == (3, 3)
    assert pool_options(cfg) == {
        "compute": ActorPoolStrategy(min_size=3, max_size=3),
        "num_cpus": 2.0,
        "num_gpus": None,
    }


def test_cli_overrides_size_and_place_the_pool():
    args = build_parser().parse_args(
        [
            "extract",
            "--config",
            "jobs/extract.yaml",
            "extract.max_actors=16",
            "extract.gpus_per_actor=1",
            "extract.resource_label=extract_worker",
        ]
    )
    cfg = _load(args)
    assert pool_options(cfg) == {
        "compute": ActorPoolStrategy(min_size=1, max_size=16),
        "num_cpus": 2.0,
        "num_gpus": 1.0,
        "resources": {"extract_worker": 0.001},
    }
    cfg = load_config(None, ["extract.min_actors=2", "extract.max_actors=8"])
    assert pool_options(cfg)["compute"] == ActorPoolStrategy(min_size=2, max_size=8)


@pytest.mark.parametrize(
    "override,key",
    [
        ("extract.min_actors=5", None),  # min above num_actors=1: max follows min
        ("extract.max_actors=-1", "extract.max_actors"),
        ("extract.gpus_per_actor=-1", "extract.gpus_per_actor"),
        ("extract.max_actors=many", "extract.max_actors"),
        ("extract.precision=int8", "extract.precision"),
        ("extract.device=tpu", "extract.device"),
        ("extract.device=cuda", "extract.device: 'cuda' needs extract.gpus_per_actor > 0"),
    ],
)
def test_pool_settings_are_validated_with_the_key_named(override, key):
    if key is None:
        assert actor_range(load_config(None, [override]).extract) == (5, 5)
        with pytest.raises(ConfigError, match="extract.min_actors: 5 is above"):
            load_config(None, [override, "extract.max_actors=2"])
        return
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_pool_and_batch_settings_do_not_change_the_fingerprint():
    base = extract_fingerprint(load_config("jobs/demo.yaml"), TEACHER, PLAN)
    for overrides in (
        ["extract.num_actors=4"],
        ["extract.min_actors=2", "extract.max_actors=16"],
        ["extract.gpus_per_actor=1", "extract.cpus_per_actor=8"],
        ["extract.resource_label=extract_worker"],
        ["extract.batch_size=30", "extract.max_retries=5"],
        ["extract.device=cpu", "extract.precision=fp32"],
    ):
        cfg = load_config("jobs/demo.yaml", overrides)
        assert extract_fingerprint(cfg, TEACHER, PLAN) == base, overrides
    changed = load_config("jobs/demo.yaml", ["extract.images_per_shard=64"])
    assert extract_fingerprint(changed, TEACHER, PLAN) != base
    bf16 = load_config("jobs/demo.yaml", ["extract.precision=bf16"])
    assert extract_fingerprint(bf16, TEACHER, PLAN) != base  # half precision: other bytes
    with_spans = InputPlan("tar", PLAN.keys, [[512, 10], [1536, 10]])
    assert extract_fingerprint(load_config("jobs/demo.yaml"), TEACHER, with_spans) != base


def test_a_pool_that_cannot_start_fails_locally_and_warns_on_a_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(
        None,
        ["extract.resource_label=extract_worker", "extract.gpus_per_actor=1"],
    )
    cluster = {"CPU": 2.0, "memory": 1e9}
    problems = pool_resource_problems(cfg, cluster)
    assert len(problems) == 2
    assert problems[0].startswith("extract.resource_label=extract_worker: no Ray node")
    assert problems[1] == "extract.gpus_per_actor=1.0: the Ray cluster has 0 GPUs"
    with pytest.raises(RuntimeError, match="actor pool cannot start: extract.resource_label"):
        check_pool_resources(cfg, cluster)
    ok = {"CPU": 2.0, "GPU": 1.0, "extract_worker": 1.0}
    check_pool_resources(cfg, ok)  # nothing missing
    remote = load_config(
        None,
        ["ray.address=auto", "extract.resource_label=extract_worker", "extract.cpus_per_actor=1"],
    )
    logs: list[str] = []
    check_pool_resources(remote, cluster, log=logs.append)
    assert len(logs) == 1 and "waits until the cluster adds such a node" in logs[0]
