"""The package's two wings (issue 51): `companion.run`, the machinery, imports nothing from
the mathematics (import cycles: tests/test_import_graph.py); `train.py` and `fit`'s loop
stay short; recipes hold no file work and no command line, one short module per family; book/_ext
holds Sphinx extensions only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "companion"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False, name: str | None = None) -> set[str]:
    """The companion modules `path` (module `name`) imports, relative imports resolved, at
    any depth or at the module's top level only (what runs at import time, so what can
    make a cycle)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("companion")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("companion"):
                continue
            found.add(mod)
            for a in node.names:  # `from . import kl` imports the module companion.kl
                if (PKG.parent / (mod + "." + a.name).replace(".", "/")).with_suffix(
                        ".py").exists():
                    found.add(f"{mod}.{a.name}")
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def test_the_machinery_imports_nothing_from_the_mathematics():
    wrong = {}
    for name, path in modules().items():
        if name == "companion.run" or name.startswith("companion.run."):
            bad = {m for m in imports(path)
                   if m != "companion.run" and not m.startswith("companion.run.")}
            if bad:
                wrong[name] = sorted(bad)
    assert not wrong, f"companion.run imports the mathematics: {wrong}"


def test_the_check_sees_an_import_of_the_mathematics(tmp_path):
    """The check above can fail: a planted `from ..diffusion import x` is seen."""
    planted = tmp_path / "planted.py"
    planted.write_text("from ..diffusion import Diffusion\nfrom . import checks\n")
    assert imports(planted, name="companion.run.planted") == {
        "companion.diffusion", "companion.run", "companion.run.checks"}


def code_lines(lines: list[str]) -> int:
    return sum(1 for ln in lines if ln.strip() and not ln.strip().startswith("#"))


def test_train_is_short_and_fits_loop_reads_in_one_sitting():
    source = (PKG / "train.py").read_text()
    assert len(source.splitlines()) <= 250
    fit = next(n for n in ast.parse(source).body
               if isinstance(n, ast.FunctionDef) and n.name == "fit")
    loop = next(n for n in ast.walk(fit) if isinstance(n, ast.While))
    lines = source.splitlines()[loop.lineno - 1:loop.end_lineno]
    assert code_lines(lines) <= 60
    body = ast.unparse(loop)
    for step in ("zero_grad", "backward", "clip_grad_norm_", "scaler.step", ".update(model)"):
        assert step in body, f"fit's loop should show {step}"


def test_recipes_hold_no_file_work_and_no_command_line():
    for path in sorted((PKG / "recipes").glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
        assert not names & {"shutil", "os", "argparse", "_tmp_name"}, (path.name, names & {
            "shutil", "os", "argparse", "_tmp_name"})
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Assign))
                   and hasattr(n, "name")}
        assert "main" not in defined and "COMMANDS" not in source, path.name


def test_each_family_of_recipes_is_a_short_module():
    """companion/recipes/ (DESIGN.md): one module per family, each under 500 lines."""
    sizes = {p.name: len(p.read_text().splitlines())
             for p in sorted((PKG / "recipes").glob("*.py"))}
    assert len(sizes) >= 10 and not (PKG / "recipes.py").exists()
    assert all(n < 500 for n in sizes.values()), sizes


# DESIGN.md's layout, plus the tools and tests folders and the files a repository carries
TOP_LEVEL = {"README.md", "Makefile", "pyproject.toml", "environment.yml", "_config.yml",
             "_toc.yml", "book", "notebooks", "companion", "tests", "benchmarks", ".ci",
             "tools", "CHANGELOG.md", "CITATION.cff", "CONTRIBUTING.md", "LICENSE",
             ".github", ".gitignore", ".pre-commit-config.yaml"}


def tracked_top_level(root: Path) -> set[str]:
    """The first path component of every file git tracks under `root`."""
    import subprocess

    out = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split("/", 1)[0] for line in out.splitlines() if line}


def test_the_top_level_is_the_design_cards():
    """No drafts, pilots or plans beside the product (issue 91): what the pilots measured
    lives in a chapter, a benchmark or a test, and history keeps the rest."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    extra = tracked_top_level(ROOT) - TOP_LEVEL
    assert not extra, (f"{sorted(extra)} at the top level: DESIGN.md's layout has no place "
                       "for it (a pilot's result goes in a chapter, benchmarks/ or tests/)")


def test_the_top_level_check_sees_a_draft(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "plan.md").write_text("a plan\n")
    (tmp_path / "README.md").write_text("x\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    assert tracked_top_level(tmp_path) - TOP_LEVEL == {"drafts"}


def test_book_ext_holds_sphinx_extensions_only():
    for path in (ROOT / "book" / "_ext").iterdir():
        if path.name == "__pycache__":
            continue
        if path.is_dir():  # an extension's static files (script, style) beside its module
            assert path.with_suffix(".py").exists(), (
                f"{path.name}/: a folder with no extension {path.name}.py beside it")
            assert not list(path.rglob("*.py")), f"{path.name}/ holds Python: tools/"
            continue
        assert path.suffix == ".py", f"{path.name}: not a Sphinx extension (tools/)"
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "setup" for n in tree.body), (
            f"{path.name} has no setup(app): a tool belongs in tools/")


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_every_companion_import_names_a_module_of_this_checkout():
    """A stale name of a moved module (the glue module imported from its old place) is an
    error here, not an import that an installed copy of another checkout might satisfy."""
    mods = modules()
    stale = {name: sorted(m for m in imports(path) if m not in mods)
             for name, path in mods.items()}
    stale = {k: v for k, v in stale.items() if v}
    assert not stale, f"imports of modules that are not here: {stale}"


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_no_source_names_a_moved_module():
    """tools/rewire.py --check: nothing (but the CHANGELOG's history and any chapter pending
    its rewire) still names a module at its place before issue 51."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rewire", ROOT / "tools" / "rewire.py")
    rewire = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewire)
    pending = ()  # chapters not yet rewired
    files = [p for folder in ("companion", "tests", "benchmarks", "tools", "book")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".sh")]
    files += [p for p in (ROOT / "notebooks").glob("[0-9]*.*") if p.stem not in pending]
    files += [ROOT / "README.md", ROOT / "Makefile", ROOT / ".ci" / "run"]
    files = [p for p in files if p.name != "rewire.py" and "__pycache__" not in p.parts]
    assert [p for p in files if rewire.edit_file(p, check=True)] == []


def test_rewire_follows_an_import_with_a_comment_and_keeps_the_comment():
    """An import of a moved module followed by a comment was missed by the check (colab_run.py
    failed to import after the move): the import's names end before a comment."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rewire", ROOT / "tools" / "rewire.py")
    rewire = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewire)
    imp = "from companion import"  # split, or the check above would see this file
    assert rewire.rewire(f"{imp} recipes, colab  # noqa: E402\n") == (
        "from companion import recipes\nfrom companion.run import colab  # noqa: E402\n")
    assert rewire.rewire(f"{imp} a; {imp} glue; x") == (
        "from companion import a; from companion.run import glue; x")
    assert rewire.rewire(f"{imp} recipes  # plain\n") == f"{imp} recipes  # plain\n"
