"""The library stays usable without Ray; config errors surface before any cluster work."""

import ast
import subprocess
import sys
from pathlib import Path

CHECK_NO_RAY = """
import importlib, pkgutil, sys
import zeroseg
for m in pkgutil.walk_packages(zeroseg.__path__, "zeroseg."):
    importlib.import_module(m.name)
assert "ray" not in sys.modules, sorted(k for k in sys.modules if k.startswith("ray"))
assert "pipeline" not in sys.modules, sorted(k for k in sys.modules if k.startswith("pipeline"))
print("ok")
"""
LIBRARY = Path(__file__).resolve().parents[2] / "zeroseg"
FORBIDDEN = ("ray", "pipeline")


def test_library_never_imports_ray():
    out = subprocess.run([sys.executable, "-c", CHECK_NO_RAY], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_no_library_source_names_ray_or_pipeline():
    """Importing every module misses imports inside functions; the source shows them all."""
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(LIBRARY.parent)}:{node.lineno} {name}")
    assert not offenders, offenders


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


def test_validating_a_config_loads_no_model_code():
    """Every command validates its config first; that must not cost a torch and timm import
    (seconds per command), also for a student given in either spelling and a bad one."""
    code = (
        "import sys\n"
        "from zeroseg.config import ConfigError, load_config\n"
        "for job in ('jobs/demo.yaml', 'jobs/quality.yaml', 'jobs/paper_exact.yaml'):\n"
        "    load_config(job, ['student.overrides.encoder.depth=3'])  # checks every section\n"
        "try:\n"
        "    load_config('jobs/demo.yaml', ['student.overrides.encoder.nope=3'])\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'open_clip') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "student.overrides.encoder.nope" in out.stdout


def test_help_teaches():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in ("extract", "train", "eval", "run", "segment", "status", "examples"):
        assert word in out.stdout
