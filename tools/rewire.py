"""Follow issue 51's move of the machinery into `companion.run` in sources and notebooks.

    python tools/rewire.py notebooks/09_ddpm_mnist.md notebooks/09_ddpm_mnist.ipynb ...
    python tools/rewire.py --check FILE ...   # exit 1 if a file still needs it

What it rewrites (idempotent: a second run changes nothing):

- `companion.X` -> `companion.run.X` and `companion/X.py` -> `companion/run/X.py` for every
  machinery module X (MOVED), except the names `companion/__init__.py` re-exports and a
  call such as `companion.progress(...)`;
- `from companion import a, X, b` -> `from companion import a, b` and
  `from companion.run import X` (a new line where the import starts a line, `; ` inside one);
- `from companion.train import name` -> its new home for the names that left train.py
  (FROM_TRAIN: the precision choices and the checkpoint names train re-exported);
- in a notebook (`.md` twin and `.ipynb` alike), the setup cell (the first code cell: the
  Colab install lines, the imports, `companion.setup`) gets the `hide-input` tag, so the web
  page shows it collapsed, with its output (profile and device) in view; Colab and Jupyter
  run and show it as before.

A notebook's `.ipynb` is edited as JSON: only cell sources change; outputs, execution counts
and metadata stay as they are (nothing is executed). A `.md` twin is edited as text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

MOVED = ("checkpoint", "checks", "distributed", "runtime", "profiles", "progress", "memory",
         "results", "glue", "tables", "colab")
_NAMES = "|".join(MOVED)
_DOTTED = re.compile(rf"\bcompanion\.({_NAMES})\b(?!\s*\()")
_PATH = re.compile(rf"\bcompanion/({_NAMES})\.py\b")
# names companion.train held before the loop's machinery moved out (issue 51), and their homes
FROM_TRAIN = {name: "companion.run.precision" for name in (
    "autocast_dtype", "compile_mode", "default_optimizer", "try_compile")} | {
    name: "companion.run.checkpoint" for name in (
        "CheckpointBusyError", "CheckpointMismatchError", "CheckpointSaveError",
        "NonFiniteLossError", "NonFiniteWeightsError", "PathLock", "Resumed", "all_finite",
        "cache_dir", "check_storable", "check_writable", "identity", "load_checkpoint",
        "rng_state", "save_checkpoint", "set_rng_state")}
# the names end before a `;`, a quote, a comment or the line's end
_NAMES_END = r"(\([^)]*\)|[\w ,]*\w(?=[ \t]*(?:$|[;#\"'\n])))"
_FROM_TRAIN = re.compile(r"(^[ \t]*)?from companion\.train import " + _NAMES_END, re.M)
_FROM = re.compile(r"(^[ \t]*)?from companion import " + _NAMES_END, re.M)


def _split_from(m: re.Match) -> str:
    indent, names = m.group(1), m.group(2)
    items = [n.strip() for n in names.strip("() \t\n").split(",") if n.strip()]
    moved = [n for n in items if n.split(" as ")[0].strip() in MOVED]
    if not moved:
        return m.group(0)
    kept = [n for n in items if n not in moved]
    lines = [f"from companion{wing} import {', '.join(names)}"
             for wing, names in (("", kept), (".run", moved)) if names]
    if indent is not None:  # the import starts its line: one import a line
        return "\n".join(indent + line for line in lines)
    return "; ".join(lines)


def _split_from_train(m: re.Match) -> str:
    indent, names = m.group(1), m.group(2)
    items = [n.strip() for n in names.strip("() \t\n").split(",") if n.strip()]
    homes: dict[str, list[str]] = {}
    for n in items:
        homes.setdefault(FROM_TRAIN.get(n.split(" as ")[0].strip(), "companion.train"),
                         []).append(n)
    if list(homes) == ["companion.train"]:
        return m.group(0)
    lines = [f"from {home} import {', '.join(names)}" for home, names in homes.items()]
    if indent is not None:
        return "\n".join(indent + line for line in lines)
    return "; ".join(lines)


def rewire(text: str) -> str:
    """The text with every reference to a moved module following it to companion.run."""
    text = _FROM_TRAIN.sub(_split_from_train, text)
    text = _FROM.sub(_split_from, text)
    text = _DOTTED.sub(r"companion.run.\1", text)
    return _PATH.sub(r"companion/run/\1.py", text)


SETUP_TAG = "hide-input"
_MD_SETUP = re.compile(r"(^```\{code-cell\}[^\n]*\n)(:tags: \[([^\]]*)\]\n)?", re.M)


def _is_setup(source: str) -> bool:
    return "companion.setup(" in source and "google.colab" in source


def _tag_setup_md(text: str) -> str:
    """The first code cell of a MyST twin, tagged SETUP_TAG (when it is the setup cell)."""
    m = _MD_SETUP.search(text)
    if m is None:
        return text
    end = text.find("\n```", m.end())
    if not _is_setup(text[m.end():end]):
        return text
    tags = [t.strip() for t in (m.group(3) or "").split(",") if t.strip()]
    if SETUP_TAG in tags:
        return text
    line = f":tags: [{', '.join(tags + [SETUP_TAG])}]\n"
    return text[:m.start()] + m.group(1) + line + ("" if m.group(2) else "\n") + \
        text[m.end():]


def _tag_setup_ipynb(nb: dict) -> bool:
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code or not _is_setup("".join(code[0]["source"])):
        return False
    tags = code[0]["metadata"].setdefault("tags", [])
    if SETUP_TAG in tags:
        return False
    tags.append(SETUP_TAG)
    return True


def _edit_notebook(path: Path, edit) -> bool:
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    changed = _tag_setup_ipynb(nb)
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new = edit(source, cell)
        if new != source:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


def edit_file(path: Path, check: bool = False) -> bool:
    """Rewire one file in place; True when it changed (or, with check, would change)."""
    if path.suffix == ".ipynb":
        if check:
            nb = json.loads(path.read_text(encoding="utf-8"))
            return _tag_setup_ipynb(nb) or any(
                rewire("".join(c["source"])) != "".join(c["source"]) for c in nb["cells"])
        return _edit_notebook(path, lambda source, cell: rewire(source))
    text = path.read_text(encoding="utf-8")
    new = rewire(text)
    if path.suffix == ".md" and path.parent.name == "notebooks":
        new = _tag_setup_md(new)
    if new != text and not check:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if needed")
    args = ap.parse_args(argv)
    pending = [f for f in args.files if edit_file(f, check=args.check)]
    for f in pending:
        print(("needs rewiring: " if args.check else "rewired: ") + str(f))
    return 1 if args.check and pending else 0


if __name__ == "__main__":
    sys.exit(main())
