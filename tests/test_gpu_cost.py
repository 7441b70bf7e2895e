"""A chapter's GPU cost from its counted work (tools/gpu_cost.py) and the one-call lease it
plans (tools/gpu_plan.py lease, tools/outputs_device.sh --lease): issue 81."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.test_device_plan import TOOLS, _module, timed_notebook

gc = _module("gpu_cost", TOOLS)
gp = _module("gpu_plan", TOOLS)
CPU_RUN = "profile=cpu device=cpu torch=2.14.1 python=3.11.7\n"


def fit(checkpoint, steps=1000, flops=0.0, ops=0, compiled=False, epochs=None, rows=2000,
        batch=128):
    return {"desc": checkpoint or "fit", "checkpoint": checkpoint, "steps": steps,
            "epochs": epochs, "rows": rows, "batch": batch, "examples": 8,
            "flops_step": flops, "ops_step": ops, "compiled": compiled, "params": 1}


def record(*fits, evals=(), smoke=10.0, compute=4.0):
    return {"train": list(fits), "eval": list(evals), "smoke_seconds": smoke,
            "compute_seconds": compute}


def test_a_step_is_bound_by_its_flops_or_by_launching_its_kernels():
    big, small = 1e13, 1e6
    assert gc.step_seconds(big, 600) == pytest.approx(big / gc.RATE)
    assert gc.step_seconds(small, 600) == pytest.approx(600 * gc.HOST_OP_S)
    # a CUDA graph replays the network's launches: the host launches only the rest
    assert gc.step_seconds(small, 600, graphed=True) == \
        pytest.approx(gc.GRAPHED_STEP_OPS * gc.HOST_OP_S)


def test_seconds_add_fits_calls_and_the_hosts_work():
    rec = record(fit("ch9-ddpm-gpu.pt", 6000, 1.2e12, 625, compiled=True),
                 fit("ch18-vdm-gpu.pt", 300, 1e6, 1000),
                 evals=[{"network": "UNet", "shape": [[500, 1, 28, 28]], "calls": 1000,
                         "flops_call": 1.6e12, "ops_call": 200}])
    want = (6000 * 1.2e12 / gc.RATE + gc.COMPILE_S + 300 * 1000 * gc.HOST_OP_S
            + 1000 * 1.6e12 / gc.RATE + (10.0 - 4.0))
    assert gc.seconds(rec, 18) == pytest.approx(want)
    # chapter 9's model trained earlier in the lease: that fit is not paid again
    cached = gc.seconds(rec, 18, {"ch9-ddpm-gpu.pt"})
    assert cached == pytest.approx(want - 6000 * 1.2e12 / gc.RATE - gc.COMPILE_S)
    secs, what = gc.slowest(rec, 18)
    assert "chapter 9's model" in what and "compiled" in what
    assert gc.trains(rec) == {"ch9-ddpm-gpu.pt", "ch18-vdm-gpu.pt"}


def test_an_epoch_run_on_the_smoke_slice_counts_the_devices_digits():
    assert gc.fit_steps(fit("a", steps=30, epochs=10, rows=2000, batch=32)) == \
        10 * -(-gc.GPU_ROWS // 32)
    assert gc.fit_steps(fit("a", steps=30, epochs=10, rows=600, batch=32)) == 30


@pytest.fixture
def book(tmp_path, monkeypatch):
    """Chapters 3, 5, 11, 13, 17 and 18 stored from cpu, with counted work of 18: 300 s
    (chapter 9's model inside it), 17: 500 s, 13: 100 s, 11: 250 s of which chapter 9's
    model is 200 s, 5: 20 s, 3: 400 s."""
    stems = {3: "03_c", 5: "05_c", 11: "11_c", 13: "13_c", 17: "17_c", 18: "18_c"}
    chapters = {n: timed_notebook(tmp_path / f"{s}.ipynb", CPU_RUN) for n, s in
                stems.items()}
    monkeypatch.setattr(gc, "HOST_OP_S", 1e-3)

    def launch_bound(name, secs):  # 1,000 steps of ops that take `secs` to launch
        return fit(name, 1000, 1.0, secs)

    work = {"18_c": record(launch_bound("ch9-x.pt", 200), launch_bound("ch18-a.pt", 100),
                           smoke=0, compute=0),
            "17_c": record(launch_bound("ch17-a.pt", 500), smoke=0, compute=0),
            "13_c": record(launch_bound("ch13-a.pt", 100), smoke=0, compute=0),
            "11_c": record(launch_bound("ch9-x.pt", 200), launch_bound("ch11-a.pt", 50),
                           smoke=0, compute=0),
            "05_c": record(launch_bound("ch5-a.pt", 20), smoke=0, compute=0),
            "03_c": record(launch_bound("ch3-a.pt", 400), smoke=0, compute=0)}
    monkeypatch.setattr(gp, "book_chapters", lambda root=None: chapters)
    monkeypatch.setattr(gc, "load", lambda path=None, section="chapters":
                        work if section == "chapters" else {})
    monkeypatch.setattr(gp, "AT_LEAST", {})
    monkeypatch.setattr(gp, "MEASURED", {})
    return chapters


def test_the_lease_takes_the_weakest_first_and_what_fits(book):
    entries, notes = gp.lease(budget=540, bench=120)
    # 18 (300 s) fits the 420 s left; 17 (500 s) does not; 13 (100 s) does; 11 then costs
    # only its own 50 s, which does not fit the 20 s left; of the others (newest first),
    # 5's 20 s does, 3's 400 s not
    assert [e.key for e in entries] == ["18_c", "13_c", "05_c"]
    assert [e.seconds for e in entries] == [pytest.approx(300), pytest.approx(100),
                                            pytest.approx(20)]
    assert any(n.startswith("17_c") and "does not fit" in n for n in notes)
    assert any(n.startswith("11_c") for n in notes)
    entries, _ = gp.lease(budget=540, bench=0)  # more room: 11 pays 50 s, not 250 s
    assert [e.key for e in entries] == ["18_c", "13_c", "11_c", "05_c"]
    assert entries[2].seconds == pytest.approx(50)
    assert all(e.source.startswith("counted") for e in entries)


def test_the_lease_command_prints_what_the_script_runs(book, capsys):
    assert gp.main(["lease", "--left", "420"]) == 0
    out, err = capsys.readouterr()
    assert out.split("\n")[:2] == ["18_c 300", "13_c 100"]
    assert "17_c" in err and "does not fit" in err


def test_the_lease_script_benches_first_then_runs_and_packs_each_chapter(tmp_path):
    """outputs_device.sh --lease, with a stand-in python that logs what it is asked."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
case "$*" in
  *"gpu_plan.py lease"*) printf '13_continuous_time 100\\n11_latent_diffusion 50\\n' ;;
esac
exit 0
""")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), BOOK_CACHE=str(tmp_path / "c"),
               BENCH_S="30")
    done = subprocess.run([str(TOOLS / "outputs_device.sh"), "--dry-run", "--lease"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [ln for ln in calls.read_text().splitlines()
             if any(k in ln for k in ("benchmarks.run", "gpu_plan.py", "run_notebooks.py"))]
    assert "benchmarks.run --only ddpm --step" in steps[0]
    assert "gpu_plan.py lease --left" in steps[1]
    assert "13_continuous_time" in steps[2] and "11_latent_diffusion" in steps[3]
    log = (out / "log.txt").read_text()
    assert log.count("this call:") == 2  # packed after each chapter
    assert Path(out).is_dir()


def test_the_check_counts_each_edition_with_the_cache_it_had(monkeypatch):
    editions = {"07_a@abc": record(fit("ch7-a.pt", 1000, 1.0, 100), smoke=10, compute=0),
                "10_b@abc": record(fit("ch7-a.pt", 1000, 1.0, 100),
                                   fit("ch10-b.pt", 1000, 1.0, 50), smoke=10, compute=0)}
    monkeypatch.setattr(gc, "load", lambda path=None, section="chapters":
                        editions if section == "editions" else {})
    monkeypatch.setattr(gp, "CHECKS", {"07_a": (50.0, "abc", "H200", ()),
                                       "10_b": (20.0, "abc", "H200", (7,)),
                                       "11_c": (790.0, "def", "H200", ())})
    rows = {stem: (measured, counted) for stem, measured, counted, _ in gp.check()}
    assert set(rows) == {"07_a", "10_b"}  # 11_c's edition was never counted
    assert rows["07_a"][1] == pytest.approx(10 + 1000 * 100 * gc.HOST_OP_S)
    # chapter 10 loaded chapter 7's model: only its own fit and host work
    assert rows["10_b"][1] == pytest.approx(10 + 1000 * 50 * gc.HOST_OP_S)
    assert "x" in gp.format_check(gp.check())


def test_this_editions_count_beats_a_time_measured_on_an_older_one(book, monkeypatch):
    monkeypatch.setattr(gp, "MEASURED", {"13_c": (50.0, "gpu profile, H200")})
    secs, why = gp.estimate(book[13])
    assert secs == pytest.approx(100) and why.startswith("counted")
    assert "measured 50 s on the edition of then" in why
    monkeypatch.setattr(gc, "load", lambda path=None, section="chapters": {})
    assert gp.estimate(book[13])[0] == 50.0  # uncounted: the older measurement


def test_a_chapter_whose_page_shows_a_gpu_run_is_not_leased_again(book, tmp_path):
    timed_notebook(book[18], "profile=gpu device=cuda (NVIDIA H200) torch=2.11.0 "
                   "python=3.12.3\n", 300.0)
    entries, _ = gp.lease(budget=540, bench=0)
    assert "18_c" not in [e.key for e in entries]


def test_a_network_compiled_again_in_a_chapter_costs_a_recompile_and_a_loaded_one_nothing():
    step = fit("ch17-a.pt", 100, 1e12, 600, compiled=True)
    again = fit("ch17-b.pt", 100, 1e12, 600, compiled=True)  # the same network, resumed
    done = fit("ch17-a.pt", 0, 1e12, 600, compiled=True)  # finished: loaded
    secs = gc.seconds(record(step, again, done, smoke=0, compute=0), 17)
    assert secs == pytest.approx(200 * 1e12 / gc.RATE + gc.COMPILE_S + gc.RECOMPILE_S)


def test_an_estimate_with_failed_cells_says_it_is_a_lower_bound(book):
    work = gc.load()
    work["13_c"]["failed"] = ["profile counts, code cell 14: ValueError: ['NaN']"]
    secs, why = gp.estimate(book[13])
    assert secs == pytest.approx(100)
    assert "at least: 1 cell(s) failed in the counting run" in why and "cell 14" in why


def test_the_host_op_cost_is_chapter_7s_fit_and_the_model_matches_every_gpu_run():
    """On the stored counts (tools/gpu-work.json): HOST_OP_S is what chapter 7's H200 run
    implies, and every chapter a GPU ran is counted within a fifth or so of its time (a
    run seen unfinished: not below what was seen)."""
    assert gc.HOST_OP_S == pytest.approx(gp.fit_host_op_s(), rel=0.05)
    rows = gp.check()
    assert {r[0] for r in rows} == set(gp.CHECKS)  # every edition counted
    for stem, measured, counted, what in rows:
        if "at least" in what:
            assert counted >= 0.95 * measured, stem
        else:
            assert 0.8 <= counted / measured <= 1.25, (stem, measured, counted)
