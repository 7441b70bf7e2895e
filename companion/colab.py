"""The generated part of every notebook's header, from the one `repository.url`.

Cell 1 carries the Colab badge for that notebook; cell 2 installs `companion` on Colab
only, at the book's pinned ref (`repository.branch` in _config.yml). After changing the
URL or the ref, run `python -m companion.colab` to rewrite every notebook, twin and the
README's badges;
tests/test_notebooks.py fails while any of them disagrees.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
SPEC_RE = re.compile(r"'companion @ git\+[^']*'")

# What a Colab GPU runtime has preinstalled, of what the book uses: the one place these
# versions live (tests/test_colab_install.py models Colab with them, as a pip constraints
# file). A Colab kernel imports several of them when it starts (ipywidgets among them), so
# the install cell must leave every one as it is: an upgrade means "restart the runtime".
# Taken 2026-11-23, not from a live runtime (none is reachable from where the book is
# made) but from public reports: torch 2.9.0 / torchvision 0.24.0 from googlecolab/colabtools
# issue 5661 (Colab on torch 2.9, January 2026), numpy 2.0.2 from a report of August 2025,
# ipywidgets 7.7.1 (Colab's pin for years; the version the book's issue names). matplotlib,
# tqdm, PyYAML and Pillow are assumed. Refresh from `!pip freeze` on a Colab runtime.
COLAB_PREINSTALLED_DATE = "2026-11-23"
COLAB_PREINSTALLED = {
    "torch": "2.9.0+cu126",
    "torchvision": "0.24.0+cu126",
    "numpy": "2.0.2",
    "matplotlib": "3.10.0",
    "tqdm": "4.67.1",
    "ipywidgets": "7.7.1",
    "pyyaml": "6.0.2",
    "pillow": "11.3.0",
}
# Pure-Python distributions whose Colab version the install test runs for real (the others
# are modelled by their metadata only): downloaded by `make colab-wheels`.
COLAB_WHEELS = {"ipywidgets": COLAB_PREINSTALLED["ipywidgets"], "ipython-genutils": "0.2.0"}


def colab_constraints() -> str:
    """COLAB_PREINSTALLED as a pip constraints file."""
    lines = [f"# Colab's preinstalled versions, taken {COLAB_PREINSTALLED_DATE}"]
    lines += [f"{name}=={version}" for name, version in COLAB_PREINSTALLED.items()]
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
    """The Colab address that opens `notebook` (a path relative to the repository root)."""
    url, ref = repository(root)
    return f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}" \
           f"/blob/{ref}/{notebook}"


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
