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


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or [*sorted((ROOT / "notebooks").glob("[0-9]*.*")),
                                         ROOT / "README.md"]
    for f in files:
        if f.suffix in {".ipynb", ".md"} and rewrite(f):
            print(f"updated {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
