"""`make test-colab` without a Python 3.13: a clear skip, or a failure where it is required."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "colab_run.py"


@pytest.fixture
def colab_run(monkeypatch):
    spec = importlib.util.spec_from_file_location("colab_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "find_python313", lambda: None)
    monkeypatch.setattr(module, "build_venv", lambda *_: pytest.fail("must not build"))
    return module


def test_without_python_313_it_says_so_and_skips(colab_run, monkeypatch, capsys):
    monkeypatch.delenv("COLAB_REQUIRED", raising=False)
    assert colab_run.main([]) == 0
    assert "no Python 3.13 found" in capsys.readouterr().out


def test_without_python_313_it_fails_where_required(colab_run, monkeypatch, capsys):
    monkeypatch.setenv("COLAB_REQUIRED", "1")
    assert colab_run.main(["--smoke"]) == 1
    assert "pyenv install 3.13" in capsys.readouterr().err


def test_a_python_that_does_not_run_is_not_taken(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("colab_run2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = tmp_path / "python3.13"
    fake.write_text("#!/bin/sh\nexit 127\n")  # like pyenv's shim when 3.13 is not selected
    fake.chmod(0o755)
    monkeypatch.setenv("PYTHON313", str(fake))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert module.find_python313() is None


def _module(name="colab_run3"):
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_records_a_failed_assert_by_its_source_and_goes_on():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell()
    try:
        shell.run_cell(_module().SOFT_ASSERTS)
        result = shell.run_cell("x = 1\nassert x == 2, 'no'\nassert x == 1\ny = x + 1")
        assert result.success and shell.user_ns["y"] == 2  # the cell ran on
        assert [test for _, test in shell.user_ns["__smoke_failed__"]] == ["x == 2"]
    finally:
        InteractiveShell.clear_instance()


def test_every_assert_the_smoke_run_lets_fail_is_one_of_its_chapter():
    """A listed assert that a chapter no longer holds is stale: remove or update its line."""
    import ast
    import json

    allowed = _module().untrained()
    assert allowed, "tests/smoke_untrained.txt lists nothing"
    root = SCRIPT.parent.parent / "notebooks"
    stale = []
    for chapter in sorted({c for c, _ in allowed}):
        cells = json.loads((root / f"{chapter}.ipynb").read_text())["cells"]
        tests = set()
        for cell in cells:
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                tree = ast.parse("\n".join(ln for ln in source.splitlines()
                                           if not ln.lstrip().startswith(("%", "!"))))
                tests |= {ast.unparse(n.test) for n in ast.walk(tree)
                          if isinstance(n, ast.Assert)}
        stale += [(c, t) for c, t in allowed if c == chapter and t not in tests]
    assert not stale, stale


def test_the_ci_run_reuses_only_the_ci_models_of_this_cache(colab_run, monkeypatch,
                                                             tmp_path):
    """`--reuse-ci-models` (.ci/run): the ci checkpoints that nbval trained are copied into
    the Colab run's fresh cache; the other profiles' are not."""
    cache = tmp_path / "mine"
    (cache / "checkpoints").mkdir(parents=True)
    for name in ("ch9-ddpm-ci.pt", "ch9-ddpm-cpu.pt", "judge-ci.pt.lock"):
        (cache / "checkpoints" / name).write_bytes(b"x")
    monkeypatch.setenv("BOOK_CACHE", str(cache))
    monkeypatch.delenv("BOOK_SMOKE", raising=False)
    said = colab_run.seed_ci_models(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "ch9-ddpm-ci.pt"]
    assert said.startswith("1 ci checkpoints reused")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "empty"))
    assert "every chapter trains its own" in colab_run.seed_ci_models(tmp_path / "run2")
