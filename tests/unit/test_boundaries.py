"""The library stays usable without Ray; config errors surface before any cluster work."""

import subprocess
import sys

CHECK_NO_RAY = """
import importlib, pkgutil, sys
import zeroseg
for m in pkgutil.walk_packages(zeroseg.__path__, "zeroseg."):
    importlib.import_module(m.name)
assert "ray" not in sys.modules, sorted(k for k in sys.modules if k.startswith("ray"))
print("ok")
"""


def test_library_never_imports_ray():
    out = subprocess.run([sys.executable, "-c", CHECK_NO_RAY], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_config_errors_fail_before_ray_starts():
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "rc = main(['extract', '--config', 'jobs/demo.yaml', 'extract.num_actorz=4'])\n"
        "assert 'ray' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert "extract.num_actorz" in out.stderr


def test_help_teaches():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in ("extract", "train", "eval", "run", "segment", "status", "examples"):
        assert word in out.stdout
