"""CI's stage table held against the last landed run's (tools/ci_stages.py, issue 91)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import ci_stages  # noqa: E402


def test_a_stage_grown_by_more_than_a_fifth_is_named_and_others_are_not():
    base = {"make test": 1000, "make pdf": 300, "tiny": 5}
    now = {"make test": 1150, "make pdf": 400, "tiny": 12, "new stage": 30}
    lines = ci_stages.grown(base, now)
    assert lines == ["make pdf: 400 s, up 33% from 300 s in the last landed run",
                     "new stage: 30 s, a stage the last landed run did not have"]
    assert ci_stages.grown(base, base) == []


def test_compare_prints_the_grown_stages(tmp_path, capsys):
    base, now = tmp_path / "base.tsv", tmp_path / "now.tsv"
    ci_stages.keep(_tsv(now, {"make test": 1000}), base, machine="2-core test machine")
    assert base.read_text().startswith("# CI's wall seconds")
    assert ci_stages.read(base) == {"make test": 1000}
    _tsv(now, {"make test": 1500})
    assert ci_stages.compare(base, now) == 0  # it reports; it never fails the run
    out = capsys.readouterr().out
    assert "grew by more than a fifth" in out and "make test: 1500 s, up 50%" in out
    ci_stages.compare(tmp_path / "absent.tsv", now)
    assert "no " in capsys.readouterr().out


def test_a_malformed_table_says_where(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("# note\nmake test 100\n")
    with pytest.raises(SystemExit, match=r"bad.tsv:2: expected 'stage<TAB>seconds'"):
        ci_stages.read(path)


def test_ci_run_writes_its_stages_and_compares_them_with_the_kept_table():
    run = (ROOT / ".ci" / "run").read_text()
    assert "ci_stages.py compare .ci/stages.tsv" in run
    kept = ci_stages.read(ROOT / ".ci" / "stages.tsv")
    begun = set(__import__("re").findall(r'begin "([^"]+)"', run))
    # a stage the kept table lacks is named as new at the end of the run, not an error
    assert "make test (pytest, nbval ci)" in begun & set(kept), (begun, set(kept))


def test_the_script_runs_on_the_system_python_with_no_venv(tmp_path):
    base, now = _tsv(tmp_path / "b.tsv", {"a": 100}), _tsv(tmp_path / "n.tsv", {"a": 200})
    out = subprocess.run([sys.executable, "-S", str(ROOT / "tools" / "ci_stages.py"),
                          "compare", str(base), str(now)], capture_output=True, text=True,
                         check=True).stdout
    assert "a: 200 s, up 100%" in out


def _tsv(path, table):
    path.write_text("".join(f"{k}\t{v}\n" for k, v in table.items()))
    return path
