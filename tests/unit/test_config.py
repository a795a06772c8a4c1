import json

import pytest

from zeroseg.config import (
    PAPER_RECIPE,
    Config,
    ConfigError,
    config_files,
    config_to_dict,
    load_config,
    paper_deviations,
)


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


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
        # the grouped spelling names the nested key
        ("student.overrides.encoder.dpeth=6", "student.overrides.encoder.dpeth"),
        ("student.overrides.stem.kind=lens", "student.overrides"),
        ("student.overrides.encoder=6", "student.overrides.encoder"),
        # the mask ratio is the training recipe's, once
        ("student.overrides.mask_ratio=0.5", "train.mask_ratio"),
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


def test_defaults_apply_in_order_then_the_file_then_overrides(tmp_path):
    _write(tmp_path, "base.yaml", "train:\n  epochs: 3\n  lr: 0.1\nstorage:\n  root: /b\n")
    _write(tmp_path, "parts/fast.yaml", "train:\n  epochs: 1\n  batch_size: 8\n")
    job = _write(
        tmp_path, "job.yaml", "defaults: [base, parts/fast.yaml]\ntrain:\n  batch_size: 16\n"
    )
    cfg = load_config(job, ["train.lr=0.5"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (1, 16, 0.5)
    assert cfg.storage.root == "/b" and cfg.data.train == "/b/data/train"
    assert config_files(job) == [tmp_path / "base.yaml", tmp_path / "parts/fast.yaml", job]
    # defaults are relative to the file that names them, wherever the command runs
    _write(tmp_path, "parts/deeper.yaml", "defaults: [../base]\ntrain:\n  epochs: 9\n")
    assert load_config(tmp_path / "parts/deeper.yaml").train.lr == 0.1


def test_several_files_merge_in_order(tmp_path):
    a = _write(tmp_path, "a.yaml", "train:\n  epochs: 3\n  lr: 0.1\n")
    b = _write(tmp_path, "b.yaml", "train:\n  epochs: 4\n")
    cfg = load_config([a, str(b)])
    assert (cfg.train.epochs, cfg.train.lr) == (4, 0.1)
    assert load_config([b, a]).train.epochs == 3
    assert config_to_dict(load_config([])) == config_to_dict(load_config(None))


def test_maps_merge_by_key_and_lists_are_replaced(tmp_path):
    _write(
        tmp_path,
        "base.yaml",
        "student:\n  preset: student-tiny-dense\n  overrides: {stem: conv}\n"
        "views:\n  levels: [1, 2, 3, 4]\n",
    )
    job = _write(
        tmp_path,
        "job.yaml",
        "defaults: [base]\nstudent:\n  overrides: {depth: 2}\nviews:\n  levels: [1, 2]\n",
    )
    cfg = load_config(job)
    assert cfg.student.overrides == {"stem": "conv", "depth": 2}
    assert cfg.views.levels == [1, 2]


def test_student_overrides_take_either_spelling_and_resolve_flat(tmp_path):
    from pipeline.submit import STAGE_SECTIONS, config_fingerprint
    from pipeline.train import student_config, train_fingerprint
    from zeroseg.config import StudentConfig

    nested = load_config(
        None, ["student.overrides.encoder.depth=2", "student.overrides.stem.kind=conv"]
    )
    flat = load_config(None, ["student.overrides.depth=2", "student.overrides.stem=conv"])
    assert nested.student.overrides == flat.student.overrides == {"depth": 2, "stem": "conv"}
    assert config_to_dict(nested) == config_to_dict(flat)
    assert train_fingerprint(nested, "c") == train_fingerprint(flat, "c")
    for stage in STAGE_SECTIONS:
        assert config_fingerprint(nested, stage) == config_fingerprint(flat, stage)
    arch = student_config(nested)
    assert (arch["depth"], arch["stem"], arch["width"]) == (2, "conv", 128)
    assert not {"encoder", "decoder", "head"} & set(arch)  # what final/config.json keeps
    # layers merge field by field whichever form each uses; the later spelling wins
    _write(tmp_path, "base.yaml", "student:\n  overrides: {depth: 3, stem: conv, num_heads: 2}\n")
    job = _write(
        tmp_path,
        "job.yaml",
        "defaults: [base]\nstudent:\n  overrides:\n    encoder: {depth: 1}\n"
        "    stem: {kind: patch, image_size: 32}\n",
    )
    cfg = load_config(job, ["student.overrides.head.depth=4"])
    assert cfg.student.overrides == {
        "depth": 1,
        "stem": "patch",
        "num_heads": 2,
        "image_size": 32,
        "head_depth": 4,
    }
    # a config built in code holds its overrides flat as well
    assert StudentConfig(overrides={"decoder": {"width": 64}}).overrides == {"decoder_width": 64}


def test_bad_nested_student_keys_name_the_key_and_the_file(tmp_path):
    job = _write(tmp_path, "job.yaml", "student:\n  overrides:\n    encoder: {dpeth: 6}\n")
    with pytest.raises(ConfigError, match=r"job\.yaml.*'student\.overrides\.encoder\.dpeth'"):
        load_config(job)
    twice = _write(
        tmp_path, "twice.yaml", "student:\n  overrides: {depth: 2, encoder: {depth: 3}}\n"
    )
    with pytest.raises(ConfigError, match="twice.yaml.*'student.overrides.depth' twice"):
        load_config(twice)


def test_a_base_reached_twice_applies_once(tmp_path):
    # two overlays of one base: the second must not undo the first one's change
    _write(tmp_path, "base.yaml", "train:\n  epochs: 3\n  lr: 0.1\n")
    _write(tmp_path, "long.yaml", "defaults: [base]\ntrain:\n  epochs: 30\n")
    _write(tmp_path, "fast.yaml", "defaults: [base]\ntrain:\n  lr: 0.9\n")
    job = _write(tmp_path, "job.yaml", "defaults: [long, fast]\n")
    cfg = load_config(job)
    assert (cfg.train.epochs, cfg.train.lr) == (30, 0.9)
    assert [p.name for p in config_files(job)] == [
        "base.yaml",
        "long.yaml",
        "fast.yaml",
        "job.yaml",
    ]


def test_cycles_and_missing_defaults_name_the_file(tmp_path):
    _write(tmp_path, "a.yaml", "defaults: [b]\n")
    _write(tmp_path, "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml -> " in str(err.value) and "b.yaml" in str(err.value)
    own = _write(tmp_path, "self.yaml", "defaults: [self]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(own)
    gone = _write(tmp_path, "gone.yaml", "defaults: [nowhere]\n")
    with pytest.raises(ConfigError, match="gone.yaml.*'nowhere' not found"):
        load_config(gone)
    bad = _write(tmp_path, "bad.yaml", "defaults: {a: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*list"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "a.yaml", tmp_path / "missing.yaml"])


def test_a_bad_key_in_a_default_names_key_and_file(tmp_path):
    _write(tmp_path, "base.yaml", "train:\n  epochz: 3\n")
    job = _write(tmp_path, "job.yaml", "defaults: [base]\n")
    with pytest.raises(ConfigError, match=r"train\.epochz.*base\.yaml"):
        load_config(job)
    broken = _write(tmp_path, "broken.yaml", "train: [1\n")
    with pytest.raises(ConfigError, match="broken.yaml.*YAML"):
        load_config(broken)
    listed = _write(tmp_path, "listed.yaml", "- train\n")
    with pytest.raises(ConfigError, match="listed.yaml.*mapping"):
        load_config(listed)


def test_paper_deviations():
    # the schema's defaults are the paper's recipe; each beyond-the-paper switch is named
    assert paper_deviations(load_config(None)) == {}
    cfg = load_config(None, ["train.w_dense=10", "student.overrides.stem=conv"])
    assert paper_deviations(cfg) == {"train.w_dense": 10.0, "student.stem": "conv"}
    # each is in the documentation's table of them
    table = _doc().split("## The paper's recipe and what goes beyond it")[1].split("\n## ")[0]
    for key in PAPER_RECIPE:
        assert f"`{key}`" in table or f"/ `{key.split('.')[1]}`" in table, key


def _doc() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
