"""The whole-book GPU run, prepared without a GPU (issue 31): the plan's order, the wheels
the device lacks, the T4 emulation's switch and the peak-memory record (CUDA mocked)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import torch

import companion
from companion.run import runtime
from companion.run.precision import autocast_dtype

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "book" / "_ext"  # the status page's extension
TOOLS = ROOT / "tools"  # the GPU plan and the device script


def _module(name: str, folder: Path = EXT):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


es = sys.modules.get("execution_status") or _module("execution_status")
gp = _module("gpu_plan", TOOLS)
rn = sys.modules.get("run_notebooks") or _module("run_notebooks", TOOLS)
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


# --- the plan ------------------------------------------------------------------------------
def real_deps() -> dict[int, set[int]]:
    return {n: gp.dependencies(p) for n, p in gp.book_chapters().items()}


def test_a_gpu_time_measured_before_a_cpu_restore_beats_the_guess(tmp_path, monkeypatch):
    cpu = timed_notebook(tmp_path / "09_c.ipynb", "profile=cpu device=cpu torch=2.14.1 "
                         "python=3.11.7\n", 112.0)
    rn.record(cpu, 112.0, T0 + timedelta(seconds=111))
    assert set(gp.MEASURED) <= {p.stem for p in gp.book_chapters().values()}
    monkeypatch.setattr(gp, "MEASURED", {})
    assert gp.estimate(cpu)[0] == pytest.approx(112.0 * gp.GUESS_SCALE)
    monkeypatch.setattr(gp, "MEASURED", {"09_c": (268.9, "gpu profile, H200")})
    secs, why = gp.estimate(cpu)
    assert secs == 268.9 and why.startswith("measured before the page was stored from cpu")


@pytest.mark.slow
def test_dependencies_are_read_from_the_notebooks():
    """Chapter 10 loads 7's VAEs and 9's DDPM; 11 loads 9's and 10's models; 12 loads 6's
    VAE and 9's DDPM; 13 loads 9's DDPM; 14 loads 7's VAEs and 9's judge (read from the
    recipe calls, as the pages make them); 16 loads 8's toy network and 9's DDPM and judge;
    17 loads 9's DDPM and judge and 13's flow model; 18 loads 9's DDPM and judge; 19 loads
    1's autoencoder, 7's VAEs, 9's judge, 11's autoencoder and latent DDPM and 14's masked
    U-Net; 20 loads 9's DDPM and judge, 10's VAEs, 13's flow model, 15's distilled and
    consistency students, 16's class-conditional DDPM and 17's EDM model; 21 loads 9's
    DDPM and judge."""
    deps = real_deps()
    assert {n: d for n, d in deps.items() if d} == {10: {7, 9}, 11: {9, 10}, 12: {6, 9},
                                                    13: {9}, 14: {7, 9}, 15: {9, 13},
                                                    16: {8, 9}, 17: {9, 13},
                                                    18: {9}, 19: {1, 7, 9, 11, 14},
                                                    20: {9, 10, 13, 15, 16, 17},
                                                    21: {9}}


@pytest.mark.slow
def test_dependencies_cover_every_model_a_stored_run_loaded():
    """A second witness: the checkpoints each stored run loaded (book.execution.loaded)."""
    deps = real_deps()
    for n, path in gp.book_chapters().items():
        loaded = {int(m[1]) for name in es.notebook_status(path).loaded
                  if (m := gp.CHAPTER.match(name))} - {n}
        assert loaded <= deps[n], f"chapter {n} loaded models of {loaded - deps[n]}"


def code_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter")] + [
        nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, str(path))
    return path


def test_the_dependency_reader_on_planted_calls(tmp_path):
    prefixes = gp.recipe_prefixes()
    assert prefixes["ddpm"] == 9 and prefixes["eight_bit_vae"] == 10
    assert prefixes["single_level_vae"] == 7 and prefixes["latent_vae"] == 11
    nb = code_notebook(
        tmp_path / "14_new.ipynb",
        "%matplotlib inline\nfrom companion import recipes, results\n"
        "from companion.recipes import hierarchical_vae\n"
        "m, r = recipes.ddpm(x, profile, device)",
        "v, _ = recipes.single_level_vae(x, profile, device, source=s, prefix='ch6')\n"
        "h, _ = hierarchical_vae(x, profile, device, source=s)",
        "p = checkpoint_path('ch3-thing', profile)\nq = checkpoint_path(f'ch2-{n}', profile)",
        "r = results.load('ch5', profile)\nown = checkpoint_path('ch14-mine', profile)",
        "ddpm(x)  # a function of the same name, not the recipe\n"
        "w = recipes.latent_vae(x, profile, device, source=s, prefix=name)",
        "!pip install something\nthis is not python")
    # the recipe with a prefix that is not a constant names no chapter; own chapter left out
    assert gp.dependencies(nb, prefixes) == {9, 6, 7, 3, 2, 5}
    assert gp.dependencies(code_notebook(tmp_path / "15_x.ipynb", "x = 1"), prefixes) == set()


@pytest.mark.slow
def test_order_puts_each_chapter_after_what_it_loads_and_the_issue_first():
    deps = real_deps()
    entries = gp.plan()
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys)) == len(deps) + len(gp.T4_CHAPTERS)
    main = [e.chapter for e in entries if not e.t4]
    assert sorted(main) == sorted(deps)
    where = {n: i for i, n in enumerate(main)}
    for n, ds in deps.items():
        assert all(where[d] < where[n] for d in ds), (n, ds, main)
    # 11 and 12 come as early as their dependencies allow ...
    def closure(n):
        return {n}.union(*(closure(d) for d in deps[n]))

    assert set(main[:where[11] + 1]) == closure(11)
    assert set(main[:where[12] + 1]) == closure(11) | closure(12)
    # ... then 6, 9 and 10, then the rest; the T4 runs after the priority chapters
    priority = closure(11) | closure(12) | closure(6) | closure(9) | closure(10)
    assert set(main[:len(priority)]) == priority
    first_t4 = keys.index(f"t4:{gp.book_chapters()[9].stem}")
    assert first_t4 == len(priority)
    assert keys[first_t4 + 1] == f"t4:{gp.book_chapters()[10].stem}"


def test_order_refuses_a_circle_and_an_unknown_chapter():
    with pytest.raises(ValueError, match="circle: 1 -> 2 -> 1"):
        gp.order({1: {2}, 2: {1}}, priority=(1,), t4=())
    with pytest.raises(ValueError, match="chapter 3 is not in the book"):
        gp.order({1: set()}, priority=(3,), t4=())
    assert gp.order({1: set(), 2: {3}, 3: set()}, priority=(2,), t4=(3,)) == \
        [3, 2, ("t4", 3), 1]


def entries(*seconds):
    return [gp.Entry(i, f"{i:02d}_c", False, s, "test") for i, s in enumerate(seconds, 1)]


def test_calls_fill_the_budget_in_order():
    got = gp.calls(entries(300, 200, 100, 500, None, 50, 700, 10), budget=540)
    # 300+200 fit, +100 would not; an unknown estimate and one over budget go alone
    assert [[e.chapter for e in c] for c in got] == [[1, 2], [3], [4], [5], [6], [7], [8]]
    assert [[e.chapter for e in c] for c in gp.calls(entries(300, 200, 40, None, 10, 700),
                                                      budget=540)] == \
        [[1, 2, 3], [4], [5], [6]]
    for call in got:
        assert len(call) == 1 or sum(e.seconds for e in call) <= 540


def test_next_leaves_out_what_is_done_failed_or_retried():
    es_ = entries(100, 100, 100, 100, 100, 100, 100)
    todo, notes = gp.next_entries(es_, done=["01_c", "02_c"], started=["03_c", "03_c", "04_c"],
                                  failed=["05_c"], budget=250)
    assert [e.key for e in todo] == ["04_c", "06_c"]
    assert any("03_c: started 2 times" in n for n in notes)
    assert any("05_c: failed" in n for n in notes)
    assert gp.next_entries(es_, done=[e.key for e in es_])[0] == []


@pytest.mark.slow
def test_next_prints_what_outputs_device_reads(tmp_path, capsys):
    done = tmp_path / "done.txt"
    done.write_text("")
    assert gp.main(["next", "--done", str(done), "--budget", "540"]) == 0
    first = capsys.readouterr().out.split("\n")[0].split()
    assert first[0] == gp.plan()[0].key and (first[1] == "?" or int(first[1]) > 0)
    done.write_text("\n".join(e.key for e in gp.plan()))
    assert gp.main(["next", "--done", str(done)]) == 0
    assert capsys.readouterr().out == ""


def timed_notebook(path: Path, setup: str, seconds=30.0) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=setup)]
    end = T0 + timedelta(seconds=seconds)
    cell.metadata["execution"] = {"iopub.execute_input": T0.isoformat()[:19] + "Z",
                                  "shell.execute_reply": end.isoformat()[:19] + "Z"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), cell]
    nbformat.write(nb, str(path))
    return path


def test_estimates_say_whether_they_were_measured_on_a_gpu(tmp_path):
    gpu = timed_notebook(tmp_path / "09_a.ipynb", "profile=gpu device=cuda (NVIDIA H100 80GB "
                         "HBM3) torch=2.11.0 python=3.12.3\n", 290.0)
    cpu = timed_notebook(tmp_path / "11_b.ipynb", "profile=cpu device=cpu torch=2.14.1 "
                         "python=3.11.7\n", 180.0)
    rn.record(cpu, 182.0, T0 + timedelta(seconds=181), loaded=["ch11-vae-cpu.pt",
                                                                 "ch9-ddpm-cpu.pt"])
    secs, why = gp.estimate(gpu)
    assert secs == pytest.approx(290.0) and why.startswith("measured") and "H100" in why
    secs, why = gp.estimate(cpu)
    assert secs == pytest.approx(182.0 * gp.GUESS_SCALE)
    assert why.startswith("guess: never run in gpu") and "3 min 02 s on 2 cores" in why
    assert "1 of its own models loaded" in why


def test_a_guess_counts_what_the_loaded_models_took_to_train(tmp_path):
    cpu = timed_notebook(tmp_path / "11_d.ipynb", "profile=cpu device=cpu torch=2.14.1 "
                         "python=3.11.7\n", 378.0)
    rn.record(cpu, 378.0, T0 + timedelta(seconds=377), loaded=["ch11-vae-cpu.pt"],
              loaded_seconds=1453.0)
    secs, why = gp.estimate(cpu)
    assert secs == pytest.approx((378.0 + 1453.0) * gp.GUESS_SCALE)
    assert "plus 24 min 13 s that its loaded models took to train" in why
    assert why.endswith(", slowest cell 1 (6 min 18 s)")  # the stored run's, named


def test_a_chapter_seen_unfinished_is_never_estimated_below_what_was_seen(tmp_path,
                                                                          monkeypatch):
    cpu = timed_notebook(tmp_path / "11_b.ipynb", "profile=cpu device=cpu torch=2.14.1 "
                         "python=3.11.7\n", 180.0)
    rn.record(cpu, 182.0, T0 + timedelta(seconds=181))
    monkeypatch.setattr(gp, "AT_LEAST", {"11_b": (790.0, "unfinished after 13 min")})
    secs, why = gp.estimate(cpu)
    assert secs == 790.0 and why.startswith("at least: unfinished") and "guess" in why
    monkeypatch.setattr(gp, "AT_LEAST", {"11_b": (10.0, "unfinished after 10 s")})
    assert gp.estimate(cpu)[0] == pytest.approx(182.0 * gp.GUESS_SCALE)  # the larger wins


@pytest.mark.slow
def test_the_plan_text_gives_the_command_and_every_entry():
    text = gp.format_plan(gp.plan())
    assert "tools/outputs_device.sh --next" in text and "'.whl'" in text
    assert all(e.key in text for e in gp.plan())


def test_outputs_device_script_parses_and_explains_itself():
    script = TOOLS / "outputs_device.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dry-run" in out.stdout and "--next" in out.stdout
    bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr



def test_the_carried_wheels_are_on_the_path_before_check_env_looks_for_them():
    """A lease of 2026-11-26 lost its first call: check-env ran before PYTHONPATH named
    /tmp/site, so all 34 freshly installed packages read as missing."""
    text = (TOOLS / "outputs_device.sh").read_text()
    block = text[text.index("# the wheels, where"):text.index("snapshot() {")]
    assert "gpu_plan.py check-env" in block
    assert block.index("export PYTHONPATH=/tmp/site") < block.index("gpu_plan.py check-env")


# --- the wheels ----------------------------------------------------------------------------
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3",
                  "sys_platform": "linux", "platform_system": "Linux",
                  "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "extra": ""}


def test_device_requirements_carry_nothing_the_device_has():
    pins = gp.requirements()
    assert "nbclient" in pins and "ipykernel" in pins and "mlxtend" in pins
    assert not set(pins) & gp.DEVICE_HAS, "carried twice: " + str(set(pins) & gp.DEVICE_HAS)


def test_device_requirements_are_the_whole_closure():
    """Installed with --no-deps there: every requirement of a carried package (for Python
    3.12 on Linux) is carried too or is one the device has. Read from the metadata of the
    venv's copy where it is the pinned version (a fresh venv may hold newer ones: those
    are left out, and all left out is a skip that says to refresh the list), as the
    device's own check reads it (`gpu_plan.device_needs`: diffusers' importlib_metadata,
    which `make bench` installs here, is for Python < 3.8)."""
    pins = gp.requirements()
    missing, checked = [], 0
    for name, pinned in pins.items():
        try:
            if version(name) != pinned:
                continue
        except PackageNotFoundError:
            continue
        checked += 1
        for req in gp.device_needs(name, DEVICE_MARKERS):
            if gp.normalize(req.name) not in pins | dict.fromkeys(gp.DEVICE_HAS):
                missing.append(f"{name} needs {req}")
    assert not missing, missing
    if checked < len(pins) // 2:
        pytest.skip(f"only {checked} of the {len(pins)} pinned versions are in this venv: "
                    "refresh tools/device-requirements.txt from it")


def test_device_needs_reads_markers_as_the_device_and_drops_unused_needs(monkeypatch):
    """What `make bench` then `make test` tripped on: diffusers' importlib_metadata (for
    Python < 3.8, unmarked in its metadata) is not a need on the device; a marker is read
    with the device's Python, not this one's."""
    import importlib.metadata as md

    needs = {"diffusers": ["importlib_metadata", "filelock", "pywin32; sys_platform == 'win32'"],
             "other": ["old-thing; python_version < '3.12'", "new-thing; python_version >= '3.12'",
                       "importlib_metadata"]}
    monkeypatch.setattr(md, "distribution", lambda n: SimpleNamespace(requires=needs[n]))
    names = lambda pkg: [r.name for r in gp.device_needs(pkg, DEVICE_MARKERS)]  # noqa: E731
    assert names("diffusers") == ["filelock"]
    assert names("other") == ["new-thing", "importlib_metadata"]


def test_requirements_must_be_pinned(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("# comment\nfoo==1.0  # why\n\nBar_baz==2\n")
    assert gp.requirements(path) == {"foo": "1.0", "bar-baz": "2"}
    path.write_text("foo>=1\n")
    with pytest.raises(ValueError, match="not pinned"):
        gp.requirements(path)


def test_check_env_names_a_version_that_is_not_the_carried_one():
    got = version("nbclient")
    assert gp.check_env({"nbclient": got}) == ([], [])
    problems, _ = gp.check_env({"nbclient": "0.0.1", "no-such-package-here": "1.0"})
    assert any(f"nbclient: {got} is the one found, not the carried 0.0.1" in p
               for p in problems)
    assert "no-such-package-here 1.0 is not installed" in problems


def test_check_env_finds_a_need_nothing_meets_and_warns_of_old_versions(monkeypatch):
    import importlib.metadata as md

    needs = {"carried": ["absent-thing>=1", "present-thing>=9", "other; extra == 'x'"],
             "mlxtend": ["pandas>=99"]}
    versions = {"carried": "1.0", "present-thing": "2.0", "mlxtend": "0.25.0"}

    def fake_version(name):
        if name not in versions:
            raise md.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(md, "version", fake_version)
    monkeypatch.setattr(md, "distribution", lambda n: SimpleNamespace(requires=needs[n]))
    problems, warnings = gp.check_env({"carried": "1.0", "mlxtend": "0.25.0"})
    assert problems == ["carried needs absent-thing>=1, which is not installed"]
    assert warnings == ["carried asks for present-thing>=9; present-thing 2.0 is installed"]


# --- the T4 emulation ----------------------------------------------------------------------
@pytest.mark.parametrize("value, on", [(None, False), ("", False), ("0", False), ("1", True),
                                       ("yes", True)])
def test_the_t4_switch_reads_book_t4(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("BOOK_T4", raising=False)
    else:
        monkeypatch.setenv("BOOK_T4", value)
    assert runtime.t4_emulated() is on


def test_under_t4_training_takes_fp16_on_any_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("BOOK_T4", raising=False)
    assert autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setenv("BOOK_T4", "1")
    assert autocast_dtype("cuda") == torch.float16  # so fit makes its gradient scaler
    assert autocast_dtype("cpu") is None


@pytest.fixture
def tf32_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fake_cuda(monkeypatch, total_bytes: float, fractions: list):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(total_memory=int(total_bytes)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: fractions.append(fraction))


@pytest.mark.parametrize("total, fraction", [(80e9, 15 / 80), (143e9, 15 / 143),
                                             (12e9, 1.0)])
def test_setup_caps_memory_at_a_t4s_and_turns_tf32_off(monkeypatch, capsys, tf32_restored,
                                                       total, fraction):
    fractions = []
    fake_cuda(monkeypatch, total, fractions)
    monkeypatch.setenv("BOOK_T4", "1")
    monkeypatch.delenv("BOOK_PEAK_LOG", raising=False)
    _, device = companion.setup(seed=0, profile="gpu", device="cuda")
    assert device.type == "cuda"
    assert fractions == [pytest.approx(fraction)]
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    out = capsys.readouterr().out
    assert "T4 emulation (BOOK_T4=1)" in out and "capped at 15 GB" in out


def test_without_book_t4_setup_leaves_the_gpu_as_it_is(monkeypatch, capsys, tf32_restored):
    fractions = []
    fake_cuda(monkeypatch, 80e9, fractions)
    monkeypatch.delenv("BOOK_T4", raising=False)
    companion.setup(seed=0, profile="gpu", device="cuda")
    assert fractions == [] and torch.backends.cuda.matmul.allow_tf32
    assert "T4" not in capsys.readouterr().out


def test_t4_emulation_without_cuda_says_nothing_is_emulated():
    assert "nothing is emulated" in runtime.emulate_t4(torch.device("cpu"))


# --- the peak-memory record ----------------------------------------------------------------
def mock_peak(monkeypatch, allocated: int, reserved: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: reserved)


class FakeShell:
    def __init__(self):
        self.events = SimpleNamespace(callbacks={"post_run_cell": []})
        self.events.register = lambda name, fn: self.events.callbacks[name].append(fn)


def test_the_kernel_writes_its_peak_after_every_cell(monkeypatch, tmp_path):
    import IPython

    shell, log = FakeShell(), tmp_path / "peak.json"
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setenv("BOOK_PEAK_LOG", str(log))
    runtime._record_peak_memory()
    runtime._record_peak_memory()  # setup runs again: still one callback
    assert shell.events.callbacks["post_run_cell"] == [runtime._write_peak_memory]
    mock_peak(monkeypatch, 3 * 2**30, 4 * 2**30)
    shell.events.callbacks["post_run_cell"][0](object())  # IPython passes the cell's result
    assert json.loads(log.read_text()) == {"allocated_mib": 3072.0, "reserved_mib": 4096.0}
    assert rn._read_peak(log) == {"allocated_mib": 3072.0, "reserved_mib": 4096.0}


def test_no_peak_where_cuda_was_never_used(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert runtime.cuda_peak_memory() is None
    log = tmp_path / "peak.json"
    monkeypatch.setenv("BOOK_PEAK_LOG", str(log))
    runtime._write_peak_memory()
    assert not log.exists() and rn._read_peak(log) is None
    log.write_text("not json")
    assert rn._read_peak(log) is None


def test_the_status_page_shows_the_peak_and_the_t4_peak(tmp_path):
    (tmp_path / "notebooks").mkdir()
    setup = "profile=gpu device=cuda (NVIDIA H100 80GB HBM3) torch=2.11.0 python=3.12.3\n"
    a = timed_notebook(tmp_path / "notebooks" / "09_a.ipynb", setup)
    rn.record(a, 31.0, T0 + timedelta(seconds=31), cuda_peak={"allocated_mib": 61_952.0,
                                                              "reserved_mib": 70_000.0})
    rn.record_t4(a, 40.0, T0, {"allocated_mib": 12_800.0, "reserved_mib": 14_000.0}, 0)
    b = timed_notebook(tmp_path / "notebooks" / "10_b.ipynb", setup)
    rn.record(b, 31.0, T0 + timedelta(seconds=31), cuda_peak={"allocated_mib": 1024.0,
                                                              "reserved_mib": 2048.0})
    rn.record_t4(b, 5.0, T0, {"allocated_mib": 15_000.0, "reserved_mib": 15_000.0}, 1,
                 "torch.OutOfMemoryError: CUDA out of memory.")
    c = timed_notebook(tmp_path / "notebooks" / "11_c.ipynb", SETUP_CPU)
    d = timed_notebook(tmp_path / "notebooks" / "12_d.ipynb", setup)
    rn.record(d, 31.0, T0 + timedelta(seconds=31), gpu_peak_mib=59_800)  # nvidia-smi only
    statuses = [es.notebook_status(p) for p in (a, b, c, d)]
    assert statuses[0].t4["ran_through"] and not statuses[1].t4["ran_through"]
    lines = [line.replace(es.NBSP, " ") for line in es.table(statuses, root=tmp_path)]
    assert lines[0].count("|") == len(es.COLUMNS) + 1
    assert "HBM3, 2 cores; peak 60.5 / 68.4 GiB; T4 12.5 GiB |" in lines[2]
    assert "HBM3, 2 cores; peak 1.0 / 2.0 GiB; T4 over 15 GB |" in lines[3]
    assert "| CPU |" in lines[4]  # a CPU chapter: no memory
    assert "HBM3, 2 cores; device 58.4 GiB |" in lines[5]  # an older run's reading
    assert any(line.startswith("Peak: the most GPU memory") for line in lines)
    # a new run of the chapter keeps the T4 record, which is a run of its own
    rn.record(a, 31.0, T0 + timedelta(seconds=31))
    assert es.notebook_status(a).t4["cuda_peak_mib"]["allocated_mib"] == 12_800.0
    assert es.notebook_status(a).cuda_peak_mib is None


SETUP_CPU = "profile=cpu device=cpu torch=2.14.1 python=3.11.7\n"


def test_a_run_into_the_lease_folder_keeps_the_earlier_t4_record(tmp_path):
    """outputs_device.sh keeps what a lease made outside the working tree (copied anew at
    every call): a chapter run after its T4 run keeps the T4 record there."""
    source = timed_notebook(tmp_path / "09_a.ipynb", SETUP_CPU)
    into = tmp_path / "made"
    target = rn.made_path(str(source), str(into))
    assert target == into / "notebooks" / "09_a.ipynb"
    work = rn._prepare_into(str(source), str(into))
    assert work.exists() and not target.exists()  # the run replaces target on success
    target.write_bytes(source.read_bytes())
    rn.record_t4(target, 40.0, T0, {"allocated_mib": 100.0, "reserved_mib": 200.0}, 0)
    work = rn._prepare_into(str(source), str(into))
    assert nbformat.read(str(work), as_version=4).metadata.book.t4["seconds"] == 40.0
    assert "t4" not in nbformat.read(str(source), as_version=4).metadata.get("book", {})


def test_children_are_found_by_their_parent():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in rn._children(os.getpid())
        assert child.pid not in rn._children(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_a_run_is_stopped_at_the_deadline_kernel_and_all(tmp_path, monkeypatch):
    """At $BOOK_RUN_DEADLINE the kernel (in a session of its own, which a signal to the
    runner's process group would miss) is stopped, and the run reports STOPPED (124)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    pid_file = tmp_path / "kernel.pid"
    nb.cells = [nbformat.v4.new_code_cell(f"print({SETUP_CPU!r})"),
                nbformat.v4.new_code_cell(f"import os, time\nopen({str(pid_file)!r}, 'w')"
                                          ".write(str(os.getpid()))\ntime.sleep(300)")]
    path = tmp_path / "99_sleepy.ipynb"
    nbformat.write(nb, str(path))
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOOK_RUN_DEADLINE", str(time.time() + 8))
    start = time.perf_counter()
    assert rn.execute([str(path)], into=str(tmp_path / "made")) == rn.STOPPED
    assert time.perf_counter() - start < 25  # the kernel stopped at once, not 30 s later
    kernel = int(pid_file.read_text())
    time.sleep(1)
    assert not Path(f"/proc/{kernel}").exists() or \
        Path(f"/proc/{kernel}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not (tmp_path / "made" / "notebooks" / "99_sleepy.ipynb").exists()
