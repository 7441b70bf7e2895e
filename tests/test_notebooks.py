"""Conventions every chapter notebook keeps (DESIGN.md, Notebook conventions)."""

import json
import re
from pathlib import Path

import jupytext
import pytest
import yaml

from companion.run import colab

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALLOWED_TAGS = {"nbval-ignore-output", "nbval-skip", "skip-execution", "raises-exception",
                "hide-input", "hide-output", "hide-cell", "remove-input", "remove-output",
                "remove-cell"}
ids = [p.stem for p in NOTEBOOKS]


def load(path):
    return json.loads(path.read_text())


def source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


# chapters not yet tagged by `python tools/rewire.py`
SETUP_PENDING: set[str] = set()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_header_agrees_with_repository_url(path):
    cells = load(path)["cells"]
    rel = path.relative_to(ROOT).as_posix()
    first, second = cells[0], cells[1]
    assert first["cell_type"] == "markdown" and source(first).startswith("# ")
    assert colab.badge(rel) in source(first), "badge out of date: run python -m companion.run.colab"
    assert second["cell_type"] == "code"
    assert source(second).startswith(colab.install_cell()), \
        "install cell out of date: run python -m companion.run.colab"
    assert "companion.setup(" in source(second)
    tags = second["metadata"].get("tags", [])
    assert "nbval-ignore-output" in tags
    # collapsed on the web page (its output, the profile and device, in view), and run as
    # any other cell: Colab installs companion from it
    assert not {"skip-execution", "nbval-skip", "remove-cell", "raises-exception"} & set(tags)
    assert "hide-input" in tags or path.stem in SETUP_PENDING, (
        "the setup cell must be collapsed on the page: python tools/rewire.py "
        f"{path.relative_to(ROOT)} {path.with_suffix('.md').relative_to(ROOT)}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_twin_is_in_sync(path):
    twin = path.with_suffix(".md")
    assert twin.exists(), f"{twin.name} missing: jupytext --set-formats ipynb,md:myst {path.name}"
    a = jupytext.read(path)
    b = jupytext.read(twin)
    strip = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
             for c in a.cells]
    other = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
             for c in b.cells]
    assert strip == other, f"{path.name} and {twin.name} differ: run `make sync`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_stored_outputs_are_clean(path):
    nb = load(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code if "skip-execution" not in
               c["metadata"].get("tags", [])), "unexecuted cells: run make outputs"
    for cell in code:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"stored error output:\n{source(cell)[:200]}"
            assert "image/svg+xml" not in out.get("data", {}), "SVG output: use PNG"
            text = "".join(out.get("text", ""))
            assert "Traceback (most recent call last)" not in text
    setup = "".join("".join(o.get("text", "")) for o in code[0].get("outputs", []))
    assert re.search(r"profile=(ci|cpu|gpu) device=", setup), "setup cell must print the profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_nbval_is_steered_by_tags(path):
    for cell in load(path)["cells"]:
        assert "NBVAL_" not in source(cell), "use cell tags, not # NBVAL_ comments"
        tags = set(cell["metadata"].get("tags", []))
        assert tags <= ALLOWED_TAGS, f"unknown tags {tags - ALLOWED_TAGS}"
        if "nbval-skip" in tags:
            assert "skip-execution" in tags, "nbval-skip needs skip-execution for the book"


def toc_files():
    """Every file in _toc.yml, root first, a chapter's sections after it (the API pages)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for c in part.get("chapters", []):
            files += [c["file"]] + [s["file"] for s in c.get("sections", [])]
    return files


def test_toc_entries_exist_and_name_the_notebooks():
    for f in toc_files():
        matches = list(ROOT.glob(f + ".*"))
        assert any(m.suffix in {".md", ".ipynb"} for m in matches), f"_toc.yml names missing {f}"
    listed = set(toc_files())
    for path in NOTEBOOKS:
        assert path.relative_to(ROOT).with_suffix("").as_posix() in listed, \
            f"{path.name} is not in _toc.yml"


def test_rewrite_repairs_a_stale_header(tmp_path):
    (tmp_path / "_config.yml").write_text(
        "repository:\n  url: https://github.com/someone/else\n  branch: v2\n")
    nb = tmp_path / "notebooks" / "01_x.md"
    nb.parent.mkdir()
    nb.write_text(f"# T\n\n{colab.badge('notebooks/01_x.ipynb')}\n\n{colab.install_cell()}")
    assert colab.rewrite(nb, root=tmp_path)
    text = nb.read_text()
    assert f"github/someone/else/blob/{colab.EDITION_BRANCH}/notebooks/01_x.ipynb" in text
    assert "'companion @ git+https://github.com/someone/else@v2'" in text
    assert "autoencoders-to-diffusion" not in text
    assert not colab.rewrite(nb, root=tmp_path)  # idempotent


def test_readme_badges_agree_and_name_real_notebooks():
    pairs = colab.readme_badges()
    assert len(pairs) == len(NOTEBOOKS), "README should have one Colab badge per chapter"
    for written, generated in pairs:
        assert written == generated, "README badge out of date: run python -m companion.run.colab"
        target = re.search(r"notebooks/[\w.-]+\.ipynb", written).group(0)
        assert (ROOT / target).exists(), f"README links a missing notebook {target}"


def test_rewrite_fixes_readme_badges(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/a/b\n")
    readme = tmp_path / "README.md"
    readme.write_text(colab.badge("notebooks/01_x.ipynb") + "\n" +
                      colab.badge("notebooks/02_y.ipynb") + "\n")
    assert colab.rewrite(readme, root=tmp_path)
    text = readme.read_text()
    assert f"github/a/b/blob/{colab.EDITION_BRANCH}/notebooks/01_x.ipynb" in text
    assert f"github/a/b/blob/{colab.EDITION_BRANCH}/notebooks/02_y.ipynb" in text


def test_repository_url_must_be_github(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: ftp://example.org/x\n")
    with pytest.raises(ValueError, match="GitHub URL"):
        colab.repository(tmp_path)


GLUE_OFF_THE_PAGE = [p for p in NOTEBOOKS if "06" <= p.name[:2] <= "12"]


@pytest.mark.parametrize("path", GLUE_OFF_THE_PAGE, ids=[p.stem for p in GLUE_OFF_THE_PAGE])
def test_glue_bookkeeping_is_off_the_page(path):
    """DESIGN.md, Numbers in prose: glue calls sit in cells the rendered page removes."""
    shown = [source(c)[:60] for c in load(path)["cells"]
             if c["cell_type"] == "code" and "glue(" in source(c)
             and "remove-cell" not in c["metadata"].get("tags", [])]
    assert not shown, f"visible code cells call glue(: {shown}; move the calls into a " \
                      "cell tagged remove-cell right after the computation"


# DESIGN.md, Verdicts: a sentence that ranks methods in chapters 10 on rests on a paired
# comparison whose words are chosen in code, so it quotes a glued value.
RANKING = re.compile(r"\b(better than|worse than|beats?|outperforms?|cannot match)\b"
                     r"|\b(best|worst|lowest|highest)\b(?!\s+(possible|explains))", re.I)
GLUED = re.compile(r"\{glue:text\}`[^`]+`")
RANKED = [p for p in NOTEBOOKS if p.name[:2] >= "10"]


def unglued_rankings(markdown: str) -> list[str]:
    """The sentences of a markdown cell that use a ranking word and quote no glued value
    (code blocks, solutions and display math left out)."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"^:::.*?^:::", " ", text, flags=re.S | re.M)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\s+", " ", text)
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*{(#])", text)
            if RANKING.search(s) and not GLUED.search(s)]


@pytest.mark.parametrize("path", RANKED, ids=[p.stem for p in RANKED])
def test_rankings_rest_on_a_glued_verdict(path):
    found = [s[:120] for c in load(path)["cells"] if c["cell_type"] == "markdown"
             for s in unglued_rankings(source(c))]
    assert not found, f"sentences that rank without a glued verdict: {found}; choose the " \
                      "words in code from companion.compare and glue them"


def test_an_unglued_ranking_is_caught():
    planted = ("The flow model is better than chapter 9's network at every count. "
               "Its lowest score is 126.\n\n```python\nbest = 1\n```")
    assert len(unglued_rankings(planted)) == 2
    glued = ("The flow model is {glue:text}`ch13_words` at every count, the lowest "
             "score {glue:text}`ch13_best`. The best possible denoiser is exact.")
    assert unglued_rankings(glued) == []


# Inside inline maths, a line that starts with "+ ", "- " or "* " is read by Markdown as a list
# item: the formula breaks there and the reader sees raw TeX (issue 75: chapter 16's ISM
# solution, chapter 3's exercise 3). Move the operator to the end of the line before.
LIST_MARKER = re.compile(r"^\s{0,3}[-+*]\s")


def broken_inline_maths(markdown: str) -> list[str]:
    """Lines that start like a list item while an inline `$` of their paragraph is open."""
    text = re.sub(r"\$\$.*?\$\$", " ", markdown, flags=re.S)
    text = re.sub(r"^(`{3,}).*?^\1", " ", text, flags=re.S | re.M)
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        open_ = False
        for line in paragraph.splitlines():
            if open_ and LIST_MARKER.match(line):
                found.append(line.strip()[:80])
            open_ ^= len(re.findall(r"(?<!\\)\$", line)) % 2 == 1
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_inline_maths_never_starts_a_list(path):
    found = [x for c in load(path)["cells"] if c["cell_type"] == "markdown"
             for x in broken_inline_maths(source(c))]
    assert not found, f"inline maths broken by a line that starts like a list item: {found}"


def test_a_broken_inline_formula_is_caught():
    planted = "so $J = -\\operatorname{tr} A\n+ \\tfrac12 \\|A\\|^2$. Then:\n\n- a list item"
    assert broken_inline_maths(planted) == ["+ \\tfrac12 \\|A\\|^2$. Then:"]
    assert broken_inline_maths("$$\na\n+ b\n$$\n\n- item $x$\n- item") == []


# Issue 95: every figure is numbered and captioned, as in chapters 1-20: a code cell whose
# stored outputs hold an image carries `mystnb: figure: {caption, name}` beside
# `image: {alt}` in its metadata, the name `chN-fig-...`; without them the page shows an
# unnumbered image with no caption, and the Colab edition no caption either. A captioned
# cell has one displayed output, since myst-nb wraps every display output of the cell in
# the figure (a second would repeat the name). The cells that cannot take a caption yet,
# by their chapter and the first line of their source, each with the reason:
IMAGE_MIME = ("image/png", "image/jpeg", "image/svg+xml")
TWO_OUTPUTS = ("two displayed outputs in one cell: myst-nb wraps each in the figure, so the "
               "cell must be split (the figure in a cell of its own) before it takes a caption")
UNCAPTIONED = {
    ("06_vae_mnist", "stats = {}"): "a table and the KL figure; " + TWO_OUTPUTS,
    ("06_vae_mnist", "def knn(images):"): "the re-encoding figure and a table; " + TWO_OUTPUTS,
    ("09_ddpm_mnist", "fig, ax = plot.subplots(height=1.8)"):
        "the sample grid and the chain strip; " + TWO_OUTPUTS,
    ("09_ddpm_mnist", "gen.manual_seed(6)"): "the denoise-only figure and a table; "
                                             + TWO_OUTPUTS,
}


def figure_problems(cells: list[dict], stem: str) -> tuple[list[str], set[str]]:
    """What keeps a notebook's figures from being numbered and captioned, and the first
    lines of its image cells that UNCAPTIONED excuses."""
    problems, excused, names = [], set(), set()
    prefix = f"ch{int(stem[:2])}-fig-"
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        head = source(cell).strip().split("\n")[0]
        shown = [o for o in cell.get("outputs", [])
                 if o["output_type"] in ("display_data", "execute_result")]
        meta = cell["metadata"].get("mystnb", {})
        figure = meta.get("figure") or {}
        if not any(m in o.get("data", {}) for o in shown for m in IMAGE_MIME):
            if figure:
                problems.append(f"{head!r}: a figure caption on a cell with no image")
            continue
        if not (figure.get("caption") and figure.get("name")):
            if (stem, head) in UNCAPTIONED:
                excused.add(head)
            else:
                problems.append(f"{head!r}: an image with no figure caption and name "
                                "(mystnb: figure: caption:, name: in the cell's metadata)")
            continue
        name = str(figure["name"])
        if not name.startswith(prefix) or name in names:
            problems.append(f"{head!r}: figure name {name!r} is not a new {prefix}...")
        names.add(name)
        if not (meta.get("image") or {}).get("alt"):
            problems.append(f"{head!r}: figure {name} has no alt text (mystnb: image: alt:)")
        if len(shown) > 1:
            problems.append(f"{head!r}: figure {name} has {len(shown)} displayed outputs; "
                            "myst-nb would give each the caption and name")
    return problems, excused


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_every_figure_is_numbered_and_captioned(path):
    problems, excused = figure_problems(load(path)["cells"], path.stem)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)
    stale = {head for stem, head in UNCAPTIONED if stem == path.stem} - excused
    assert not stale, (f"{path.name}: UNCAPTIONED lists cells that are captioned now or gone: "
                       f"{sorted(stale)}; take them off the list")


def test_an_uncaptioned_figure_is_caught():
    def cell(meta, *data, first="fig = plot()"):
        return {"cell_type": "code", "source": first + "\nshow(fig)", "metadata": meta,
                "outputs": [{"output_type": "display_data", "data": d} for d in data]}
    png, svg, md = {"image/png": "iVBO"}, {"image/svg+xml": "<svg/>"}, {"text/markdown": "|a|"}
    good = {"mystnb": {"figure": {"caption": "A curve.", "name": "ch3-fig-curve"},
                       "image": {"alt": "A rising curve."}}}
    assert figure_problems([cell(good, png)], "03_elbo") == ([], set())
    assert figure_problems([cell({}, md)], "03_elbo") == ([], set())  # no image, no figure
    cases = {"no caption": ([cell({}, png)], "03_elbo"),
             "an SVG image": ([cell({}, svg)], "03_elbo"),
             "alt text alone": ([cell({"mystnb": {"image": {"alt": "A curve."}}}, png)],
                                "03_elbo"),
             "no alt text": ([cell({"mystnb": {"figure": good["mystnb"]["figure"]}}, png)],
                             "03_elbo"),
             "the same name twice": ([cell(good, png)] * 2, "03_elbo"),
             "a table inside the figure": ([cell(good, md, png)], "03_elbo"),
             "chapter 3's name in chapter 4": ([cell(good, png)], "04_reparameterization"),
             "a caption and no image": ([cell(good, md)], "03_elbo")}
    for what, (cells, stem) in cases.items():
        assert len(figure_problems(cells, stem)[0]) == 1, what
    excused = cell({}, png, md, first="stats = {}")
    assert figure_problems([excused], "06_vae_mnist") == ([], {"stats = {}"})
    assert figure_problems([excused], "07_hierarchical_vae")[0]  # excused in chapter 6 only
