"""What running each chapter costs, as the README states it: made from the stored notebooks.

    python tools/chapter_costs.py            # print the README's table
    python tools/chapter_costs.py --write    # put it into README.md between its markers
    python tools/chapter_costs.py --check    # exit 1 where README.md's table is stale

The numbers are the book's status page's (book/_ext/execution_status.py reads them from each
notebook's stored run): the profile and device that made the stored outputs, the wall time
with the earlier chapters' models cached, and, where the loaded models record their training
time, the time from an empty cache. A chapter whose stored outputs come from a GPU has no
measured `cpu` time; the table says so rather than guess one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- chapter-costs:start -->", "<!-- chapter-costs:end -->"


def _status_module():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import execution_status
    finally:
        sys.path.pop(0)
    return execution_status


def rows(notebooks=None) -> list[tuple[str, str, str, str]]:
    """(chapter, stored run, cached, from an empty cache) for each notebook in book order."""
    es = _status_module()
    out = []
    numbers = es.chapter_numbers(ROOT)  # the book's numbers, not the files' NN
    for path in notebooks or es.toc_notebooks(ROOT):
        st = es.notebook_status(path)
        title = st.title.split(":")[0]
        n = numbers.get(Path(path).stem)
        chapter = f"{n}. {title}" if n else title
        where = f"`{st.profile}`, {es.device_cell(st).replace(es.NBSP, ' ')}"
        cached = es.format_seconds(st.seconds)
        if st.checkpoints != "reused":
            fresh = cached  # nothing loaded: the run trained everything it used
        elif st.loaded_train_seconds is not None:
            fresh = es.format_seconds(st.seconds + st.loaded_train_seconds)
        else:
            fresh = "not recorded"
        out.append((chapter, where, cached, fresh))
    return out


def table(notebooks=None) -> str:
    lines = ["| chapter | stored run | time, earlier models cached | from an empty cache |",
             "|---|---|---|---|"]
    lines += [f"| {c} | {w} | {t} | {f} |" for c, w, t, f in rows(notebooks)]
    return "\n".join(lines)


def replaced(text: str, new_table: str) -> str:
    """`text` with the block between the markers replaced by `new_table`."""
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}: put them where the "
                         "table belongs")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{new_table}\n{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="update README.md")
    group.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = ap.parse_args(argv)
    new = table()
    if not (args.write or args.check):
        print(new)
        return 0
    text = README.read_text()
    updated = replaced(text, new)
    if args.write:
        README.write_text(updated)
        return 0
    if updated != text:
        print("README.md's table of chapter costs is stale: run "
              "`python tools/chapter_costs.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
