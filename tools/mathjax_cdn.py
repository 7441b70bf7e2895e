"""A copy of _config.yml that loads MathJax from its CDN: `make book` without npm.

The book normally serves a local MathJax (`make mathjax`, which needs npm; see _config.yml).
Where npm is missing, `make book` builds with this copy instead, says so in one line, and the
pages then need the network to typeset equations. `make test` keeps requiring the local copy.

    python tools/mathjax_cdn.py VERSION OUT.yml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cdn_url(version: str) -> str:
    # MathJax 4's components are the package's top folder (MathJax 3's were under es5/)
    folder = "es5/" if version.split(".")[0] in ("2", "3") else ""
    return f"https://cdn.jsdelivr.net/npm/mathjax@{version}/{folder}tex-mml-chtml.js"


def cdn_config(version: str, root: Path = ROOT) -> dict:
    """_config.yml with the CDN's MathJax and no local copy; extension paths made absolute
    (Jupyter Book resolves them against the folder of the config file it is given)."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    sphinx = config.setdefault("sphinx", {})
    sphinx["local_extensions"] = {name: str((root / path).resolve()) for name, path
                                  in sphinx.get("local_extensions", {}).items()}
    settings = sphinx.setdefault("config", {})
    settings["mathjax_path"] = cdn_url(version)
    settings.pop("html_extra_path", None)
    # the font from the CDN too (MathJax's default there), not from the local copy's folder
    paths = settings.get("mathjax3_config", {}).get("loader", {}).get("paths", {})
    paths.pop("fonts", None)
    return config


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    version, out = argv
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.safe_dump(cdn_config(version), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
