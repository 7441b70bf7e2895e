"""The Colab install cell, run as Colab runs it, in a clean environment.

A new virtualenv gets what Colab has preinstalled (torch, torchvision, numpy, matplotlib,
ipywidgets, tqdm, PyYAML, Pillow, pip, and what they depend on) and nothing else: those
distributions are linked in from this project's .venv, through a .pth file, the way a
system site directory is seen (pip treats them as installed and never deletes them).
Then the notebooks' install cell runs, exactly as written, with `google.colab` present and
the repository's URL replaced by this checkout, so pip clones it at the pinned ref and
builds it. pip gets no package index: if the install wanted to download or upgrade
anything Colab already has, it fails here instead of on a reader's GPU runtime. The
build backend (setuptools), which pip would fetch from PyPI into its isolated build
environment, comes from a local wheel repacked from the installed setuptools.
Finally every import statement of every notebook runs in that environment, from a folder
outside the checkout, and `companion` must come from the installed package.

Note: pip clones the checkout at the ref of `repository.branch` (committed work only).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from companion import colab

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# What Colab preinstalls, of what the book uses (plus pip itself).
COLAB_PREINSTALLED = ["pip", "torch", "torchvision", "numpy", "matplotlib", "ipywidgets",
                      "tqdm", "pyyaml", "pillow"]
BUILD_BACKEND = "setuptools"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(names: list[str]) -> list[md.Distribution]:
    """The installed distributions `names` and everything they require, extras included."""
    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        name = _norm(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = seen.get(name) or md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional platform-specific requirement not installed here
        seen[name] = dist
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": extra}):
                todo += [(r.name, "")] + [(r.name, e) for e in r.extras]
    return list(seen.values())


def link_site(dists: list[md.Distribution], site: Path) -> None:
    """Symlink each distribution's top-level files and folders (and its .dist-info) into site."""
    site.mkdir(parents=True)
    for dist in dists:
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, site / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src, target_is_directory=src.is_dir())


def repack_wheel(dist: md.Distribution, folder: Path) -> Path:
    """A wheel of an installed pure-Python distribution, made from its installed files."""
    base = Path(dist.locate_file(""))
    info = next(Path(str(f)).parts[0] for f in dist.files if ".dist-info" in str(f))
    tag = "py3-none-any"
    path = folder / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in dist.files:
            rel = Path(str(f))
            if (str(f).startswith("..") or "__pycache__" in rel.parts
                    or (rel.parts[0] == info and rel.name in skip)):
                continue
            data = (base / rel).read_bytes()
            whl.writestr(rel.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{rel.as_posix()},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def notebook_imports() -> list[str]:
    """Every top-level import statement in the notebooks' code cells, in order, once."""
    lines: list[str] = []
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(nb_path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            try:
                tree = ast.parse("\n".join(ln for ln in src.splitlines()
                                           if not ln.lstrip().startswith(("%", "!"))))
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    stmt = ast.unparse(node)
                    if stmt not in lines:
                        lines.append(stmt)
    return lines


@pytest.fixture(scope="module")
def colab_env(tmp_path_factory):
    """A venv holding Colab's preinstalled packages only; returns its python."""
    tmp = tmp_path_factory.mktemp("colab")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")],
                   check=True)
    python = tmp / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True).stdout.strip())
    preinstalled = tmp / "colab-dist-packages"
    link_site(closure(COLAB_PREINSTALLED), preinstalled)
    (site / "colab_preinstalled.pth").write_text(str(preinstalled) + "\n")
    wheels = tmp / "wheels"
    wheels.mkdir()
    repack_wheel(md.distribution(BUILD_BACKEND), wheels)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", HOME=str(tmp))
    # the environment really is clean: no companion, no test or book tooling
    probe = subprocess.run([str(python), "-c", "import companion"], cwd=tmp, env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0, "companion is importable before the install cell ran"
    return python, tmp, env, site


def test_install_cell_then_notebook_imports(colab_env):
    python, tmp, env, site = colab_env
    url, ref = colab.repository()
    spec = colab.install_spec()
    assert url in spec
    local_spec = spec.replace(url, f"file://{ROOT}")
    cell = colab.install_cell().replace(spec, local_spec)
    assert "subprocess.run([sys.executable, \"-m\", \"pip\", \"install\"" in cell
    # Run the install cell as Colab does: google.colab is imported there.
    runner = ("import sys, types\n"
              "sys.modules['google'] = types.ModuleType('google')\n"
              "sys.modules['google.colab'] = types.ModuleType('google.colab')\n" + cell)
    run = subprocess.run([str(python), "-c", runner], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (
        "the install cell failed in a Colab-like environment. pip has no package index here, "
        f"so it can use only what Colab preinstalls (modelled as {COLAB_PREINSTALLED} and "
        "their dependencies): a new requirement, or a version pin that Colab's packages do "
        "not meet, fails here (if Colab does preinstall it, add it to COLAB_PREINSTALLED):\n"
        f"{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    added = sorted(p.name for p in site.glob("*.dist-info"))
    assert len(added) == 1 and added[0].startswith("companion-"), \
        f"the install cell installed more than companion into Colab's environment: {added}"

    imports = notebook_imports()
    assert "import companion" in imports
    script = "\n".join(imports + [
        "import companion, pathlib",
        "print(pathlib.Path(companion.__file__).resolve())",
        "companion.setup(seed=0)",
    ])
    run = subprocess.run([str(python), "-c", script], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, f"a notebook import fails after the install cell:\n{run.stderr}"
    where = Path(run.stdout.splitlines()[0])
    assert tmp in where.parents and ROOT not in where.parents, \
        f"companion was imported from {where}, not from the installed package"
    assert "profile=" in run.stdout


def test_install_cell_is_a_noop_outside_colab(colab_env):
    """Run anywhere else, the cell installs nothing (it only imports sys)."""
    python, tmp, env, _ = colab_env
    cell = colab.install_cell().replace(colab.install_spec(), "'no-such-package'")
    run = subprocess.run([str(python), "-c", cell], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == ""
