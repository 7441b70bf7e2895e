"""Runs notebooks and records what each run cost (`make outputs`, tools/outputs_device.sh).

    python tools/run_notebooks.py execute [--copy | --into FOLDER] NB.ipynb...
    python tools/run_notebooks.py t4 [--into FOLDER] NB.ipynb...

`execute` times the whole `jupyter execute` of each notebook (kernel start and imports
included) and stores that wall time in its metadata `book.execution`, with the checkpoints it
loaded and, on a GPU, torch's peak memory; `t4` runs a copy under the T4 emulation
(BOOK_T4=1) and stores only its peak memory and time (`book.t4`). `--copy` runs copies in a
temporary folder and stores nothing; `--into FOLDER` keeps each run in FOLDER/notebooks/.
What the status page makes of these (book/_ext/execution_status.py, a Sphinx extension)
reads the same metadata.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))  # the status page's reader of the metadata
from execution_status import format_seconds, notebook_status  # noqa: E402


# --- recording (make outputs) ---------------------------------------------------------------
def training_seconds(cache: str | Path, names: list[str]) -> float | None:
    """The seconds the checkpoints `names` took to train, as their files record them
    (companion's train_seconds: every session's training to those weights). A run kept at
    stages (`<name>-step<N>` files, the run resumed from each) counts once, at its longest.
    None when a file is missing or unreadable: the cost is then unknown, not zero."""
    import torch

    runs: dict[str, float] = {}
    for name in names:
        try:
            state = torch.load(Path(cache) / "checkpoints" / name, map_location="cpu",
                               weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError):
            return None
        run = re.sub(r"-step\d+(?=-)", "", name)
        runs[run] = max(runs.get(run, 0.0), float(state.get("train_seconds", 0.0)))
    return sum(runs.values())


def trained_in(log_text: str) -> list[str]:
    """The checkpoints a run trained (fit's $BOOK_TRAIN_LOG lines: a "start" below its
    total), as against those it loaded from the cache or the shipped set."""
    names = set()
    for line in log_text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 5 and parts[1] == "start" and parts[3] != "-":
            done, _, total = parts[4].partition("/")
            if done.isdigit() and total.isdigit() and int(done) < int(total):
                names.add(parts[3])
    return sorted(names)


def record(path: Path, seconds: float, finished: datetime,
           loaded: list[str] | None = None, gpu_peak_mib: int | None = None,
           cuda_peak: dict | None = None, loaded_seconds: float | None = None,
           trained: list[str] | None = None) -> None:
    """Store the wall time of the run that just made `path`'s outputs in its metadata.

    loaded: the checkpoints the run loaded instead of training (companion.fit writes their
    names to $BOOK_LOADED_LOG); "reused" on the status page means at least one.
    cuda_peak: torch's peak GPU memory in the kernel, {"allocated_mib", "reserved_mib"}
    (companion.run.runtime.cuda_peak_memory); None on a CPU.
    loaded_seconds: what training the loaded checkpoints took (`training_seconds`), so that
    the status page can say what the run costs from an empty cache; None if unknown.
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
    if trained is not None:  # what trained during the run (the shipped set lacked it)
        nb.metadata["book"]["execution"]["trained"] = sorted(set(trained))
    if loaded and loaded_seconds is not None:
        nb.metadata["book"]["execution"]["loaded_train_seconds"] = round(loaded_seconds, 1)
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
    # a run that counts its work (companion.run.work) repeats its networks' outputs at the
    # profile's sizes: what its asserts find means nothing, only errors count
    counting = bool(os.environ.get("BOOK_WORK_LOG", "").strip())
    bad += [f"code cell {cell}: assert {test}" for cell, test in failed
            if test not in allowed and not counting]
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


def _train_log(env: dict) -> tuple[Path, int]:
    """fit's training log for this run ($BOOK_TRAIN_LOG, set to a file of our own when the
    caller did not set one) and its size now: what the run adds is read after it."""
    if not env.get("BOOK_TRAIN_LOG"):
        env["BOOK_TRAIN_LOG"] = tempfile.mkstemp(prefix="book-trained-", suffix=".tsv")[1]
    log = Path(env["BOOK_TRAIN_LOG"])
    return log, log.stat().st_size if log.exists() else 0


def _read_from(path: Path, start: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


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
        # arrays a page's explorer runs (companion.page_explorers.store_*) go beside the stored
        # notebook: notebooks/explorers/, or INTO/notebooks/explorers/; a dry run keeps none
        env.pop("BOOK_EXPLORERS", None)
        if not folder:
            env["BOOK_EXPLORERS"] = str(Path(target or p).resolve().parent / "explorers")
        log = Path(tempfile.mkstemp(prefix="book-loaded-", suffix=".txt")[1])
        peak_log = Path(tempfile.mkstemp(prefix="book-peak-", suffix=".json")[1])
        env["BOOK_LOADED_LOG"], env["BOOK_PEAK_LOG"] = str(log), str(peak_log)
        saved_before = _checkpoints(env["BOOK_CACHE"])
        train_log, log_start = _train_log(env)
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
        record(Path(p), seconds, datetime.now(timezone.utc), loaded, peak_mib, cuda_peak,
               training_seconds(env["BOOK_CACHE"], sorted(set(loaded))),
               trained_in(_read_from(train_log, log_start)))
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
    print("usage: run_notebooks.py execute [--copy | --into FOLDER] NOTEBOOK.ipynb... | "
          "t4 [--into FOLDER] NOTEBOOK.ipynb...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
