"""`make weights`: train the shipped set (companion/weights) where it is missing or stale.

    python tools/weights.py [--check] [--missing] [CHAPTER ...]

The chapters' notebooks are the list of what to train: each runs as a copy (nothing stored)
in the `cpu` profile on the book's own data (BOOK_OFFLINE=1), with BOOK_SHIP pointing at the
shipped folder, so that every run `fit` finishes is exported there with its manifest entry
(companion.run.shipped.export) and every model already shipped loads instead of training.
A chapter runs when the manifest has no record of it, or when its notebook's code changed
since that record (`code_hash`); CHAPTER arguments (numbers or stems: 9, 09, 09_ddpm_mnist)
run those chapters whatever the record says (with `--missing`, only those of them without a
current record: tools/outputs_device.sh --weights, call after call). The checkpoint cache is kept in
.cache/weights (BOOK_CACHE overrides), so a run stopped halfway resumes where it was; one
notebook at a time, and each training run's start and end are printed as they happen.

`--check` runs nothing: it lists the set (files, sizes, the largest first, the budget) and
the chapters that would run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

BUDGET_MB = 64


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def code_hash(path: Path) -> str:
    """The SHA-256 of a notebook's code cells: what decides which models it trains."""
    cells = json.loads(path.read_text())["cells"]
    code = "\n\x00".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def pick(args: list[str], manifest: dict) -> list[Path]:
    """The notebooks to run: those named, else those without a current record."""
    books = notebooks()
    if args:
        chosen = []
        for a in args:
            hits = [p for p in books if p.stem == a or p.stem.split("_")[0] == a.zfill(2)]
            if not hits:
                raise SystemExit(f"no chapter {a!r}: give a number (9) or a stem "
                                 f"({books[0].stem})")
            chosen += hits
        return chosen
    done = manifest.get("chapters", {})
    return [p for p in books if done.get(p.stem) != code_hash(p)]


def report(folder: Path, manifest: dict) -> int:
    """Print the set's files and sizes; 1 when it is over budget or files are missing."""
    models = manifest.get("models", {})
    files = {e["file"]: e for e in models.values()}
    sizes = sorted(((f, (folder / f).stat().st_size) for f in files if (folder / f).exists()),
                   key=lambda fs: -fs[1])
    total = sum(s for _, s in sizes)
    print(f"{folder}: {len(sizes)} files, {total / 2**20:.1f} MB of {BUDGET_MB} MB")
    for f, s in sizes[:10]:
        e = files[f]
        print(f"  {f}: {s / 2**20:.2f} MB, {e['dtype']}, {e['step']:,} updates, "
              f"{e['trained']['seconds']:.0f} s on {e['trained']['device']}")
    missing = sorted(set(files) - {f for f, _ in sizes})
    for f in missing:
        print(f"  missing: {f}")
    return int(total > BUDGET_MB * 2**20 or bool(missing))


def follow(log: Path, stop: threading.Event) -> None:
    """Print the training runs' start and end lines as fit writes them ($BOOK_TRAIN_LOG)."""
    seen = 0
    while not stop.is_set():
        if log.exists():
            lines = log.read_text().splitlines()
            for line in lines[seen:]:
                when, event, _desc, name, steps, *took = line.split("\t")
                print(f"  {when} {event:5} {name} {steps}{' ' + took[0] if took else ''}",
                      flush=True)
            seen = len(lines)
        stop.wait(2.0)


def run(chapters: list[Path], folder: Path) -> int:
    import run_notebooks

    from companion.run import shipped

    cache = Path(os.environ.get("BOOK_CACHE") or ROOT / ".cache" / "weights")
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "train-log.tsv"
    os.environ.update(BOOK_PROFILE="cpu", BOOK_OFFLINE="1", BOOK_SHIP=str(folder),
                      BOOK_CACHE=str(cache), BOOK_TRAIN_LOG=str(log))
    for nb in chapters:
        print(f"{nb.stem}: running a copy in the cpu profile; its runs go to {folder}",
              flush=True)
        os.environ["BOOK_CHAPTER"] = nb.stem
        log.unlink(missing_ok=True)
        stop = threading.Event()
        tail = threading.Thread(target=follow, args=(log, stop), daemon=True)
        tail.start()
        start = time.perf_counter()
        try:
            code = run_notebooks.execute([str(nb)], copy=True)
        finally:
            stop.set()
            tail.join()
        if code:
            print(f"{nb.stem} failed; what it finished is shipped, run again to go on")
            return code
        with shipped.editing(folder) as manifest:
            manifest.setdefault("chapters", {})[nb.stem] = code_hash(nb)
        print(f"{nb.stem}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return report(folder, shipped.read_manifest(folder))


def main(argv: list[str]) -> int:
    from companion.run import shipped

    folder = shipped.folder()
    check, missing = "--check" in argv, "--missing" in argv
    args = [a for a in argv if a not in ("--check", "--missing")]
    manifest = shipped.read_manifest(folder)
    chapters = pick(args, manifest)
    if missing:  # of the chapters named, those without a current record (a lease's next call)
        done = manifest.get("chapters", {})
        chapters = [p for p in chapters if done.get(p.stem) != code_hash(p)]
    if check:
        bad = report(folder, manifest)
        print("would run: " + (", ".join(p.stem for p in chapters) or "nothing"))
        return bad
    return run(chapters, folder)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
