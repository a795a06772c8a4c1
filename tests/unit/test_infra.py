"""The container and the KubeRay manifests: parsed, checked field by field, and their worker
groups' resources agree with what the stages ask for in the job configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from zeroseg.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
IMAGE_JOBS = "/opt/zeroseg/jobs/"


def _load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def _group_resources(group: dict) -> dict[str, float]:
    raw = group.get("rayStartParams", {}).get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def _gpus(group: dict) -> int:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return int(limits.get("nvidia.com/gpu", 0))


def _check_cluster_spec(spec: dict) -> dict[str, dict]:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs no work
    assert spec["rayVersion"] == "2.60.0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, g["groupName"]
        assert g["template"]["spec"]["containers"][0]["image"] == "zeroseg:0.1.0"
    return groups


def _no_literal_secrets(text: str) -> None:
    assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id", text)
    for m in re.finditer(r"name: RAY_AUTH_TOKEN\s*\n\s*(\S+)", text):
        assert m.group(1).startswith("valueFrom"), m.group(0)


def test_raycluster_has_autoscaling_cpu_extract_and_train_groups():
    doc = _load("raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = _check_cluster_spec(spec)
    assert set(groups) == {"cpu-workers", "extract-workers", "train-workers"}
    assert _gpus(groups["cpu-workers"]) == 0 and _group_resources(groups["cpu-workers"]) == {}
    paper = load_config(str(ROOT / "jobs" / "run_in1k.yaml"))
    extract = _group_resources(groups["extract-workers"])
    train = _group_resources(groups["train-workers"])
    assert paper.extract.resource_label in extract and paper.extract.resource_label not in train
    assert paper.train.resource_label in train and paper.train.resource_label not in extract
    assert _gpus(groups["extract-workers"]) == paper.extract.gpus_per_actor
    assert _gpus(groups["train-workers"]) == 1 and paper.train.use_gpu
    _no_literal_secrets((K8S / "raycluster.yaml").read_text())


def test_every_stage_has_a_rayjob_that_cleans_up_and_retries():
    stages = {}
    for path in sorted(K8S.glob("rayjob-*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "RayJob", path.name
        spec = doc["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, path.name
        assert spec["activeDeadlineSeconds"] > 0, path.name
        assert spec["backoffLimit"] >= 1, path.name
        yaml.safe_load(spec["runtimeEnvYAML"])
        words = spec["entrypoint"].split()
        assert words[0] == "zeroseg" and words[2] == "--config", path.name
        stage, config = words[1], words[3]
        assert config.startswith(IMAGE_JOBS), path.name
        local = ROOT / "jobs" / config.removeprefix(IMAGE_JOBS)
        cfg = load_config(str(local))  # the config the image carries loads and validates
        groups = _check_cluster_spec(spec["rayClusterSpec"])
        offered = {k for g in groups.values() for k in _group_resources(g)}
        if stage == "extract":
            assert cfg.extract.resource_label in offered
            assert any(_gpus(g) >= cfg.extract.gpus_per_actor for g in groups.values())
        if stage == "train":
            assert cfg.train.resource_label in offered
            train_groups = [g for g in groups.values() if cfg.train.resource_label in str(g)]
            assert sum(g["maxReplicas"] for g in train_groups) >= cfg.train.num_workers
        if stage == "eval":
            assert any(_gpus(g) >= 1 for g in groups.values()) or cfg.eval.gpus_per_task == 0
        _no_literal_secrets(path.read_text())
        stages[stage] = path.name
    assert set(stages) == {"extract", "train", "eval"}


def test_dockerfile_is_pinned_and_carries_the_job_configs():
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    assert "-c constraints.txt" in text and "COPY jobs ./jobs" in text
    assert "WORKDIR /opt/zeroseg" in text
    _no_literal_secrets(text)
