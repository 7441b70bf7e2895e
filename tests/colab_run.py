"""`make test-colab`: every chapter, top to bottom, in Colab's own versions.

Colab runs Python 3.13 with the versions in `companion.run.colab` (COLAB_PREINSTALLED and
COLAB_ALSO, from Colab's published package list). This script

1. builds a Python 3.13 virtual environment holding exactly those versions
   (.cache/colab-venv; rebuilt only when the table or the Python changes: the first build
   downloads torch and its CUDA libraries from PyPI, several GB, later runs reuse it);
2. installs the book's package the way every notebook's install cell does
   (`pip install 'companion @ git+<repository>@<ref>'`, the repository being this checkout),
   and fails if that changes any distribution Colab preinstalls (on Colab, each change is a
   "restart the runtime" prompt);
3. executes every chapter's Colab edition (tools/colab_edition.py: what a badge opens) top
   to bottom with that kernel, from a folder outside the
   checkout (so `companion` is the installed package), in a fresh checkpoint cache:
   the `ci` profile by default, or the `gpu` profile's smoke run with `--smoke`
   (BOOK_PROFILE=gpu BOOK_SMOKE=1: the gpu models and code paths, a couple of steps each).

Without a Python 3.13 (PYTHON313, `python3.13` on PATH, or pyenv's 3.13.x) it says so and
exits 0, unless COLAB_REQUIRED=1 (as .ci/run sets), which makes that a failure.

    python tests/colab_run.py [--smoke] [--jobs 2] [notebooks/NN_name.ipynb ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from companion.run import colab  # noqa: E402

VENV = ROOT / ".cache" / "colab-venv"
PY = VENV / "bin" / "python"
# The asserts the smoke run lets fail: those on what a trained model achieves, which a
# model of two optimizer steps cannot meet. Any other assert that fails, fails the run.
UNTRAINED = Path(__file__).with_name("smoke_untrained.txt")

# Runs one notebook. In the smoke run a failed assert does not stop its cell: a first hidden
# cell makes IPython rewrite `assert c, m` into `if not c: record(c's source)`, so that the
# code after it still runs, and a last hidden cell prints what was recorded; every other
# error is listed with its cell (the notebook's own numbering of code cells).
SOFT_ASSERTS = r"""
import ast as _ast
__smoke_failed__ = []
def __smoke_assert__(test):
    __smoke_failed__.append([get_ipython().execution_count - 2, test])
class _SoftAssert(_ast.NodeTransformer):
    def visit_Assert(self, node):
        call = _ast.Call(_ast.Name("__smoke_assert__", _ast.Load()),
                         [_ast.Constant(_ast.unparse(node.test))], [])
        new = _ast.If(_ast.UnaryOp(_ast.Not(), node.test), [_ast.Expr(call)], [])
        return _ast.copy_location(new, node)
get_ipython().ast_transformers.append(_SoftAssert())
"""
RUN_ONE = r"""
import json, sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
smoke = sys.argv[3] == "1"
code = [c for c in nb.cells if c.cell_type == "code"]
if smoke:
    first, last = nbformat.v4.new_code_cell(sys.argv[4]), nbformat.v4.new_code_cell(
        "import json; print('ASSERTS ' + json.dumps(__smoke_failed__))")
    nb.cells = [first] + nb.cells + [last]
# startup_timeout: on two busy cores a kernel can take over nbclient's 60 s to start
from datetime import datetime, timezone
began = datetime.now(timezone.utc)
NotebookClient(nb, timeout=900, startup_timeout=300, kernel_name="python3", allow_errors=smoke,
               resources={"metadata": {"path": sys.argv[2]}}).execute()
ended = datetime.now(timezone.utc)
errors = [(i, o.ename, (o.evalue or "").splitlines()[:1])
          for i, c in enumerate(code)
          for o in c.get("outputs", []) if o.output_type == "error"]
asserts = []
if smoke:
    for o in nb.cells[-1].get("outputs", []):
        if o.output_type == "stream" and "ASSERTS " in o.text:
            asserts = json.loads(o.text.split("ASSERTS ", 1)[1])
def _when(c, key):  # nbclient's record of a cell's start or end
    t = c.get("metadata", {}).get("execution", {}).get(key)
    return datetime.fromisoformat(t.replace("Z", "+00:00")) if t else None
def _seconds(c):
    a, b = _when(c, "iopub.execute_input"), _when(c, "shell.execute_reply")
    return (b - a).total_seconds() if a and b else 0.0
slowest = sorted(((round(_seconds(c), 1), i) for i, c in enumerate(code)), reverse=True)[:3]
# the time outside the cells: the kernel's start before the first, its shutdown after the last
# (a chapter once took 925 s with 25 s in its cells: say which)
ran = [c for c in nb.cells if c.cell_type == "code"]
first, last = _when(ran[0], "iopub.execute_input"), _when(ran[-1], "shell.execute_reply")
print("OUTSIDE " + json.dumps([round((first - began).total_seconds()) if first else None,
                              round((ended - last).total_seconds()) if last else None]))
print("ERRORS " + json.dumps(errors))
print("SLOWEST " + json.dumps(slowest))
print("ASSERTS " + json.dumps(asserts))
"""
FREEZE = ("import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower()"
          ".replace('_', '-').replace('.', '-'): d.version for d in m.distributions()}))")


def find_python313() -> str | None:
    """A working Python 3.13: $PYTHON313, pyenv's newest 3.13.x, or python3.13 on PATH
    (pyenv's shim on PATH answers only where 3.13 is the selected version)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [os.environ.get("PYTHON313"),
                  *sorted(glob.glob(str(pyenv / "3.13*" / "bin" / "python3.13")), reverse=True),
                  shutil.which("python3.13")]
    for c in candidates:
        if c and subprocess.run([c, "-c", "import venv"], capture_output=True).returncode == 0:
            return c
    return None


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def build_venv(python: str) -> None:
    """Create .cache/colab-venv with Colab's versions, unless it already holds them."""
    version = run([python, "-c", "import sys; print(sys.version.split()[0])"],
                  capture_output=True).stdout.strip()
    if not version.startswith(colab.COLAB_PYTHON + "."):
        raise SystemExit(f"{python} is Python {version}; Colab runs {colab.COLAB_PYTHON}")
    want = colab.colab_constraints(also=True) + f"# python {version}\n"
    stamp = VENV / ".colab-stamp"
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        print(f"test-colab: reusing {VENV.relative_to(ROOT)} (Python {version})")
        return
    print(f"test-colab: building {VENV.relative_to(ROOT)} with Python {version} and Colab's "
          f"versions of {colab.COLAB_PREINSTALLED_DATE} (first time: downloads torch)")
    shutil.rmtree(VENV, ignore_errors=True)
    run([python, "-m", "venv", str(VENV)])
    constraints = VENV / "colab-constraints.txt"
    constraints.write_text(colab.colab_constraints(also=True))
    pins = {**colab.COLAB_PREINSTALLED, **colab.COLAB_ALSO}
    run([str(PY), "-m", "pip", "install", "-q", f"pip=={pins['pip']}"])
    names = [n for n in pins if n != "pip"]
    run([str(PY), "-m", "pip", "install", "-q", "-c", str(constraints), *names])
    stamp.write_text(want)


def installed() -> dict[str, str]:
    # from "/", not the checkout: its companion.egg-info would count as installed
    return json.loads(run([str(PY), "-c", FREEZE], capture_output=True, cwd="/").stdout)


def install_book() -> None:
    """The install cell's pip command, with this checkout as the repository."""
    url, ref = colab.repository()
    ok = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", ref],
                        capture_output=True).returncode == 0
    spec = f"companion @ git+file://{ROOT}@{ref if ok else 'HEAD'}"
    before = installed()
    if before.pop("companion", None):  # a previous run's: install afresh, as on a new runtime
        run([str(PY), "-m", "pip", "uninstall", "-q", "-y", "companion"])
    run([str(PY), "-m", "pip", "install", "-q", "--no-cache-dir", spec])
    after = installed()
    changed = sorted(f"{n} {v} -> {after.get(n, 'removed')}" for n, v in before.items()
                     if after.get(n) != v)
    added = sorted(set(after) - set(before) - {"companion"})
    print(f"test-colab: installed {spec} (as the install cell does; {url} replaced by this "
          f"checkout): {len(changed)} preinstalled distributions changed, "
          f"{len(added)} added besides companion{': ' + ', '.join(added) if added else ''}")
    if changed:
        raise SystemExit("the install cell changes what Colab preinstalls (each one a restart "
                         f"prompt there): {changed}. Lower the floor in pyproject.toml.")


def untrained() -> set[tuple[str, str]]:
    """(chapter, assert condition) pairs listed in smoke_untrained.txt."""
    pairs = set()
    for line in UNTRAINED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            chapter, test = line.split("\t", 1)
            pairs.add((chapter, test))
    return pairs


def execute(notebook: Path, env: dict, workdir: Path) -> tuple[str, float, str, list, str, str]:
    """(name, seconds, error text or "", asserts that failed in the smoke run, how many of
    the slow networks the smoke run made repeat their output, its three slowest cells)."""
    start = time.time()
    smoke = env.get("BOOK_SMOKE") == "1"
    log = workdir / "repeats.tsv"  # companion.run.smoke writes a line per repeating network
    env = {**env, "BOOK_SMOKE_LOG": str(log)} if smoke else env
    proc = subprocess.run([str(PY), "-c", RUN_ONE, str(notebook), str(workdir),
                           "1" if smoke else "0", SOFT_ASSERTS], env=env, cwd=workdir,
                          capture_output=True, text=True)
    seconds = time.time() - start
    print(f"  ... {notebook.name} done in {seconds:.0f} s", flush=True)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-12:]
        return notebook.name, seconds, "\n".join(tail) or "?", [], "", ""
    lines = {ln.split(" ", 1)[0]: json.loads(ln.split(" ", 1)[1])
             for ln in proc.stdout.splitlines()
             if ln.startswith(("ERRORS ", "ASSERTS ", "SLOWEST ", "OUTSIDE "))}
    # an assert on what a two-step model achieves is expected to fail in the smoke run (it
    # is recorded, not raised); any exception is a bug in the profile's code path
    errors = [f"cell {i}: {name}: {' '.join(msg)}" for i, name, msg in lines["ERRORS"]]
    decisions = log.read_text().split() if log.exists() else []
    thinned = f"{decisions.count('repeats')} slow networks repeated their output"
    # where CI's time goes, per cell (issue 65, point 11): the notebook's own code-cell numbers
    slowest = "slowest cells " + ", ".join(f"{i} ({s:.0f} s)" for s, i in lines["SLOWEST"])
    start_s, stop_s = lines.get("OUTSIDE", [None, None])
    if (start_s or 0) + (stop_s or 0) > 60:  # outside the cells: the kernel, not the chapter
        slowest += f"; kernel start {start_s} s, shutdown {stop_s} s"
    return notebook.name, seconds, "\n".join(errors), lines["ASSERTS"], thinned, slowest


def editions(notebooks: list[Path], out: Path) -> list[Path]:
    """The Colab editions of `notebooks` (tools/colab_edition.py), written under `out`:
    what a student opens from a badge is what runs here."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "colab_edition.py"),
                           "--to-run", "--out", str(out), *map(str, notebooks)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"test-colab: the Colab editions failed to build:\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return [out / "notebooks" / nb.name for nb in notebooks]


def seed_ci_models(cache: Path) -> str:
    """Copy the ci profile's checkpoints from this checkout's cache (companion's cache_dir:
    $BOOK_CACHE or ~/.cache/companion, where `make test`'s nbval trained them) into the
    run's `cache`; what was copied, in words. A checkpoint of another configuration is
    refused by the recipe that loads it, as it would be in nbval."""
    from companion.run.checkpoint import cache_dir

    source = cache_dir() / "checkpoints"
    found = sorted(source.glob("*-ci.pt")) if source.is_dir() else []
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    for path in found:
        shutil.copy2(path, cache / "checkpoints" / path.name)
    return (f"{len(found)} ci checkpoints reused from {source}" if found else
            f"no ci checkpoints in {source}: every chapter trains its own")


PROFILES = {"ci": {"BOOK_PROFILE": "ci", "BOOK_SMOKE": "0"},
            "smoke": {"BOOK_PROFILE": "gpu", "BOOK_SMOKE": "1"}}
WHAT = {"ci": "ci profile", "smoke": "gpu profile, smoke run"}


def order(notebooks: list[Path], runs: list[str]) -> list[tuple[str, Path]]:
    """The (run, notebook) pairs in the order the pool takes them: the smoke run first, then
    the ci run, each from the last chapter down. The later chapters are the longest in both,
    so the long ones start first and the short early chapters fill the end: no core idles
    while the other finishes a long one (the two runs were two stages, each with its tail)."""
    return [(run, nb) for run in ("smoke", "ci") if run in runs for nb in notebooks[::-1]]


def report(run: str, results: list, allowed: set, seconds: float, torch: str) -> int:
    """Print one run's chapters and its summary line; the number that failed."""
    failed = 0
    for name, secs, error, asserts, thinned, slowest in sorted(results):
        chapter = name.removesuffix(".ipynb")
        other = [f"cell {cell}: assert {test}" for cell, test in asserts
                 if (chapter, test) not in allowed]
        if other:
            error = "\n".join([*other, f"(asserts not listed in {UNTRAINED.name} as "
                                "needing a trained model)", error]).strip()
        failed += bool(error)
        skipped = len(asserts) - len(other)
        print(f"  {'FAIL' if error else 'ok  '} {name} ({secs:.0f} s"
              + (f"; {thinned}" if run == "smoke" else "") + (f"; {slowest}" if slowest else "")
              + ")"
              + (f"; {skipped} asserts on a trained model let fail" if skipped else ""))
        if error:
            print("    " + error.replace("\n", "\n    "))
    print(f"test-colab ({WHAT[run]}, Python {colab.COLAB_PYTHON}, torch {torch}): "
          f"{len(results) - failed} of {len(results)} chapters ran top to bottom "
          f"({seconds:.0f} s of kernel time)")
    return failed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="the gpu profile's smoke run (BOOK_PROFILE=gpu BOOK_SMOKE=1)")
    ap.add_argument("--both", action="store_true",
                    help="the ci profile and the smoke run in one pool: one venv check, one "
                         "install, one set of editions, no core idle between them")
    ap.add_argument("--venv-only", action="store_true",
                    help="build (or check) the Colab venv and stop: .ci/run starts it while "
                         "`make test` runs, since the build mostly waits on the download")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reuse-ci-models", action="store_true",
                    help="start the ci run's cache with the ci profile's checkpoints that "
                         "nbval (`make test`) trained in this checkout's cache, instead of "
                         "training them again (the smoke run trains in Colab's versions)")
    ap.add_argument("notebooks", nargs="*")
    args = ap.parse_args(argv)
    python = find_python313()
    if python is None:
        msg = ("test-colab: no Python 3.13 found (set PYTHON313, put python3.13 on PATH, or "
               "`pyenv install 3.13`), so Colab's environment was not tested")
        if os.environ.get("COLAB_REQUIRED") == "1":
            print(msg, file=sys.stderr)
            return 1
        print(msg + "; skipped")
        return 0
    build_venv(python)
    if args.venv_only:
        return 0
    install_book()
    runs = ["ci", "smoke"] if args.both else ["smoke"] if args.smoke else ["ci"]
    notebooks = [Path(p).resolve() for p in args.notebooks] or \
        sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="colab-run-") as tmp:
        notebooks = editions(notebooks, Path(tmp) / "edition")
        print(f"test-colab: {len(notebooks)} Colab editions (tools/colab_edition.py), "
              f"run in the {' and the '.join(WHAT[r] for r in runs)}")
        envs = {}
        for run in runs:  # a cache each: the ci run's seeded, the smoke run's empty
            env = {**os.environ, **PROFILES[run], "BOOK_OFFLINE": "1",
                   "BOOK_CACHE": f"{tmp}/cache-{run}",
                   "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
                   "PYTHONPATH": ""}
            env.pop("VIRTUAL_ENV", None)
            env.pop("MPLBACKEND", None)  # Colab's kernel draws with the inline backend
            if args.jobs > 1:  # kernels side by side, each with its share of the cores: two
                # kernels with a thread per core each ran the smoke run 3x slower here
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
            envs[run] = env
        if "ci" in runs and args.reuse_ci_models:
            print(f"test-colab: {seed_ci_models(Path(envs['ci']['BOOK_CACHE']))}")
        start = time.time()
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            # each notebook gets a folder of its own, outside the checkout
            done = list(pool.map(
                lambda task: (task[0], execute(task[1], envs[task[0]],
                                               Path(tempfile.mkdtemp(dir=tmp)))),
                order(notebooks, runs)))
        torch = installed()["torch"]
        failed = 0
        for run in runs:
            results = [r for which, r in done if which == run]
            failed += report(run, results, untrained() if run == "smoke" else set(),
                             sum(r[1] for r in results), torch)
        print(f"test-colab: {len(done)} runs in {time.time() - start:.0f} s on "
              f"{max(1, args.jobs)} kernels at a time")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
