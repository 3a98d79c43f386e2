"""The package as a user gets it: a wheel built from this checkout, installed, run.

Built from a copy of the sources (so the checkout gains no build/ or egg-info), without build
isolation (setuptools comes with the dev extra), installed with --no-deps into a folder of its
own that is put first on the path: the dependencies are this environment's, facerank is the
wheel's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("needs setuptools (pip install -e '.[dev]' brings it)")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("facerank", "cli", "examples"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist"), str(source)], check=True,
                   capture_output=True, timeout=300)
    wheel = next((root / "dist").glob("facerank-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(root / "site"), str(wheel)], check=True, capture_output=True, timeout=300)
    return wheel, root / "site"


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # -S: no site-packages .pth files, so the editable install's import hook cannot fill in a
    # module the wheel lacks; the dependencies come from this environment's site-packages.
    dependencies = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *dependencies])}
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_carries_every_module_of_the_checkout(installed_wheel):
    names = set(zipfile.ZipFile(installed_wheel[0]).namelist())
    modules = {f"facerank/{path.relative_to(REPO / 'facerank').as_posix()}"
               for path in (REPO / "facerank").rglob("*.py")}
    modules |= {f"facerank/cli/{path.relative_to(REPO / 'cli').as_posix()}"
                for path in (REPO / "cli").rglob("*.py")}
    assert modules - names == set()


def test_the_wheel_carries_the_page_the_cli_and_the_demo_gallery(installed_wheel):
    names = set(zipfile.ZipFile(installed_wheel[0]).namelist())
    assert {"facerank/web/index.html", "facerank/cli/app.py", "facerank/__main__.py",
            "facerank/demo_gallery/CREDITS.md", "facerank/demo_gallery/s1/1.pgm"} <= names
    assert sum(name.startswith("facerank/demo_gallery/s") for name in names) == 100


def test_demo_runs_from_the_installed_wheel(installed_wheel, tmp_path):
    site = installed_wheel[1]
    where = _run(site, tmp_path, "-c", "import facerank; print(facerank.__file__)")
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    demo = _run(site, tmp_path, "-m", "facerank", "demo", "--epochs", "1", "--store",
                str(tmp_path / "demo"), "--json")
    assert demo.returncode == 0, demo.stderr[-2000:]
    report = json.loads(demo.stdout)
    # The held-out photo it asked about comes from the wheel's own copy of the gallery.
    assert Path(report["photo"]).resolve().is_relative_to(site.resolve())
