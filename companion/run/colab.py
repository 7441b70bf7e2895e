"""The generated part of every notebook's header, from the one `repository.url`.

Cell 1 carries the Colab badge for that notebook (it opens the notebook's Colab edition on
EDITION_BRANCH); cell 2 installs `companion` on Colab only, at the book's pinned ref
(`repository.branch` in _config.yml; the edition pins the commit it was made from). After
changing the URL or the ref, run `python -m companion.run.colab` to rewrite every notebook,
twin and the README's badges;
tests/test_notebooks.py fails while any of them disagrees.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# The branch that holds the Colab edition of every chapter (tools/colab_edition.py: the
# MyST resolved as the web page shows it), at the notebooks' own paths; the Pages workflow
# publishes it. Every badge and launch button opens the edition there.
EDITION_BRANCH = "colab"
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
SPEC_RE = re.compile(r"'companion @ git\+[^']*'")

# What a Colab GPU runtime has preinstalled, of what the book uses: the one place these
# versions live (tests/test_colab_install.py models Colab with them, as a pip constraints
# file; `make test-colab` builds a Python 3.13 venv holding them and runs every chapter).
# A Colab kernel imports several of them when it starts (ipywidgets among them), so the
# install cell must leave every one as it is: an upgrade means "restart the runtime".
# Source: Colab's own list of its GPU image, googlecolab/backend-info, pip-freeze.gpu.txt
# at commit a724079 of 2026-08-19 ("Upgrade to Python 3.13"; os-info-gpu.txt: Python
# 3.13.15). Colab's torch wheels carry +cu128; PyPI's torch 2.11.0 is the same release.
COLAB_PREINSTALLED_DATE = "2026-08-19"
COLAB_PYTHON = "3.13"
COLAB_PREINSTALLED = {
    "torch": "2.11.0+cu128",
    "torchvision": "0.26.0+cu128",
    "numpy": "2.1.3",
    "matplotlib": "3.10.0",
    "tqdm": "4.67.3",
    "ipywidgets": "7.7.1",
    "pyyaml": "6.0.3",
    "pillow": "11.3.0",
    "scipy": "1.16.3",
    "mlxtend": "0.23.4",
    # the shipped weights' format (companion.run.shipped); the same list at its torch 2.11
    # state (commit 03a8903) and at its torch 2.10 state (4647a1d) both give 0.7.0
    "safetensors": "0.7.0",
}
# The kernel and notebook runner of the same image, and the other distributions the book's
# packages pull in there (same source): `make test-colab` pins them too, so that the venv
# holds Colab's versions of everything the chapters import.
COLAB_ALSO = {
    "pip": "24.1.2", "setuptools": "75.2.0",
    "ipython": "7.34.0", "ipykernel": "6.17.1", "jupyter-client": "7.4.9",
    "jupyter-core": "5.9.1", "nbclient": "0.10.4", "nbformat": "5.11.1",
    "traitlets": "5.7.1", "tornado": "6.5.7", "pyzmq": "26.2.1", "debugpy": "1.8.15",
    "widgetsnbextension": "3.6.10", "jupyterlab-widgets": "3.0.16",
    "ipython-genutils": "0.2.0", "matplotlib-inline": "0.2.2", "nest-asyncio": "1.6.0",
    "pandas": "2.2.3", "scikit-learn": "1.6.1", "joblib": "1.5.3", "threadpoolctl": "3.6.0",
    "contourpy": "1.3.3", "cycler": "0.12.1", "fonttools": "4.63.0", "kiwisolver": "1.5.0",
    "pyparsing": "3.3.2", "python-dateutil": "2.9.0.post0", "pytz": "2025.2",
    "sympy": "1.14.0", "networkx": "3.6.1", "jinja2": "3.1.6", "fsspec": "2025.3.0",
    "filelock": "3.32.3", "markupsafe": "3.0.3", "mpmath": "1.3.0", "triton": "3.6.0",
}
# Pure-Python distributions whose Colab version the install test runs for real (the others
# are modelled by their metadata only): downloaded by `make colab-wheels`.
COLAB_WHEELS = {"ipywidgets": COLAB_PREINSTALLED["ipywidgets"], "ipython-genutils": "0.2.0"}


def colab_constraints(also: bool = False) -> str:
    """COLAB_PREINSTALLED (and COLAB_ALSO) as a pip constraints file, without local tags
    (+cu128: PyPI's wheels of the same release carry none)."""
    lines = [f"# Colab's preinstalled versions, taken {COLAB_PREINSTALLED_DATE}"]
    pins = {**COLAB_PREINSTALLED, **(COLAB_ALSO if also else {})}
    lines += [f"{name}=={version.split('+')[0]}" for name, version in pins.items()]
    return "\n".join(lines) + "\n"


def repository(root: Path = ROOT) -> tuple[str, str]:
    """(url, ref) from _config.yml's `repository` section."""
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    repo = cfg.get("repository", {})
    url, ref = repo.get("url", "").rstrip("/"), repo.get("branch", "main")
    if not url.startswith("https://github.com/"):
        raise ValueError(f"repository.url in _config.yml must be a GitHub URL, got {url!r}")
    return url, ref


def colab_url(notebook: str, root: Path = ROOT) -> str:
    """The Colab address that opens the edition of `notebook` (a path relative to the
    repository root) on EDITION_BRANCH."""
    url, _ = repository(root)
    return f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}" \
           f"/blob/{EDITION_BRANCH}/{notebook}"


def badge(notebook: str, root: Path = ROOT) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, root)})"


def install_spec(root: Path = ROOT) -> str:
    """The pip requirement the Colab install cell uses (quoted as it appears in the cell)."""
    url, ref = repository(root)
    return f"'companion @ git+{url}@{ref}'"


def install_cell(root: Path = ROOT) -> str:
    """The Colab-only install lines that open every notebook's setup cell."""
    # the spec sits at column 0 and the call is wrapped: every line fits the rendered column
    return (
        "import sys\n\n"
        f"SPEC = {install_spec(root)}\n"
        'if "google.colab" in sys.modules:  # on Colab only: install the book\'s package\n'
        "    import subprocess\n\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", SPEC],\n'
        "                   check=True)\n"
    )


def rewrite(path: Path, root: Path = ROOT) -> bool:
    """Put the current badges and install spec into a notebook, its MyST twin or the README.

    Each badge keeps the notebook it names (`notebooks/NN_name.ipynb`); a notebook's own
    badge that names no notebook gets the notebook's path.
    """
    own = path.with_suffix(".ipynb").resolve()
    own_rel = own.relative_to(root).as_posix() if own.is_relative_to(root) else None
    text = path.read_text()

    def fresh(match: re.Match) -> str:
        named = re.search(r"notebooks/[\w.-]+\.ipynb", match.group(0))
        target = named.group(0) if named else own_rel
        return badge(target, root) if target else match.group(0)

    new = BADGE_RE.sub(fresh, text)
    new = SPEC_RE.sub(lambda _: install_spec(root), new)
    if new != text:
        path.write_text(new)
    return new != text


def readme_badges(root: Path = ROOT) -> list[tuple[str, str]]:
    """(badge as written, badge as generated) for every Colab badge in the README."""
    text = (root / "README.md").read_text()
    pairs = []
    for m in BADGE_RE.finditer(text):
        named = re.search(r"notebooks/[\w.-]+\.ipynb", m.group(0))
        pairs.append((m.group(0), badge(named.group(0), root) if named else ""))
    return pairs


def download_colab_wheels(folder: Path) -> None:
    """Fetch the wheels of COLAB_WHEELS into `folder` (needs PyPI; `make colab-wheels`)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                    str(folder), *(f"{n}=={v}" for n, v in COLAB_WHEELS.items())], check=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--colab-wheels"]:
        download_colab_wheels(Path(argv[1]))
        return 0
    files = [Path(a) for a in argv] or [*sorted((ROOT / "notebooks").glob("[0-9]*.*")),
                                         ROOT / "README.md"]
    for f in files:
        if f.suffix in {".ipynb", ".md"} and rewrite(f):
            print(f"updated {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
