import atexit
import os
import shutil
import tempfile

import pytest

# The tests never load the repository's shipped weights (companion/weights): a run that the
# shipped set holds would load instead of train, and a recipe continued from an early run
# would skip the resume the tests record. An empty folder of this session's stands in (the
# notebooks' kernels inherit it); tests of the shipped set name their own folder, and those
# of the repository's set read companion.run.shipped.FOLDER directly.
os.environ["BOOK_SHIPPED"] = tempfile.mkdtemp(prefix="book-tests-shipped-")
atexit.register(shutil.rmtree, os.environ["BOOK_SHIPPED"], ignore_errors=True)

# torch is imported inside the fixtures: the xdist controller loads this file before it
# starts the workers and runs no test, so a top-level import cost check-fast seconds


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Each test starts from the same seed and the default dtype, whatever ran before."""
    import torch

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)  # whatever a module did at import time
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def one_thread():
    """One thread: tiny tensors only pay for synchronization with more. A module asks for
    it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_one_thread():
    """float64 for exact checks; one thread, since these small tensors only pay for
    synchronization with more (and crawl when the cores are busy). A module asks for it
    with `pytestmark = pytest.mark.usefixtures("float64_one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built once per test run (-W -n, from the stored outputs) into a temporary
    folder; returns its html folder. pytest-xdist workers share the one build (file lock).
    With BOOK_HTML set, the html folder of a book built beforehand is used as it is (for
    quick runs of a few tests while working on the book: build it with -W -n yourself)."""
    import json
    import os
    import re
    import subprocess
    import sys
    import time
    from pathlib import Path

    from filelock import FileLock

    root = Path(__file__).resolve().parent.parent
    if os.environ.get("BOOK_HTML"):  # a book built beforehand (jupyter-book build, -W -n)
        html = Path(os.environ["BOOK_HTML"])
        assert (html / "index.html").exists(), f"BOOK_HTML={html} holds no built book"
        return html
    mathjax = root / "_extra" / "mathjax" / "tex-mml-chtml.js"
    if not mathjax.exists():
        pytest.fail(f"{mathjax.relative_to(root)} is missing: run `make mathjax` (npm installs "
                    "the local MathJax the book serves; `make test` does it first)")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    out = base / "book-build"
    with FileLock(str(base / "book-build.lock")):
        result = out / "result.json"
        if not result.exists():
            out.mkdir(parents=True, exist_ok=True)
            jb = Path(sys.executable).parent / "jupyter-book"
            start = time.perf_counter()
            run = subprocess.run([str(jb), "build", str(root), "-W", "-n", "--keep-going",
                                  "--path-output", str(out)], capture_output=True, text=True,
                                 timeout=900)
            result.write_text(json.dumps({"returncode": run.returncode,
                                          "seconds": time.perf_counter() - start,
                                          "log": run.stdout + run.stderr}))
        res = json.loads(result.read_text())
    log = re.sub(r"\x1b\[[0-9;]*m", "", res["log"])  # no terminal colours in the report
    problems = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert res["returncode"] == 0, ("the book does not build with -W -n:\n"
                                    + "\n".join(problems)[-6000:] + "\n" + log[-3000:])
    return out / "_build" / "html"


# --- where the time goes (issue 65, point 11): seconds by test file, printed at the end ------
_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Sum setup, call and teardown of every test by its file (with xdist, the controller
    receives every worker's reports here)."""
    path = report.nodeid.split("::", 1)[0]
    _SECONDS[path] = _SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if len(_SECONDS) < 2:
        return
    chapters = sorted((p, s) for p, s in _SECONDS.items() if p.endswith(".ipynb"))
    tests = sorted(((s, p) for p, s in _SECONDS.items() if not p.endswith(".ipynb")),
                   reverse=True)
    write = terminalreporter.write_line
    if chapters:
        write(f"seconds by chapter (nbval, summed over cells; {sum(s for _, s in chapters):.0f}"
              " s in all): " + ", ".join(f"{p.split('/')[-1][:2]} {s:.0f}" for p, s in chapters))
    if tests:
        write(f"seconds by test file ({sum(s for s, _ in tests):.0f} s in all, the ten "
              "slowest): " + ", ".join(f"{p.split('/')[-1]} {s:.0f}" for s, p in tests[:10]))
