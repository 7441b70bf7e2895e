"""The project's own files install and run everything: check they agree."""

import re
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject():
    project = pyproject()["project"]
    wanted = set(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name != "bench":  # the benchmarks' peers are not part of the book's environment
            wanted |= set(extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, (f"only in environment.yml: {sorted(listed - wanted)}; "
                              f"only in pyproject.toml: {sorted(wanted - listed)}")
    assert "-e ." in pip
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_fixed_dependency_choices():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert "jupyter-book<2" in extras["book"]  # 2.x fetches its theme from the network
    assert any(d.startswith("mlxtend") for d in extras["offline"])
    assert not any(d.startswith("mlxtend") for d in project["dependencies"])
    names = {re.split(r"[<>=!\[ ]", d)[0] for d in project["dependencies"]}
    assert {"torch", "torchvision", "matplotlib", "tqdm", "ipywidgets"} <= names
    assert pyproject()["tool"]["setuptools"]["packages"][0] == "companion"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, re.M)


def test_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book", "test", "outputs", "check-fast", "clean", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), target


@pytest.mark.slow
def test_the_wheel_ships_every_subpackage(tmp_path):
    """What Colab's install cell installs (a wheel built from pyproject.toml) holds every
    package of companion, companion.run and companion.models among them (issue 51)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    packages = sorted(".".join(p.parent.relative_to(ROOT).parts)
                      for p in (ROOT / "companion").rglob("__init__.py"))
    assert "companion.run" in packages and "companion.models" in packages
    assert sorted(pyproject()["tool"]["setuptools"]["packages"]) == packages
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info where it runs
    shutil.copytree(ROOT / "companion", src / "companion",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(tmp_path.glob("companion-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / "companion").rglob("*.py"):
        assert path.relative_to(ROOT).as_posix() in names, f"the wheel lacks {path}"
    # the shipped set's manifest goes with it (the files are fetched: companion.run.shipped)
    assert "companion/weights/manifest.json" in names
    assert not [n for n in names if n.endswith(".safetensors")], "the wheel holds weights"
