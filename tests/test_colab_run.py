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
