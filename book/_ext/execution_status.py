"""What each notebook costs to run: measured when its outputs were made, shown in the book.

Two measurements, both stored in the notebook next to the outputs they describe:
- every code cell carries nbclient's own timestamps (cell metadata `execution`), written by
  `jupyter execute`, whoever ran it;
- `make outputs` runs each notebook through this file (`python book/_ext/execution_status.py
  execute NB...`), which times the whole `jupyter execute` (kernel start and imports
  included) and stores that wall time in the notebook's metadata `book.execution`.
The wall time is shown when it belongs to the stored outputs (it ended within a minute of
the last cell); otherwise the span of the cells is shown, and the page says which.

The profile and device come from the line that `companion.setup()` prints in every notebook.
On a GPU the run also records torch's peak GPU memory (torch.cuda.max_memory_allocated in the
kernel, which `companion.setup()` writes to $BOOK_PEAK_LOG after every cell), and
`execution_status.py t4 NB...` runs a copy of each notebook under the T4 emulation
(BOOK_T4=1: fp16, 15 GB) and stores only its peak memory and time (metadata `book.t4`).
`execute --copy` runs copies in a temporary folder and stores nothing (a dry run);
`--into FOLDER` keeps each run in FOLDER/notebooks/ instead of in place (outputs_device.sh).

As a Sphinx extension (`sphinx.local_extensions` in _config.yml) it provides the
`execution-status` directive used by book/status.md: the table is made from the notebooks
at every build, so it cannot disagree with the outputs the book shows. A chapter in the
table of contents without complete measurements is a build warning (an error with -W).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP_LINE = re.compile(r"profile=(?P<profile>\S+) device=(?P<device>.+?) "
                        r"torch=(?P<torch>\S+) python=(?P<python>\S+)")
WALL_SLACK_S = 60  # the recorded wall time must end this close to the last cell's reply


@dataclass
class NotebookStatus:
    """The measured cost of one notebook's stored outputs.

    seconds:        wall time of `jupyter execute` ("wall"), or the span from the first
                    cell's start to the last cell's reply ("cells") when no wall time
                    belongs to these outputs.
    slowest_cell:   (seconds, index among code cells) of the most expensive cell.
    problems:       what keeps the measurement from being complete (empty when fine).
    """

    path: Path
    title: str = ""
    profile: str = "?"
    device: str = "?"
    torch: str = "?"
    executed: datetime | None = None
    seconds: float | None = None
    source: str = ""
    slowest_cell: tuple[float, int] | None = None
    cpus: int | None = None
    checkpoints: str = ""
    loaded: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    cuda_peak_mib: float | None = None  # torch.cuda.max_memory_allocated of the run
    cuda_reserved_mib: float | None = None  # torch.cuda.max_memory_reserved of the run
    device_peak_mib: float | None = None  # the whole device's, as nvidia-smi read it
    t4: dict | None = None  # the T4-emulated run's record (metadata book.t4), if any
    problems: list[str] = field(default_factory=list)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def notebook_status(path: Path) -> NotebookStatus:
    """Read the measurements stored in notebook `path` (.ipynb)."""
    path = Path(path)
    nb = json.loads(path.read_text())
    st = NotebookStatus(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            m = re.search(r"^#\s+(.+)$", src, re.M)
            if m:
                st.title = m.group(1).strip()
                break

    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    spans, missing = [], []
    for i, cell in enumerate(code):
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            spans.append((_time(ex["iopub.execute_input"]), _time(ex["shell.execute_reply"]), i))
        else:
            missing.append(i + 1)
        for out in cell.get("outputs", []):
            m = SETUP_LINE.search(_text(out))
            if m and st.profile == "?":
                st.profile, st.device, st.torch = m["profile"], m["device"], m["torch"]
    if not code:
        st.problems.append("no code cells")
        return st
    if missing:
        st.problems.append(f"code cells {missing} have no execution timestamps: the stored "
                           "outputs were not made by one `jupyter execute` run (run `make "
                           "outputs`)")
    if st.profile == "?":
        st.problems.append("no `profile=... device=...` line in the outputs (the setup cell "
                           "must call companion.setup())")
    if not spans:
        return st
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    if any(b[0] < a[1] - timedelta(seconds=1) for a, b in zip(spans[:-1], spans[1:],
                                                                 strict=True)):
        st.problems.append("cell timestamps are out of order: the outputs come from more "
                           "than one run (run `make outputs`)")
    st.executed = first
    st.seconds, st.source = (last - first).total_seconds(), "cells"
    slow = max(spans, key=lambda s: s[1] - s[0])
    st.slowest_cell = ((slow[1] - slow[0]).total_seconds(), slow[2])
    st.t4 = nb.get("metadata", {}).get("book", {}).get("t4")
    rec = nb.get("metadata", {}).get("book", {}).get("execution")
    if rec:
        finished = _time(rec["finished"])
        belongs = abs((finished - last).total_seconds()) <= WALL_SLACK_S
        if belongs and rec["seconds"] + 0.5 >= st.seconds:
            st.seconds, st.source = float(rec["seconds"]), "wall"
            st.cpus, st.checkpoints = rec.get("cpus"), rec.get("checkpoints", "")
            st.loaded = list(rec.get("loaded", []))
            st.versions = dict(rec.get("versions", {}))
            peak = rec.get("cuda_peak_mib") or {}
            st.cuda_peak_mib = peak.get("allocated_mib")
            st.cuda_reserved_mib = peak.get("reserved_mib")
            st.device_peak_mib = rec.get("gpu_memory_peak_mib")
    return st


# --- recording (make outputs) ---------------------------------------------------------------
def record(path: Path, seconds: float, finished: datetime,
           loaded: list[str] | None = None, gpu_peak_mib: int | None = None,
           cuda_peak: dict | None = None) -> None:
    """Store the wall time of the run that just made `path`'s outputs in its metadata.

    loaded: the checkpoints the run loaded instead of training (companion.fit writes their
    names to $BOOK_LOADED_LOG); "reused" on the status page means at least one.
    cuda_peak: torch's peak GPU memory in the kernel, {"allocated_mib", "reserved_mib"}
    (companion.run.runtime.cuda_peak_memory); None on a CPU.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata.setdefault("book", {})["execution"] = {
        "seconds": round(seconds, 1),
        "finished": finished.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "profile_env": os.environ.get("BOOK_PROFILE", ""),
        "versions": _versions(),
        "checkpoints": "reused" if loaded else "fresh",
        "loaded": sorted(set(loaded or [])),
    }
    if gpu_peak_mib is not None:  # device-wide, as nvidia-smi reads it every 200 ms
        nb.metadata["book"]["execution"]["gpu_memory_peak_mib"] = gpu_peak_mib
    if cuda_peak is not None:
        nb.metadata["book"]["execution"]["cuda_peak_mib"] = cuda_peak
    nbformat.write(nb, str(path))


def record_t4(path: Path, seconds: float, finished: datetime, cuda_peak: dict | None,
              returncode: int, error: str = "") -> None:
    """Store in `path`'s metadata (book.t4) what a run of a copy of it under the T4
    emulation (BOOK_T4=1) measured: its peak GPU memory, time, and whether it ran through
    (a chapter that needs more than the cap fails with torch.OutOfMemoryError)."""
    import nbformat

    from companion.run.runtime import T4_MEMORY_BYTES

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata.setdefault("book", {})["t4"] = {
        "seconds": round(seconds, 1),
        "finished": finished.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "cap_bytes": T4_MEMORY_BYTES,
        "cuda_peak_mib": cuda_peak,
        "ran_through": returncode == 0,
        "error": error[-500:],
        "versions": _versions(),
        "device": _cuda_name(),
    }
    nbformat.write(nb, str(path))


def _cuda_name() -> str:
    """The GPU's name as nvidia-smi gives it ('' without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def _versions() -> dict[str, str]:
    """The versions of the packages that shape the outputs, in the environment that ran them
    (`make outputs` runs the kernel with this same interpreter)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "numpy", "matplotlib"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _checkpoints(cache: str) -> set[str]:
    """Names of the checkpoints in the cache's checkpoints folder now."""
    folder = Path(cache) / "checkpoints"
    return {p.name for p in folder.glob("*.pt")} if folder.is_dir() else set()


def _gpu_memory_poller():
    """nvidia-smi printing the device's memory in use every 200 ms, or None without it."""
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used",
                                 "--format=csv,noheader,nounits", "-lms", "200"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def _stop_poller(proc) -> int | None:
    """The largest reading of a poller started by _gpu_memory_poller (MiB)."""
    if proc is None:
        return None
    proc.terminate()
    out, _ = proc.communicate()
    readings = [int(v) for v in out.split() if v.isdigit()]
    return max(readings) if readings else None


DEADLINE_VAR = "BOOK_RUN_DEADLINE"  # epoch seconds: outputs_device.sh's end of a call
STOPPED = 124  # the exit code of a run stopped at the deadline (as coreutils' timeout)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc): jupyter's kernel, which runs in
    a session of its own, so that a signal to jupyter's process group misses it."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _signal(pids: list[int], sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _smoke_copy(path: str) -> set[str]:
    """Prepare the copy `path` for the gpu profile's smoke run as `make test-smoke` runs a
    chapter (tests/colab_run.py): a first cell makes a failed assert a record instead of an
    error, a last one prints the records. Returns the asserts the smoke run lets fail in
    this chapter (tests/smoke_untrained.txt: those on what a trained model achieves)."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("colab_run", ROOT / "tests" / "colab_run.py")
    colab_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_run)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [nbformat.v4.new_code_cell(colab_run.SOFT_ASSERTS)] + nb.cells + [
        nbformat.v4.new_code_cell("import json; print('ASSERTS ' + json.dumps("
                                  "__smoke_failed__))")]
    nbformat.write(nb, path)
    chapter = Path(path).stem
    return {test for ch, test in colab_run.untrained() if ch == chapter}


def _smoke_verdict(path: str, allowed: set[str]) -> list[str]:
    """What failed in a smoke copy run with --allow-errors: every error, and every failed
    assert that smoke_untrained.txt does not list."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"][1:-1]  # the chapter's own
    bad = [f"code cell {i + 1}: {o.ename}: {(o.evalue or '').splitlines()[:1]}"
           for i, c in enumerate(code) for o in c.get("outputs", [])
           if o.output_type == "error"]
    failed = []
    for o in nb.cells[-1].get("outputs", []):
        if o.output_type == "stream" and "ASSERTS " in o.text:
            failed = json.loads(o.text.split("ASSERTS ", 1)[1])
    bad += [f"code cell {cell}: assert {test}" for cell, test in failed if test not in allowed]
    listed = sum(test in allowed for _, test in failed)
    print(f"  smoke run: {len(failed)} asserts failed, {listed} of them listed in "
          "tests/smoke_untrained.txt (on trained models)")
    return bad


def _jupyter_execute(path: str, env: dict, stderr=None,
                     allow_errors: bool = False) -> tuple[subprocess.Popen, list]:
    """`jupyter execute --inplace path`, started; stopped at $BOOK_RUN_DEADLINE if set.

    At the deadline its kernel gets SIGTERM first (companion.fit then ends its step, saves
    its checkpoint and stops, so that the next run resumes there), then 30 s later
    SIGKILL with jupyter itself. Returns (process, [True] once stopped) for `_finish`.
    """
    import signal
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "execute", "--inplace",
                             "--timeout=-1", *(["--allow-errors"] if allow_errors else []),
                             str(path)], env=env, stderr=stderr, text=stderr is not None)
    stopped: list = []
    deadline = env.get(DEADLINE_VAR, "").strip()
    if deadline:
        def stop():
            stopped.append(True)
            print(f"{path}: stopped at the deadline (${DEADLINE_VAR})", flush=True)
            kernels = _children(proc.pid)
            _signal(kernels, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _signal(kernels + [proc.pid], signal.SIGKILL)

        timer = threading.Timer(max(float(deadline) - time.time(), 0.0), stop)
        timer.daemon = True
        timer.start()
        proc.timer = timer
    return proc, stopped


def _finish(proc: subprocess.Popen, stopped: list) -> int:
    """Wait for a run of _jupyter_execute; its exit code, or STOPPED at the deadline."""
    code = proc.wait()
    if getattr(proc, "timer", None):
        proc.timer.cancel()
    return STOPPED if stopped else code


def _read_peak(path: Path) -> dict | None:
    """What the kernel last wrote to $BOOK_PEAK_LOG (companion.run.runtime), or None."""
    try:
        peak = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return peak if isinstance(peak, dict) and "allocated_mib" in peak else None


def _environment() -> dict:
    env = dict(os.environ)
    env.setdefault("BOOK_PROGRESS", "0")  # stored pages show results, not progress widgets
    if not env.get("BOOK_CACHE"):
        env["BOOK_CACHE"] = tempfile.mkdtemp(prefix="book-cache-")
        print(f"checkpoint cache for this run: {env['BOOK_CACHE']} (empty)")
    return env


def _copy(path: str, folder: str) -> str:
    """A copy of notebook `path` in `folder`, to run without touching the original."""
    return shutil.copy(path, Path(folder) / Path(path).name)


def made_path(path: str, into: str) -> Path:
    """Where `--into FOLDER` keeps the run of notebook `path`: FOLDER/notebooks/NAME.ipynb."""
    return Path(into) / "notebooks" / Path(path).name


def _prepare_into(path: str, into: str) -> Path:
    """A fresh copy of `path` to run beside its place in `into` (FOLDER/notebooks/), with
    the T4 record of an earlier run kept there (a record of its own, not of these outputs).
    On a lent GPU machine the working tree is copied anew at every call, notebooks/
    included, so what a call made must live outside it (outputs_device.sh)."""
    import nbformat

    target = made_path(path, into)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(target.stem + ".running.ipynb")
    nb = nbformat.read(str(path), as_version=4)
    if target.exists():
        t4 = nbformat.read(str(target), as_version=4).metadata.get("book", {}).get("t4")
        if t4:
            nb.metadata.setdefault("book", {})["t4"] = t4
    nbformat.write(nb, str(work))
    return work


def execute(paths: list[str], copy: bool = False, into: str | None = None) -> int:
    """Run each notebook in place with `jupyter execute`, timing it; stops at the first error.

    Unless $BOOK_CACHE is set, the notebooks share one new, empty checkpoint cache, so the
    times include training from scratch, as on a student's first run. With `copy`, each
    runs as a copy in a temporary folder and nothing is stored (a dry run); with `into`,
    as a copy that replaces INTO/notebooks/NAME.ipynb once it ran through.
    """
    env = _environment()
    folder = tempfile.mkdtemp(prefix="book-dry-run-") if copy else None
    try:
        return _execute(paths, env, folder, into)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _execute(paths: list[str], env: dict, folder: str | None, into: str | None) -> int:
    from companion.run.profiles import env_flag  # BOOK_SMOKE read as companion reads it

    smoke = env_flag("BOOK_SMOKE", environ=env)
    for p in paths:
        target, allowed = None, None
        if folder:
            print(f"{p}: running a copy in {folder}; nothing is stored")
            p = _copy(p, folder)
            if smoke:
                allowed = _smoke_copy(p)
        elif into:
            target, p = made_path(p, into), _prepare_into(p, into)
        log = Path(tempfile.mkstemp(prefix="book-loaded-", suffix=".txt")[1])
        peak_log = Path(tempfile.mkstemp(prefix="book-peak-", suffix=".json")[1])
        env["BOOK_LOADED_LOG"], env["BOOK_PEAK_LOG"] = str(log), str(peak_log)
        saved_before = _checkpoints(env["BOOK_CACHE"])
        start = time.perf_counter()
        print(f"executing {p} ...", flush=True)
        memory = _gpu_memory_poller()
        code = _finish(*_jupyter_execute(p, env, allow_errors=allowed is not None))
        if allowed is not None and code == 0:
            bad = _smoke_verdict(p, allowed)
            for line in bad:
                print(f"  {line}")
            code = 1 if bad else 0
        peak_mib = _stop_poller(memory)
        cuda_peak = _read_peak(peak_log)
        peak_log.unlink(missing_ok=True)
        if code != 0:
            print(f"{p} failed (exit code {code}); its outputs were not recorded")
            if cuda_peak:
                print(f"  peak GPU memory (torch, allocated) before it failed: "
                      f"{cuda_peak['allocated_mib']:,.0f} MiB")
            return code
        seconds = time.perf_counter() - start
        # a checkpoint the notebook saved itself and loaded again (chapter 9's early model,
        # continued into the full run) is training done in this run, not loaded
        loaded = [n for n in log.read_text().split() if n in saved_before]
        log.unlink()
        record(Path(p), seconds, datetime.now(timezone.utc), loaded, peak_mib, cuda_peak)
        if target is not None:
            os.replace(p, target)
            p = target
        if peak_mib is not None:
            print(f"  peak GPU memory (nvidia-smi, whole device): {peak_mib:,} MiB")
        if cuda_peak is not None:
            print(f"  peak GPU memory (torch): {cuda_peak['allocated_mib']:,.0f} MiB "
                  f"allocated, {cuda_peak['reserved_mib']:,.0f} MiB reserved")
        if loaded:
            print(f"  loaded, not trained: {', '.join(sorted(set(loaded)))}")
        st = notebook_status(Path(p))
        print(f"{p}: {format_seconds(seconds)} (profile {st.profile}, device {st.device})")
        for problem in st.problems:
            print(f"  warning: {problem}")
    return 0


def execute_t4(paths: list[str], into: str | None = None) -> int:
    """Run a copy of each notebook under the T4 emulation (BOOK_T4=1) and store only its
    peak GPU memory, time and outcome in the original (metadata book.t4), or in
    INTO/notebooks/NAME.ipynb with `into` (copied there first if absent); the outputs of
    the copy are thrown away, since the pages show the run at the GPU's own precision.
    Give it its own $BOOK_CACHE: a model that another run trained in bf16 would be loaded,
    not trained in fp16. Returns the number of notebooks that did not run through, or
    STOPPED when one was stopped at $BOOK_RUN_DEADLINE (then nothing is recorded for it)."""
    env = _environment()
    env["BOOK_T4"] = "1"
    folder = tempfile.mkdtemp(prefix="book-t4-")
    try:
        return _execute_t4(paths, env, folder, into)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _execute_t4(paths: list[str], env: dict, folder: str, into: str | None) -> int:
    failed = 0
    for p in paths:
        copy = _copy(p, folder)
        peak_log = Path(tempfile.mkstemp(prefix="book-peak-", suffix=".json")[1])
        env["BOOK_PEAK_LOG"] = str(peak_log)
        env["BOOK_LOADED_LOG"] = os.devnull
        start = time.perf_counter()
        print(f"executing a copy of {p} under the T4 emulation (BOOK_T4=1) ...", flush=True)
        proc, stopped = _jupyter_execute(copy, env, stderr=subprocess.PIPE)
        errors = []  # the lines that name an error, to say why it failed (OutOfMemoryError)
        for line in proc.stderr:  # passed on as it comes: a stopped call keeps its log
            sys.stderr.write(line)
            if "Error" in line:
                errors.append(line.strip())
        code = _finish(proc, stopped)
        seconds = time.perf_counter() - start
        cuda_peak = _read_peak(peak_log)
        peak_log.unlink(missing_ok=True)
        if code == STOPPED:  # not a measurement of the whole chapter: nothing recorded
            print(f"{p} (T4 emulated): stopped at the deadline; nothing recorded")
            return STOPPED
        error = ""
        if code != 0:
            failed += 1
            error = errors[-1] if errors else f"exit code {code}"
        target = Path(p)
        if into:
            target = made_path(p, into)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, target)
        record_t4(target, seconds, datetime.now(timezone.utc), cuda_peak, code, error)
        peak = f"{cuda_peak['allocated_mib']:,.0f} MiB" if cuda_peak else "not measured"
        print(f"{p} (T4 emulated): {format_seconds(seconds)}, peak GPU memory (torch) {peak}"
              + (f"; FAILED: {error}" if error else ""))
    return failed


# --- the table ------------------------------------------------------------------------------
def format_seconds(s: float | None) -> str:
    if s is None:
        return "not measured"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks named in _toc.yml, in book order (as .ipynb paths)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [root / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]


CHECKPOINT = re.compile(r"^ch(?P<n>\d+)-.*-(?P<profile>[a-z]+)\.pt$")


def mismatched(st: NotebookStatus, statuses: list[NotebookStatus]) -> list[tuple]:
    """(chapter, checkpoint profile, that chapter's stored profile) for every model `st`
    loaded from a chapter whose stored outputs come from another profile."""
    stored = {int(m[1]): s.profile for s in statuses
              if (m := re.match(r"(\d+)_", s.path.name))}
    out = []
    for name in st.loaded:
        m = CHECKPOINT.match(name)
        if m and int(m["n"]) in stored and stored[int(m["n"])] != m["profile"]:
            out.append((int(m["n"]), m["profile"], stored[int(m["n"])]))
    return sorted(set(out))


def short_device(device: str) -> str:
    """'cuda (NVIDIA H100 80GB HBM3)' -> 'H100 80GB HBM3'; 'cpu' -> 'CPU' (a narrow column)."""
    m = re.fullmatch(r"cuda \((?:NVIDIA )?(.+)\)", device)
    return m[1] if m else device.upper() if device == "cpu" else device


COLUMNS = ["Chapter", "Profile", "Device", "Software", "Time to run", "Slowest cell",
           "Executed"]
UNBROKEN = ["Executed"]  # not "2026-11-/22"
PHONE_PX = 720  # narrower than this, each chapter's row is a card of labelled lines
NBSP = "\u00a0"


def unbroken(text: str) -> str:
    """`text` with non-breaking spaces: a cell of the table breaks between such items
    ("torch 2.14.1," / "numpy 2.4.6"), never inside one ("53" / "s", "numpy" / "2.4.6").
    The 688-px column holds the seven columns at 1280 px only if cells may break there."""
    return text.replace(" ", NBSP)


def device_cell(st: NotebookStatus) -> str:
    """'H100 80GB HBM3, 16 cores', breakable only after the model and after the comma."""
    model, _, rest = short_device(st.device).partition(" ")
    cell = model + (f" {unbroken(rest)}" if rest else "")
    return cell + (f", {unbroken(f'{st.cpus} cores')}" if st.cpus else "")


def gib(mib: float) -> str:
    return unbroken(f"{mib / 1024:.1f} GiB")


def memory_cell(st: NotebookStatus) -> str:
    """'peak 61.0 / 68.4 GiB; T4 12.4 GiB': torch's peak GPU memory in the stored run,
    allocated / reserved, and under the T4 emulation where it ran (or that it did not fit);
    for a run that recorded only nvidia-smi's reading of the whole device, 'device 60.8 GiB';
    '' on a CPU. Part of the Device cell: an eighth column would not fit the 688-px column
    (88 px over, measured with test_browser), and the memory belongs to the device."""
    parts = []
    if st.cuda_peak_mib is not None:
        reserved = "" if st.cuda_reserved_mib is None else f" / {st.cuda_reserved_mib / 1024:.1f}"
        parts.append(unbroken(f"peak {st.cuda_peak_mib / 1024:.1f}{reserved} GiB"))
    elif st.device_peak_mib is not None:
        parts.append(f"device {gib(st.device_peak_mib)}")
    if st.t4:
        peak = (st.t4.get("cuda_peak_mib") or {}).get("allocated_mib")
        if st.t4.get("ran_through"):
            parts.append(f"T4 {gib(peak)}" if peak is not None else "")
        else:
            cap = st.t4.get("cap_bytes", 15e9) / 1e9
            parts.append(f"T4 over {unbroken(f'{cap:.0f} GB')}")
    return "; ".join(p for p in parts if p)


def table_css() -> str:
    """The status table's layout: 0.8em (as tables in outputs), dates never broken; on a
    phone each row a card with the column names as labels (made from COLUMNS, so the
    labels cannot disagree with the header)."""
    t = ".execution-status table"
    nowrap = ", ".join(f"{t} td:nth-child({COLUMNS.index(c) + 1})" for c in UNBROKEN)
    labels = "\n".join(
        f'  {t} td:nth-child({i + 1})::before {{ content: "{c}: "; font-weight: 600; }}'
        for i, c in enumerate(COLUMNS) if i > 0)
    return f"""{t} {{ font-size: 0.8em; }}
{t} th, {t} td {{ padding: 0.3rem 0.3rem; }}
{nowrap} {{ white-space: nowrap; }}
@media (max-width: {PHONE_PX}px) {{
  {t}, {t} tbody, {t} tr, {t} td {{ display: block; width: 100%; }}
  {t} thead {{ display: none; }}
  {t} tr {{ padding: 0.4rem 0; border-bottom: 1px solid var(--pst-color-border); }}
  {t} td {{ border: none; padding: 0.05rem 0.5rem; white-space: normal; }}
  {t} td p {{ display: inline; }}
  {t} td:nth-child(1) {{ font-weight: 600; }}
  {t} td:has(> p:empty) {{ display: none; }}
{labels}
}}
"""


def table(statuses: list[NotebookStatus], root: Path = ROOT) -> list[str]:
    """The status table as MyST markdown lines."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for st in statuses:
        doc = st.path.relative_to(root).with_suffix("").as_posix()
        run = unbroken(format_seconds(st.seconds))
        if st.seconds is not None and st.source == "cells":
            run += " †"
        elif st.checkpoints == "reused":
            run += " ‡"
        if mismatched(st, statuses):
            run += " §"
        slow = (f"{unbroken(format_seconds(st.slowest_cell[0]))}, "
                f"{unbroken(f'cell {st.slowest_cell[1] + 1}')}" if st.slowest_cell else "")
        device = "; ".join(c for c in (device_cell(st), memory_cell(st)) if c)
        when = st.executed.strftime("%Y-%m-%d") if st.executed else ""
        # torch from the kernel's own setup line, the rest as recorded by `make outputs`
        versions = ({"torch": st.torch} if st.torch != "?" else {}) | {
            k: v for k, v in st.versions.items() if k != "torch" or st.torch == "?"}
        software = ", ".join(unbroken(f"{k} {v.split('+')[0]}") for k, v in versions.items())
        lines.append(f"| {{doc}}`/{doc}` | `{st.profile}` | {device} | {software} | {run} | "
                     f"{slow} | {when} |")
    known = [s.seconds for s in statuses if s.seconds is not None]
    if len(statuses) > 1 and known:
        lines.append(f"| **All chapters** | | | | **{unbroken(format_seconds(sum(known)))}** | "
                     "| |")
    if any(s.source == "cells" for s in statuses):
        lines += ["", "† Outputs not made by `make outputs`: the time from the first cell's "
                  "start to the last cell's end, without the kernel's start."]
    for st in statuses:
        for n, prof, stored in mismatched(st, statuses):
            lines += ["", f"§ {st.title or st.path.stem} loads a `{prof}` model of chapter {n}, "
                      f"whose stored outputs are from the `{stored}` profile: the two pages "
                      "show different models under one name."]
    if any(s.cuda_peak_mib is not None or s.t4 or s.device_peak_mib is not None
           for s in statuses):
        lines += ["", "Peak: the most GPU memory the chapter's tensors held at once "
                  "(`torch.cuda.max_memory_allocated`) / the most torch's caching allocator "
                  "held (`torch.cuda.max_memory_reserved`). Device: an older run's record, "
                  "the whole device's memory in use as `nvidia-smi` read it, which counts "
                  "what the allocator keeps after use. T4: the peak with the chapter run "
                  "again as on Colab's T4, emulated on the same GPU (`BOOK_T4=1`: fp16 with a "
                  "gradient scaler, no TF32, the process capped at 15 GB); a T4's speed is "
                  "not emulated. What each chapter needs on a T4, estimated without a GPU, is "
                  "on the page Running the notebooks."]
    if any(s.source == "wall" and s.checkpoints == "reused" for s in statuses):
        lines += ["", "‡ Loaded at least one model that an earlier chapter or run had trained "
                  "and saved, instead of training it."]
    return lines


# --- Sphinx -----------------------------------------------------------------------------------
def setup(app):
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective

    logger = logging.getLogger(__name__)

    class ExecutionStatus(SphinxDirective):
        """The table of every chapter's measured run time, profile and device."""

        def run(self):
            root = Path(self.env.srcdir)
            statuses = []
            for path in toc_notebooks(root):
                self.env.note_dependency(str(path))
                if not path.exists():
                    logger.warning(f"execution-status: {path} does not exist",
                                   location=self.get_location())
                    continue
                st = notebook_status(path)
                for problem in st.problems:
                    logger.warning(f"execution-status: {path.relative_to(root)}: {problem}",
                                   location=self.get_location())
                statuses.append(st)
            container = nodes.container(classes=["execution-status"])
            container += nodes.raw("", f"<style>\n{table_css()}</style>\n", format="html")
            self.state.nested_parse(StringList(table(statuses, root)), self.content_offset,
                                    container)
            return [container]

    app.add_directive("execution-status", ExecutionStatus)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}


def main(argv: list[str]) -> int:
    into = None
    if len(argv) >= 3 and argv[1] == "--into":
        into, argv = argv[2], [argv[0], *argv[3:]]
    if len(argv) >= 3 and argv[:2] == ["execute", "--copy"]:
        return execute(argv[2:], copy=True)
    if len(argv) >= 2 and argv[0] == "execute":
        return execute(argv[1:], into=into)
    if len(argv) >= 2 and argv[0] == "t4":
        failed = execute_t4(argv[1:], into=into)
        return failed if failed == STOPPED else 1 if failed else 0
    if argv in ([], ["show"]):
        for line in table([notebook_status(p) for p in toc_notebooks()]):
            print(line)
        return 0
    print("usage: execution_status.py execute [--copy | --into FOLDER] NOTEBOOK.ipynb... | "
          "t4 [--into FOLDER] NOTEBOOK.ipynb... | show", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
