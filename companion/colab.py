"""The generated part of every notebook's header, from the one `repository.url`.

Cell 1 carries the Colab badge for that notebook; cell 2 installs `companion` on Colab
only, at the book's pinned ref (`repository.branch` in _config.yml). After changing the
URL or the ref, run `python -m companion.colab` to rewrite every notebook and twin;
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
    return (
        "import sys\n\n"
        'if "google.colab" in sys.modules:  # on Colab only: install the book\'s package\n'
        "    import subprocess\n\n"
        f"    spec = {install_spec(root)}\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)\n'
    )


def rewrite(path: Path, root: Path = ROOT) -> bool:
    """Put the current badge and install spec into a notebook or its MyST twin."""
    nb_rel = path.with_suffix(".ipynb").resolve().relative_to(root).as_posix()
    text = path.read_text()
    new = BADGE_RE.sub(lambda _: badge(nb_rel, root), text)
    new = SPEC_RE.sub(lambda _: install_spec(root), new)
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("[0-9]*.*"))
    for f in files:
        if f.suffix in {".ipynb", ".md"} and rewrite(f):
            print(f"updated {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
