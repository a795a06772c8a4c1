"""A damaged checkpoint is refused with its path and the reason: by the library before any
model is built, by `segment` without a traceback, by `eval` before Ray starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.eval_fixtures import write_random_checkpoint
from zeroseg.checkpoint import WEIGHTS, BadCheckpoint, check_weights
from zeroseg.models import create_student


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return write_random_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "final"))


def _damaged(final: str, tmp_path, how: str) -> str:
    bad = str(tmp_path / how / "final")
    shutil.copytree(final, bad)
    weights = os.path.join(bad, WEIGHTS)
    data = open(weights, "rb").read()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbage":
        data = b"PK\x03\x04 this is a zip, not safetensors" * 10
    elif how == "empty":
        data = b""
    elif how == "bad_header":
        data = data[:8] + b"{not json" + data[17:]
    with open(weights, "wb") as f:
        f.write(data)
    return bad


def test_a_sound_checkpoint_passes(final):
    header = check_weights(final)
    assert header and all("data_offsets" in t for k, t in header.items() if k != "__metadata__")
    assert check_weights(os.path.join(final, WEIGHTS)) == header  # the file itself also works


@pytest.mark.parametrize(
    "how, reason",
    [
        ("truncated", "is truncated: its header describes"),
        ("garbage", "is not a safetensors checkpoint"),
        ("empty", "is not a safetensors checkpoint"),
        ("bad_header", "is not a safetensors checkpoint"),
    ],
)
def test_damaged_weights_are_named_with_the_reason(final, tmp_path, how, reason):
    bad = _damaged(final, tmp_path, how)
    with pytest.raises(BadCheckpoint, match=reason) as err:
        check_weights(bad)
    assert os.path.join(bad, WEIGHTS) in str(err.value)
    with pytest.raises(BadCheckpoint, match=reason):
        create_student(pretrained=bad)
    os.remove(os.path.join(bad, WEIGHTS))
    with pytest.raises(BadCheckpoint, match="does not exist"):
        check_weights(bad)


def test_segment_refuses_a_damaged_checkpoint_in_one_line(final, tmp_path, capsys):
    bad = _damaged(final, tmp_path, "truncated")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    rc = main(
        ["segment", str(tmp_path / "x.png"), "--classes", "circle", "--checkpoint", bad]
        + ["-o", str(tmp_path / "out"), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "is truncated" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_damaged_checkpoint_before_ray(final, tmp_path):
    bad = _damaged(final, tmp_path, "garbage")
    (tmp_path / "bench").mkdir()
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "rc = main(['eval', '--config', 'jobs/demo.yaml', *sys.argv[1:]])\n"
        "assert 'ray' not in sys.modules, 'Ray was imported'\n"
        "sys.exit(rc)\n"
    )
    args = [f"storage.root={tmp_path / 'run'}", f"data.bench={tmp_path / 'bench'}"]
    args += [f"data.val={tmp_path / 'bench'}", "--checkpoint", bad]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "is not a safetensors checkpoint" in out.stderr and bad in out.stderr
    assert not os.path.exists(tmp_path / "run" / "eval")  # no stub folder left behind
