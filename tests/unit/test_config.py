import json

import pytest

from zeroseg.config import Config, ConfigError, config_to_dict, load_config


def test_defaults_and_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("train:\n  epochs: 7\nstorage:\n  root: /data/out\n")
    cfg = load_config(cfg_file, ["train.lr=0.01", "views.levels=[1,2]"])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 0.01
    assert cfg.views.levels == [1, 2]
    # data paths follow storage.root unless set explicitly
    assert cfg.data.train == "/data/out/data/train"
    cfg2 = load_config(cfg_file, ["data.train=s3://bucket/images"])
    assert cfg2.data.train == "s3://bucket/images"
    assert cfg2.data.bench == "/data/out/data/bench"


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochz=3", "train.epochz"),
        ("train.epochs=three", "train.epochs"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("extract.num_actors=1.5", "extract.num_actors"),
        ("extract.mode=sometimes", "extract.mode"),
        ("views.levels=[2,3]", "views.levels"),
        ("train.mask_ratio=1.0", "train.mask_ratio"),
        ("eval.images_per_task=0", "eval.images_per_task"),
        ("student.preset=student-huge", "student.preset"),
        ("student.overrides.widht=64", "student.overrides"),
        ("student.overrides.stem=lens", "student.overrides"),
        ("world.n_generalisation=-1", "world.n_generalisation"),
        ("world.generalisation_image_size=4", "world.generalisation_image_size"),
        # the split was renamed: the old keys are refused, not silently ignored
        ("world.n_shifted=10", "world.n_shifted"),
        ("world.shifted_backgrounds=[dots]", "world.shifted_backgrounds"),
        ("data.shifted=/tmp/x", "data.shifted"),
    ],
)
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_generalisation_split_keys():
    cfg = load_config(None, ["storage.root=/out"])
    assert cfg.world.n_generalisation == 0 and cfg.world.generalisation_image_size == 96
    assert cfg.data.generalisation == "/out/data/generalisation"
    quality = load_config("jobs/quality.yaml")
    assert quality.world.n_generalisation == 200
    assert quality.data.generalisation == "runs/quality/data/generalisation"


def test_unknown_key_in_yaml_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("teacher:\n  modle: ViT-L-14\n")
    with pytest.raises(ConfigError, match="teacher.modle"):
        load_config(f)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/job.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_config_round_trips_as_json():
    cfg = load_config(None, ["storage.root=/tmp/r"])
    d = json.loads(json.dumps(config_to_dict(cfg)))
    assert d["storage"]["root"] == "/tmp/r"
    assert set(d) == {f for f in Config.__dataclass_fields__}


def test_shipped_job_configs_validate():
    from pathlib import Path

    jobs = sorted(Path(__file__).resolve().parents[2].joinpath("jobs").glob("*.yaml"))
    assert jobs, "no job configs found"
    for job in jobs:
        if job.name == "runtime_env.yaml":
            continue
        load_config(job)


def test_every_key_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for section, values in config_to_dict(Config()).items():
        for key in values:
            assert f"{section}.{key}" in doc or f"`{key}`" in doc or f"/ `{key}`" in doc, (
                f"{section}.{key} missing from docs/configuration.md"
            )
