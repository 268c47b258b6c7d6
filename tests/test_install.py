"""edgebench installed as a package, not run from its checkout: the wheel holds the suites,
the report template, the claims and the probe's C sources, and a run from it works.

What was seen: only an editable install worked, because the probe's C sources and `claims/`
lived outside the package, so `pip install .` or a wheel could not build a runtime.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "harness"
TINY = """
name = "tiny"
repetitions = 1
inprocess_repetitions = 1
[[prefill]]
prompt = 16
[[decode]]
tokens = 4
"""


def _package_data() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["harness"]


def _data_files() -> list[str]:
    """Every file in the package that is not Python: what a wheel must carry as package data."""
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def test_package_data_names_every_data_file():
    """A data file added to the package but not to pyproject's package-data would be missing
    from every installed copy while the checkout works: the failure of the item above."""
    globs = _package_data()
    assert _data_files(), "no data files found: the check below would pass on nothing"
    assert [f for f in _data_files() if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def _build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` from a copy of the sources: setuptools writes build/ and *.egg-info into the
    tree it builds, and a stale build/lib of the checkout could carry files the package data
    no longer names. Without build isolation where this interpreter can build a wheel itself
    (setuptools >= 70.1, or the `wheel` package beside it); otherwise pip fetches setuptools and
    wheel from the package registry for the build, as for any `pip install .`."""
    import setuptools
    from packaging.version import Version

    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    builds_alone = Version(setuptools.__version__) >= Version("70.1") or importlib.util.find_spec("wheel") is not None
    isolation = ["--no-build-isolation"] if builds_alone else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("edgebench-*.whl")
    return wheel


def _venv_with_the_wheel(tmp_path: Path, wheel: Path) -> Path:
    """A fresh venv holding only the wheel, that reuses this interpreter's installed dependencies.

    `--system-site-packages` would not do: it exposes the *base* interpreter's site-packages,
    not this venv's, where the dependencies are. Instead a `.pth` file names this venv's
    site-packages; a path line in a `.pth` is appended to sys.path without processing the
    `.pth` files inside it, so the checkout's editable install (its `__editable__` finder) is
    not loaded and `harness` can only come from the wheel. The wheel goes in first, with
    `--no-deps`, while the venv still sees nothing else.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "edgebench-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))
    return venv


def _cache_sharing_the_builds(tmp_path: Path) -> Path:
    """An empty runtime cache that borrows the shared cache's llama.cpp source, llama.cpp
    build and models: the run must build its runtime, which compiles the probe from the
    installed sources (a sub-second compile), without rebuilding llama.cpp."""
    from harness.paths import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    for shared in ("sources", "llama-cpp", "models"):
        assert (cache_dir() / shared).is_dir(), f"{cache_dir() / shared}: the fixtures should have made it"
        (cache / shared).symlink_to(cache_dir() / shared, target_is_directory=True)
    return cache


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_a_case(tmp_path, host_runtime, default_model):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert [f for f in _data_files() if f"harness/{f}" not in names] == []
    venv = _venv_with_the_wheel(tmp_path, wheel)
    cache = _cache_sharing_the_builds(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tiny.toml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "EDGEBENCH_RESULTS")}
    env |= {"EDGEBENCH_CACHE": str(cache), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}

    def installed(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)

    where = installed(str(venv / "bin" / "python"), "-c", "import harness, typer; print(harness.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr

    run = installed(str(venv / "bin" / "edgebench"), "run", "--suite", "tiny.toml", "--repeat", "1", "--results", "results", timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "prefill tok/s" in run.stdout and "decode tok/s" in run.stdout
    (runtime,) = (p for p in (cache / "runtimes").iterdir() if p.is_dir())
    installed_probe = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "harness" / "probe"
    log = (runtime / "build.log").read_text()
    assert f"{installed_probe / 'edgebench-probe.c'}" in log and f"{installed_probe / 'edgebench-bandwidth.c'}" in log
    assert (runtime / "bin" / "edgebench-probe").is_file()

    (report,) = (elsewhere / "results" / "runs").glob("*/report.html")
    html = report.read_text()
    assert "could not be read" not in html and "smollm2-orin-nano-super-mlc-int4" in html  # the shipped claims loaded
    claims = installed(str(venv / "bin" / "edgebench"), "claims", "--results", "results")
    assert claims.returncode == 0 and "NVIDIA Jetson AI Lab benchmark tables" in claims.stdout, claims.stderr
    plan = installed(str(venv / "bin" / "edgebench"), "run", "--suite", "quick", "--dry-run", "--results", "results")
    assert plan.returncode == 0 and "plan: suite quick" in plan.stdout, plan.stderr  # a built-in suite from the wheel
