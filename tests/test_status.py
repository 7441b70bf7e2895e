"""The status page (book/status.md): each chapter's run time, profile and device, measured.

The page's table is made at build time from the notebooks by book/_ext/execution_status.py;
these tests check that the measurements are read correctly, that a measurement that does
not belong to the stored outputs is not shown as one, and that every chapter has them.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "execution_status", ROOT / "book" / "_ext" / "execution_status.py")
es = importlib.util.module_from_spec(_spec)
sys.modules["execution_status"] = es
_spec.loader.exec_module(es)
_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
rn = importlib.util.module_from_spec(_spec)  # the runner that records what the table reads
sys.modules["run_notebooks"] = rn
_spec.loader.exec_module(rn)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SETUP = "profile=cpu device=cpu torch=2.5.0 python=3.11.7\n"


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def make_notebook(path: Path, durations=(1.0, 30.0, 2.0), gaps=0.01, setup=SETUP,
                  timestamps=True, wall=None) -> Path:
    """A notebook whose code cells ran for `durations` seconds, one after the other."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# A chapter\n\nText."))
    t = T0
    for i, d in enumerate(durations):
        cell = nbformat.v4.new_code_cell(f"x = {i}")
        if i == 0:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=setup)]
        if timestamps:
            cell.metadata["execution"] = {"iopub.execute_input": stamp(t),
                                          "shell.execute_reply": stamp(t + timedelta(seconds=d))}
        t += timedelta(seconds=d + gaps)
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    if wall is not None:
        rn.record(path, wall, T0 + timedelta(seconds=sum(durations) + 3))
    return path


def test_cell_timestamps_give_span_and_slowest_cell(tmp_path):
    st = es.notebook_status(make_notebook(tmp_path / "a.ipynb"))
    assert st.problems == []
    assert st.title == "A chapter" and (st.profile, st.device) == ("cpu", "cpu")
    assert st.source == "cells" and st.seconds == pytest.approx(33.02, abs=0.01)
    assert st.slowest_cell[1] == 1 and st.slowest_cell[0] == pytest.approx(30.0)
    assert st.executed == T0


def test_recorded_wall_time_is_used_when_it_belongs_to_the_outputs(tmp_path):
    st = es.notebook_status(make_notebook(tmp_path / "a.ipynb", wall=40.0))
    assert st.source == "wall" and st.seconds == 40.0 and st.cpus and st.checkpoints == "fresh"


def test_stale_wall_time_is_not_shown(tmp_path):
    path = make_notebook(tmp_path / "a.ipynb", wall=40.0)
    # the notebook is executed again later by hand: the cells move, the record does not
    nb = nbformat.read(str(path), as_version=4)
    for c in nb.cells[1:]:
        ex = c.metadata["execution"]
        for k in ex:
            ex[k] = stamp(datetime.fromisoformat(ex[k].replace("Z", "+00:00"))
                          + timedelta(hours=2))
    nbformat.write(nb, str(path))
    st = es.notebook_status(path)
    assert st.source == "cells" and st.seconds == pytest.approx(33.02, abs=0.01)


def test_missing_measurements_are_problems(tmp_path):
    st = es.notebook_status(make_notebook(tmp_path / "a.ipynb", timestamps=False))
    assert st.seconds is None and any("no execution timestamps" in p for p in st.problems)
    st = es.notebook_status(make_notebook(tmp_path / "b.ipynb", setup="hello\n"))
    assert st.profile == "?" and any("companion.setup()" in p for p in st.problems)


def test_outputs_from_two_runs_are_a_problem(tmp_path):
    path = make_notebook(tmp_path / "a.ipynb")
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].metadata["execution"] = {"iopub.execute_input": stamp(T0 + timedelta(hours=1)),
                                         "shell.execute_reply": stamp(T0 + timedelta(hours=1,
                                                                                     seconds=5))}
    nbformat.write(nb, str(path))
    assert any("more than one run" in p for p in es.notebook_status(path).problems)


def test_table_and_formatting(tmp_path):
    (tmp_path / "notebooks").mkdir()
    a = es.notebook_status(make_notebook(tmp_path / "notebooks" / "01_a.ipynb", wall=75.0))
    b = es.notebook_status(make_notebook(tmp_path / "notebooks" / "02_b.ipynb"))
    lines = es.table([a, b], root=tmp_path)
    # a cell breaks between items only: "1 min 15 s" and "cell 2" are each one piece
    assert "| 1\u00a0min\u00a015\u00a0s |" in lines[2] and "| 30\u00a0s, cell\u00a02 |" in lines[2]
    lines = [line.replace(es.NBSP, " ") for line in lines]
    assert lines[2].startswith("| {doc}`/notebooks/01_a` | `cpu` | CPU, ")
    assert "| 1 min 15 s |" in lines[2] and "| 33 s † |" in lines[3]
    assert "30 s, cell 2" in lines[2]
    assert lines[4].startswith("| **All chapters**") and "1 min 48 s" in lines[4]
    assert lines[-1].startswith("† Outputs not made by `make outputs`")
    assert es.format_seconds(4.25) == "4.2 s" and es.format_seconds(3725) == "1 h 02 min"


def test_every_chapter_has_complete_measurements():
    """What the status page shows for each chapter in the TOC is a real measurement."""
    chapters = es.toc_notebooks()
    assert chapters, "no chapter in _toc.yml"
    for path in chapters:
        st = es.notebook_status(path)
        assert st.problems == [], f"{path.name}: {st.problems}"
        assert st.profile in ("cpu", "gpu", "ci") and st.seconds and st.seconds > 0


def test_status_page_is_in_the_book():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "book/status" in files
    assert "```{execution-status}" in (ROOT / "book" / "status.md").read_text()
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["sphinx"]["local_extensions"]["execution_status"] == "book/_ext"


@pytest.mark.slow
def test_execute_records_the_wall_time(tmp_path, monkeypatch):
    """`make outputs`' runner: runs the notebook, times it, stores the time in it."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Timed"),
                nbformat.v4.new_code_cell(f"import time\nprint({SETUP!r}, end='')"),
                nbformat.v4.new_code_cell("time.sleep(0.5)")]
    path = tmp_path / "timed.ipynb"
    nbformat.write(nb, str(path))
    monkeypatch.delenv("BOOK_CACHE", raising=False)
    assert rn.execute([str(path)]) == 0
    st = es.notebook_status(path)
    assert st.problems == [] and st.source == "wall" and st.checkpoints == "fresh"
    assert st.slowest_cell[1] == 1 and 0.5 <= st.slowest_cell[0] < 5
    assert st.seconds >= 0.5


def test_reused_means_a_checkpoint_was_loaded(tmp_path):
    path = make_notebook(tmp_path / "a.ipynb")
    rn.record(path, 40.0, T0 + timedelta(seconds=36), loaded=["ch9-ddpm-gpu.pt"])
    st = es.notebook_status(path)
    assert st.checkpoints == "reused"
    assert any("‡" in line for line in es.table([st], tmp_path))
    rn.record(path, 40.0, T0 + timedelta(seconds=36), loaded=[])
    assert es.notebook_status(path).checkpoints == "fresh"


def test_the_loaded_models_training_time_gives_the_cost_from_an_empty_cache(tmp_path):
    """A reused run's row adds what training its loaded models took, as their files record
    it; a run kept at stages counts once (its final file holds every session's time); a
    missing file makes the cost unknown, not zero."""
    import torch

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, secs in (("ch9-ddpm-cpu.pt", 600.0), ("ch9-ddpm-step225-cpu.pt", 150.0),
                       ("ch9-classifier-cpu.pt", 60.0)):
        torch.save({"train_seconds": secs}, folder / name)
    names = ["ch9-classifier-cpu.pt", "ch9-ddpm-cpu.pt", "ch9-ddpm-step225-cpu.pt"]
    assert rn.training_seconds(tmp_path, names) == 660.0
    assert rn.training_seconds(tmp_path, names + ["ch13-flow-cpu.pt"]) is None
    path = make_notebook(tmp_path / "a.ipynb")
    rn.record(path, 40.0, T0 + timedelta(seconds=36), loaded=names, loaded_seconds=660.0)
    st = es.notebook_status(path)
    assert st.loaded_train_seconds == 660.0
    row = es.table([st], tmp_path)[2].replace(es.NBSP, " ")
    assert "40 s ‡ (11 min 40 s from an empty cache)" in row
    rn.record(path, 40.0, T0 + timedelta(seconds=36), loaded=names, loaded_seconds=None)
    row = es.table([es.notebook_status(path)], tmp_path)[2]
    assert "‡" in row and "empty cache" not in row


def test_fit_names_the_checkpoints_it_loads(tmp_path, monkeypatch):
    import torch

    from companion.train import fit

    log = tmp_path / "loaded.txt"
    monkeypatch.setenv("BOOK_LOADED_LOG", str(log))
    ckpt = tmp_path / "m.pt"
    x = torch.randn(8, 3)

    def loss(model, xb):
        return model(xb).pow(2).mean()

    fit(torch.nn.Linear(3, 1), loss, x, steps=2, batch_size=4, checkpoint=ckpt, quiet=True)
    assert not log.exists()  # trained, not loaded
    fit(torch.nn.Linear(3, 1), loss, x, steps=2, batch_size=4, checkpoint=ckpt, quiet=True)
    assert log.read_text().split() == ["m.pt"]


def test_a_chapter_that_loads_another_profiles_model_is_flagged(tmp_path):
    gpu = "profile=gpu device=cuda torch=2.11.0 python=3.12.3\n"
    ch9 = make_notebook(tmp_path / "09_ddpm.ipynb", wall=40.0)  # stored in cpu
    ch10 = make_notebook(tmp_path / "10_cmp.ipynb", setup=gpu)
    rn.record(ch10, 40.0, T0 + timedelta(seconds=36), loaded=["ch9-ddpm-gpu.pt"])
    statuses = [es.notebook_status(ch9), es.notebook_status(ch10)]
    assert es.mismatched(statuses[1], statuses) == [(9, "gpu", "cpu")]
    lines = es.table(statuses, tmp_path)
    assert any(line.startswith("§") and "chapter 9" in line for line in lines)
    # the same chapter 9 stored from the gpu profile: nothing to flag
    ch9 = make_notebook(tmp_path / "09_ddpm.ipynb", setup=gpu, wall=40.0)
    statuses = [es.notebook_status(ch9), es.notebook_status(ch10)]
    assert es.mismatched(statuses[1], statuses) == []
    assert not any("§" in line for line in es.table(statuses, tmp_path))


def test_the_table_names_the_software_that_made_the_outputs(tmp_path):
    path = make_notebook(tmp_path / "01_a.ipynb", wall=40.0)
    st = es.notebook_status(path)
    assert set(st.versions) >= {"torch", "numpy", "matplotlib"}  # recorded by record()
    row = es.table([st], tmp_path)[2]
    assert "torch\u00a02.5.0" in row  # the kernel's own line wins for torch
    assert f"numpy\u00a0{st.versions['numpy']}" in row  # one unbroken item


def test_device_names_are_short():
    assert es.short_device("cuda (NVIDIA H100 80GB HBM3)") == "H100 80GB HBM3"
    assert es.short_device("cpu") == "CPU"
    assert es.short_device("mps") == "mps"


def test_device_cell_breaks_after_the_model_and_the_comma_only(tmp_path):
    st = es.NotebookStatus(tmp_path / "a.ipynb", device="cuda (NVIDIA H100 80GB HBM3)",
                           cpus=16)
    assert es.device_cell(st) == "H100 80GB\u00a0HBM3, 16\u00a0cores"
    st = es.NotebookStatus(tmp_path / "a.ipynb", device="cpu", cpus=2)
    assert es.device_cell(st) == "CPU, 2\u00a0cores"
    assert es.device_cell(es.NotebookStatus(tmp_path / "a.ipynb", device="mps")) == "mps"


@pytest.mark.slow
def test_execute_records_which_models_trained_during_the_run(tmp_path, monkeypatch):
    """A stored run lists the checkpoints it trained (the shipped set lacked them): the
    first run of a fit trains it, the second loads it and lists nothing."""
    code = ("import torch\nfrom torch import nn\nfrom companion.train import fit\n"
            "torch.manual_seed(0)\nm = nn.Linear(2, 1)\n"
            "fit(m, lambda m, b: m(b).pow(2).mean(), torch.randn(8, 2), steps=3, "
            f"batch_size=4, quiet=True, checkpoint={str(tmp_path / 'ck' / 'toy-ci.pt')!r})")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(code)]
    path = tmp_path / "fits.ipynb"
    for expected in (["toy-ci.pt"], []):
        nbformat.write(nb, str(path))
        monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("BOOK_TRAIN_LOG", raising=False)
        assert rn.execute([str(path)]) == 0
        assert nbformat.read(str(path), 4).metadata["book"]["execution"]["trained"] == expected


def test_trained_in_reads_fits_log():
    log = ("01:00:00\tstart\ttrain\ta-cpu.pt\t0/100\n"
           "01:01:00\tend\ttrain\ta-cpu.pt\t100/100\t60 s\n"
           "01:01:00\tstart\ttrain\tb-cpu.pt\t100/100\n"
           "01:02:00\tstart\ttrain\tc-cpu.pt\t40/100\n01:02:00\tstart\ttrain\t-\t0/5\n")
    assert rn.trained_in(log) == ["a-cpu.pt", "c-cpu.pt"]
