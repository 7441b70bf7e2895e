"""Point each verdict's link at its own row of the evidence table (issue 94, item 9).

    python tools/evidence_links.py notebooks/18_variational_diffusion.ipynb ...
    python tools/evidence_links.py --check notebooks/*.ipynb   # exit 1 if a link could

A verdict glued from `Evidence.verdict` gives its row an anchor named for the glue
(companion.compare.Verdict); a stored run's table carries them (`<a id="ch18_fd_words">`).
Where a sentence still links such a phrase to the whole table,
`[{glue:text}`ch18_fd_words`](#ch18-evidence)`, this rewrites the link to the row,
`(#ch18_fd_words)`, in the notebook's Markdown cells and in its `.md` twin alike; nothing
is executed, outputs stay as they are, and a second run changes nothing. A phrase whose
row has no anchor in the stored run (the chapter was stored before the rows had them, or
the glue is a sentence built around the phrase) keeps its link to the table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colab_links as links  # noqa: E402  (tools/ is no package)

LINK = re.compile(r"\[(?P<text>[^\]]*?\{glue:text\}`(?P<key>[\w-]+)(?::[^`]*)?`[^\]]*)\]"
                  r"\(#(?P<label>ch\d+-evidence)\)")


def row_anchors(nb: dict) -> set[str]:
    """The anchors of the evidence rows in a notebook's stored Markdown outputs."""
    return {n for text in links.markdown_outputs(nb) for n in links.targets(text)}


def rewired(text: str, anchors: set[str]) -> tuple[str, int]:
    """text with every table link of an anchored phrase pointed at its row; the count."""
    n = 0

    def swap(m: re.Match) -> str:
        nonlocal n
        if m["key"] not in anchors:
            return m[0]
        n += 1
        return f"[{m['text']}](#{m['key']})"

    return LINK.sub(swap, text), n


def rewire(ipynb: Path, check: bool = False) -> int:
    """Rewire a notebook and its `.md` twin (check: only count); the links that changed."""
    nb = json.loads(ipynb.read_text())
    anchors = row_anchors(nb)
    total = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"])
        new, n = rewired(source, anchors)
        if n:
            total += n
            cell["source"] = new.splitlines(keepends=True)
    twin = ipynb.with_suffix(".md")
    twin_text = twin.read_text() if twin.exists() else ""
    new_twin, n_twin = rewired(twin_text, anchors)
    if n_twin != total and twin.exists():
        raise SystemExit(f"{ipynb.name}: {total} links to rewire in the notebook, {n_twin} in "
                         f"{twin.name}; run `jupytext --sync {ipynb}` first")
    if total and not check:
        ipynb.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        twin.write_text(new_twin)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a "
                    "link to a table could land on its row")
    args = ap.parse_args(argv)
    left = 0
    for path in args.notebooks:
        n = rewire(path, check=args.check)
        if n:
            print(f"{path.name}: {n} link(s) {'could land' if args.check else 'now land'} "
                  "on their rows")
        left += n
    return 1 if args.check and left else 0


if __name__ == "__main__":
    sys.exit(main())
