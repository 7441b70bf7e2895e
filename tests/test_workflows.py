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


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_workflows_match_githubs_schema():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"ci.yml", "pages.yml"}
    result = check_jsonschema(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path):
    broken = load("ci.yml")
    del broken["jobs"]["test"]["runs-on"]
    broken["on"] = {"push": {"branchez": ["main"]}}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert check_jsonschema(tmp_path / "broken.yml").returncode != 0


def test_ci_runs_ci_run_on_push_and_pull_request():
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    steps = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert ".ci/run" in steps


def test_pages_builds_the_book_and_publishes_build_html():
    pages = load("pages.yml")
    assert pages["permissions"]["pages"] == "write" and pages["permissions"]["id-token"] == "write"
    build = pages["jobs"]["build"]["steps"]
    assert any(s.get("run") == "make book" for s in build)
    upload = [s for s in build if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    deploy = pages["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])
