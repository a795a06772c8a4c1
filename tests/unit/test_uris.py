"""Storage locations are checked before any work: a URI that is not what the user can have
meant is an error naming the key, never a local folder with a surprising name."""

from __future__ import annotations

import os

import pytest

from pipeline.cli import main
from zeroseg import storage
from zeroseg.config import ConfigError, load_config


@pytest.mark.parametrize(
    "uri",
    [
        "runs/x",
        "/abs/path",
        "~/cache",
        "./s3:odd",
        "s3://bucket/run",
        "gs://bucket",
        "memory://",
        "memory://scratch/x",
        "file:///tmp/x",
        "simplecache::s3://bucket/x",
    ],
)
def test_meant_locations_pass(uri):
    assert storage.check_uri(uri) == uri


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("s3://", "names no bucket or container after s3://"),
        ("gs://", "names no bucket or container after gs://"),
        ("s3:///run", "names no bucket or container"),
        ("az://", "names no bucket or container"),
        ("s4://bucket/run", "has an unknown storage scheme 's4'"),
        ("simplecache::s5://bucket/x", "has an unknown storage scheme 's5'"),
        ("s3:bucket/run", "looks like a URI without its '//'"),
        ("s3:", "would be a local folder named 's3:'"),
    ],
)
def test_locations_that_would_go_elsewhere_are_refused(uri, reason):
    with pytest.raises(storage.BadURI, match="root=") as err:
        storage.check_uri(uri, "root")
    assert reason in str(err.value)
    with pytest.raises(storage.BadURI):  # every storage call refuses it too
        storage.exists(uri)


def test_config_names_every_bad_location_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["storage.root=s3://", "teacher.cache_dir=gs:cache"])
    text = str(err.value)
    assert "storage.root: 's3://' names no bucket" in text
    assert "data.train: 's3:///data/train' names no bucket" in text  # derived from the root
    assert "teacher.cache_dir: 'gs:cache' looks like a URI" in text
    with pytest.raises(ConfigError, match=r"eval.data_roots.voc: .*unknown storage scheme 'sss'"):
        load_config(None, ["eval.data_roots={voc: 'sss://b/voc'}"])


def test_a_bucketless_root_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "storage.root=s3://"]) == 2
    assert "storage.root" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no folder named "s3:" (or anything else) was made


@pytest.mark.parametrize("content", [b'{"num_shards": 3', b"", b"\xff\xfe garbage"])
def test_a_damaged_json_file_is_named(tmp_path, content):
    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(storage.BadJSON, match=r"manifest.json is not valid JSON"):
        storage.read_json(str(path))
    assert issubclass(storage.BadJSON, ValueError)  # the CLI reports it as a clear error
