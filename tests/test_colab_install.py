"""The Colab install cell, run as Colab runs it, against Colab's own versions.

Colab preinstalls torch, torchvision, numpy, matplotlib, ipywidgets, tqdm, PyYAML and
Pillow, and its kernel imports several of them (ipywidgets among them) when it starts: if
the install cell upgrades any of them, the new version is not the one the kernel runs until
the reader restarts the runtime. Their versions live in one place, with the date they were
taken: `companion.run.colab.COLAB_PREINSTALLED`.

The model: a new virtualenv sees those distributions at Colab's versions and nothing else.
ipywidgets (and ipython_genutils, which 7.x imports) are Colab's real wheels, fetched by
`make colab-wheels` into .cache/colab-wheels; the others link this project's .venv code in,
through a .pth file (the way a system site directory is seen), under metadata that gives
Colab's version (code and version differ there: what is modelled is pip's decision, which
reads the metadata). Their own requirements are dropped from that metadata, as Colab's
environment is taken to be consistent. Then the notebooks' install cell runs, exactly as
written, with `google.colab` present, the repository's URL replaced by this checkout, and
Colab's versions as a pip constraints file (PIP_CONSTRAINT): pip clones the checkout at the
pinned ref and builds it, with no package index. A requirement that Colab's versions do not
meet fails here (pip would upgrade it on Colab, and the reader would have to restart);
every distribution's version is compared before and after the cell, and only `companion`
may appear. The build backend (setuptools), which pip would fetch into its isolated build
environment, comes from a local wheel repacked from the installed setuptools.
Then every import statement of every notebook runs there, from a folder outside the
checkout, and `companion` must come from the installed package; and each interactive
explorer is built, its sliders moved and its widget state exported, with Colab's
ipywidgets 7 and with this project's ipywidgets 8.

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
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from companion.run import colab

ROOT = Path(__file__).resolve().parent.parent
COLAB_WHEELS_DIR = ROOT / ".cache" / "colab-wheels"
# What the model links in from .venv, with what those need: Colab's packages, pip itself and
# the kernel (ipywidgets 7 imports ipykernel; 8 only `comm`).
COLAB_PREINSTALLED = ["pip", "ipykernel", *colab.COLAB_PREINSTALLED]
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


def _colab_metadata(dist: md.Distribution, version: str) -> str:
    """The distribution's METADATA with Colab's version and without its own requirements."""
    lines = []
    for line in dist.read_text("METADATA").split("\n\n", 1)[0].splitlines():
        if line.startswith("Version:"):
            line = f"Version: {version}"
        if not line.startswith("Requires-Dist:"):
            lines.append(line)
    return "\n".join(lines) + "\n\n"


def link_site(dists: list[md.Distribution], site: Path) -> None:
    """Symlink each distribution's top-level files and folders into site. A distribution
    that Colab preinstalls gets a .dist-info of its own that gives Colab's version; one
    that the Colab wheels replace is left out."""
    site.mkdir(parents=True)
    for dist in dists:
        name = _norm(dist.metadata["Name"])
        if name in colab.COLAB_WHEELS:
            continue
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, site / top
            if name in colab.COLAB_PREINSTALLED and top.endswith(".dist-info"):
                version = colab.COLAB_PREINSTALLED[name]
                info = site / f"{dist.metadata['Name'].replace('-', '_')}-{version}.dist-info"
                info.mkdir()
                (info / "METADATA").write_text(_colab_metadata(dist, version))
                (info / "INSTALLER").write_text("colab-model\n")
            elif src.exists() and not dst.exists():
                dst.symlink_to(src, target_is_directory=src.is_dir())


def install_colab_wheels(site: Path) -> None:
    """Unpack Colab's own wheels of COLAB_WHEELS (pure Python) into site."""
    wheels = {_norm(w.name.split("-")[0]): w for w in COLAB_WHEELS_DIR.glob("*.whl")}
    for name, version in colab.COLAB_WHEELS.items():
        whl = wheels.get(name)
        if whl is None or f"-{version}-" not in whl.name:
            pytest.fail(f"{COLAB_WHEELS_DIR} lacks {name}=={version}: run `make colab-wheels` "
                        "(it needs PyPI once; `make test` runs it)")
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
        for info in site.glob(f"{whl.name.split('-')[0]}-*.dist-info"):
            meta = info / "METADATA"
            head, _, body = meta.read_text().partition("\n\n")
            meta.write_text("\n".join(ln for ln in head.splitlines()
                                      if not ln.startswith("Requires-Dist:")) + "\n\n" + body)


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


def unmet_by_colab() -> list[str]:
    """The package's requirements that Colab's preinstalled versions do not meet."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unmet = []
    for dep in map(Requirement, deps):
        have = colab.COLAB_PREINSTALLED.get(_norm(dep.name))
        if have is not None and not dep.specifier.contains(Version(have), prereleases=True):
            unmet.append(f"{dep} (Colab has {dep.name} {have})")
    return unmet


def test_colab_versions_meet_every_requirement():
    """Fast: pip would upgrade a preinstalled package whose Colab version a requirement
    excludes, and a kernel that imported it needs a restart."""
    unmet = unmet_by_colab()
    assert not unmet, ("the install cell would upgrade packages that Colab preinstalls (its "
                       "kernel has imported some already: the reader would have to restart "
                       f"the runtime): {unmet}. Lower the floor in pyproject.toml.")


def test_colab_versions_are_dated_and_cover_the_books_packages():
    assert Version(colab.COLAB_PREINSTALLED["ipywidgets"]).major == 7
    assert {"torch", "torchvision", "ipywidgets", "matplotlib", "numpy", "tqdm"} \
        <= set(colab.COLAB_PREINSTALLED)
    assert colab.COLAB_PREINSTALLED_DATE in colab.colab_constraints()
    for name, version in colab.COLAB_PREINSTALLED.items():
        assert f"{name}=={version.split('+')[0]}" in colab.colab_constraints().splitlines()
    assert set(colab.COLAB_PREINSTALLED).isdisjoint(colab.COLAB_ALSO)
    assert len(colab.colab_constraints(also=True).splitlines()) \
        == 1 + len(colab.COLAB_PREINSTALLED) + len(colab.COLAB_ALSO)
    for name, version in colab.COLAB_WHEELS.items():
        assert colab.COLAB_PREINSTALLED.get(name, version) == version


SNAPSHOT = ("import importlib.metadata as _md\n"
            "def _versions():\n"
            "    return {d.metadata['Name'].lower().replace('_', '-'): d.version\n"
            "            for d in _md.distributions()}\n")


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
    install_colab_wheels(preinstalled)
    (site / "colab_preinstalled.pth").write_text(str(preinstalled) + "\n")
    wheels = tmp / "wheels"
    wheels.mkdir()
    repack_wheel(md.distribution(BUILD_BACKEND), wheels)
    constraints = tmp / "colab-constraints.txt"
    constraints.write_text(colab.colab_constraints())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", PIP_CONSTRAINT=str(constraints), HOME=str(tmp),
               MPLBACKEND="Agg")
    # the environment really is clean (no companion, no test or book tooling) and has
    # Colab's versions
    probe = subprocess.run([str(python), "-c", "import companion"], cwd=tmp, env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0, "companion is importable before the install cell ran"
    probe = subprocess.run([str(python), "-c", SNAPSHOT + "import json, ipywidgets\n"
                            "print(json.dumps([_versions(), ipywidgets.__version__]))"],
                           cwd=tmp, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    versions, widgets_version = json.loads(probe.stdout)
    for name, version in colab.COLAB_PREINSTALLED.items():
        assert versions.get(name) == version, (name, versions.get(name))
    assert widgets_version == colab.COLAB_PREINSTALLED["ipywidgets"]
    return python, tmp, env, site


@pytest.fixture(scope="module")
def installed(colab_env):
    """Runs the install cell in the Colab model as a started kernel would: what the kernel
    imports at start-up is imported first; the versions of every distribution are read
    before and after. Returns (result, versions before, versions after)."""
    python, tmp, env, site = colab_env
    url, ref = colab.repository()
    spec = colab.install_spec()
    assert url in spec
    local_spec = spec.replace(url, f"file://{ROOT}")
    cell = colab.install_cell().replace(spec, local_spec)
    assert "subprocess.run([sys.executable, \"-m\", \"pip\", \"install\"" in cell
    runner = (SNAPSHOT +
              "import sys, types, json, atexit\n"
              "import ipywidgets, numpy, matplotlib, tqdm, yaml, PIL  # a started kernel\n"
              "_before = _versions()\n"
              "atexit.register(lambda: print('VERSIONS', json.dumps([_before, _versions()])))\n"
              "sys.modules['google'] = types.ModuleType('google')\n"
              "sys.modules['google.colab'] = types.ModuleType('google.colab')\n" + cell)
    run = subprocess.run([str(python), "-c", runner], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=600)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("VERSIONS ")), None)
    before, after = json.loads(line.removeprefix("VERSIONS ")) if line else ({}, {})
    return run, before, after


def _pip_output(stdout: str) -> str:
    return "\n".join(ln for ln in stdout.splitlines() if not ln.startswith("VERSIONS "))


@pytest.mark.slow
def test_install_cell_changes_nothing_colab_has(colab_env, installed):
    run, before, after = installed
    assert run.returncode == 0, (
        "the install cell failed in the Colab model. pip has no package index here and "
        "Colab's versions as constraints, so it can use only what Colab preinstalls "
        f"(companion.run.colab.COLAB_PREINSTALLED, taken {colab.COLAB_PREINSTALLED_DATE}): a new "
        "requirement, or a floor that Colab's versions do not meet, fails here; on Colab pip "
        "would upgrade the package and the reader would have to restart the runtime. "
        f"Requirements Colab does not meet: {unmet_by_colab()}\n"
        f"{_pip_output(run.stdout)[-3000:]}\n{run.stderr[-5000:]}")
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    assert not changed, ("the install cell changed packages that Colab has (a running "
                         f"kernel would need a restart): {changed}")
    added = sorted(set(after) - set(before))
    assert added == ["companion"], f"the install cell installed more than companion: {added}"
    _, _, env, site = colab_env
    added = sorted(p.name for p in site.glob("*.dist-info"))
    assert len(added) == 1 and added[0].startswith("companion-"), added


@pytest.mark.slow
def test_notebook_imports_after_the_install_cell(colab_env, installed):
    python, tmp, env, _ = colab_env
    assert installed[0].returncode == 0, "the install cell failed (see the test above)"
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


# Every explorer the notebooks show, built, each slider moved, the widget state exported
# (what a rendered page embeds): with Colab's ipywidgets 7 and this project's 8.
EXPLORERS = r"""
import json, warnings
import matplotlib
matplotlib.use("Agg")
import ipywidgets, torch
from ipywidgets.embed import embed_data
from companion.widgets import kl_explorer
from companion.explorers import elbo_explorer, pinned_explorer
from companion.latent import latent_explorer
from companion.models.vae import VAE
from companion.toy import LinearGaussian

warnings.simplefilter("ignore", DeprecationWarning)
F64 = torch.float64
grid = torch.linspace(-6, 6, 201, dtype=F64)
lg = LinearGaussian(torch.tensor([[1.5], [-0.5]], dtype=F64), torch.tensor([0.2, 0.1], dtype=F64),
                    0.6)
made = {
    "kl": kl_explorer(torch.distributions.Normal(torch.tensor(0.5, dtype=F64),
                                                 torch.tensor(1.0, dtype=F64)), grid),
    "elbo": elbo_explorer(lg, torch.tensor([1.0, -0.4], dtype=F64)),
    "pinned": pinned_explorer(1.0, 1.5, 4),
    "latent": latent_explorer(VAE(latent_dim=4, hidden=(16,)), dims=[0, 1]),
}

def walk(w):
    yield w
    for c in getattr(w, "children", ()):
        yield from walk(c)

report = {"version": ipywidgets.__version__}
for key, w in made.items():
    sliders = [c for c in walk(w) if isinstance(c, ipywidgets.FloatSlider)]
    for s in sliders:
        s.value = s.min + 0.25 * (s.max - s.min)   # runs the redraw callback
    state = embed_data(views=[w], drop_defaults=False)["manager_state"]["state"]
    mine = [state[c.model_id] for c in walk(w)]
    report[key] = {
        "models": sorted({m["model_name"] for m in mine}),
        "controls": sorted({m["model_module_version"] for m in mine
                            if m["model_module"] == "@jupyter-widgets/controls"}),
        "values": [state[s.model_id]["state"]["value"] for s in sliders],
        "moved": [s.value for s in sliders],
    }
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["colab-ipywidgets-7", "venv-ipywidgets-8"])
def test_explorers_build_and_export_their_state(where, request):
    if where.startswith("colab"):
        python, tmp, env, _ = request.getfixturevalue("colab_env")
        assert request.getfixturevalue("installed")[0].returncode == 0
        major, controls = 7, "1.5.0"
    else:
        python, tmp, env = Path(sys.executable), ROOT, {**os.environ, "MPLBACKEND": "Agg"}
        major, controls = 8, "2.0.0"
    run = subprocess.run([str(python), "-c", EXPLORERS], cwd=tmp, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"an explorer fails with {where}:\n{run.stderr[-4000:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Version(report.pop("version")).major == major
    assert set(report) == {"kl", "elbo", "pinned", "latent"}
    for key, r in report.items():
        assert {"FloatSliderModel", "OutputModel"} <= set(r["models"]), (key, r)
        assert r["controls"] == [controls], (key, r)  # the widget state's schema
        assert r["values"] == r["moved"] and len(r["moved"]) >= 2, (key, r)
