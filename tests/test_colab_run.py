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


def test_both_runs_share_one_pool_longest_first(monkeypatch, tmp_path, capsys):
    """`make test-colab` (--both): one install and one set of editions for the ci run and
    the smoke run; the pool takes the smoke run first, each from the last chapter down, and
    each run gets its own cache (the ci one seeded with nbval's models)."""
    module = _module("colab_run_both")
    calls, installs = [], []
    monkeypatch.setattr(module, "find_python313", lambda: "python3.13")
    monkeypatch.setattr(module, "build_venv", lambda python: None)
    monkeypatch.setattr(module, "install_book", lambda: installs.append(1))
    monkeypatch.setattr(module, "editions", lambda nbs, out: list(nbs))
    monkeypatch.setattr(module, "installed", lambda: {"torch": "2.x"})
    monkeypatch.setattr(module, "seed_ci_models", lambda cache: f"seeded {cache.name}")

    def execute(nb, env, workdir):
        calls.append((env["BOOK_PROFILE"], env["BOOK_SMOKE"], Path(env["BOOK_CACHE"]).name,
                      nb.name))
        error = "boom" if (nb.name, env["BOOK_SMOKE"]) == ("02_b.ipynb", "0") else ""
        return nb.name, 1.0, error, [], "0 slow networks repeated their output", ""

    monkeypatch.setattr(module, "execute", execute)
    nbs = [str(tmp_path / f"{n}.ipynb") for n in ("01_a", "02_b")]
    assert module.main(["--both", "--jobs", "1", "--reuse-ci-models", *nbs]) == 1
    assert calls == [("gpu", "1", "cache-smoke", "02_b.ipynb"),
                     ("gpu", "1", "cache-smoke", "01_a.ipynb"),
                     ("ci", "0", "cache-ci", "02_b.ipynb"),
                     ("ci", "0", "cache-ci", "01_a.ipynb")]
    out = capsys.readouterr().out
    assert installs == [1] and "seeded cache-ci" in out
    assert "(ci profile, Python" in out and "1 of 2 chapters ran" in out
    assert "(gpu profile, smoke run, Python" in out and "2 of 2 chapters ran" in out
    assert "FAIL 02_b.ipynb" in out and "4 runs in" in out


def test_venv_only_builds_and_stops(monkeypatch):
    module = _module("colab_run_venv")
    built = []
    monkeypatch.setattr(module, "find_python313", lambda: "python3.13")
    monkeypatch.setattr(module, "build_venv", built.append)
    monkeypatch.setattr(module, "install_book", lambda: pytest.fail("must not install"))
    assert module.main(["--venv-only"]) == 0 and built == ["python3.13"]
