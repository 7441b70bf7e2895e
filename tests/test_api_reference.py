"""The API reference (book/api/) and the links between the chapters' equations and the code.

Every labelled equation ($$ ... $$ (label)) that a companion function implements is followed,
in the same Markdown cell, by a {py:func} (or {py:meth}, {py:class}) role naming that
function, and the function's docstring cites the label back (`Book: :eq:`label`.`), so
that the reader goes from the equation to the code and back in one click each way. These
tests read the sources only (no build): every role resolves to a documented companion
object, every equation names a function that cites it or is exempt for a stated reason,
every cited label exists and names its citing function beside it, every public module has
its page, and every docstring is valid reStructuredText once book/_ext/api_reference.py
has made it safe. tests/test_book.py checks the same links in the built pages.
"""

from __future__ import annotations

import importlib
import inspect
import io
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import api_reference  # noqa: E402  (book/_ext is not a package)

# Labelled equations that no companion function implements, each with its reason. Keep it
# short: an equation that code computes gets its function named instead. An entry whose
# equation is gone, or that names its function after all, fails
# test_exempt_equations_are_still_exempt, so the list can only shrink.
DERIVATION = "a step of a derivation: the code computes where the argument ends"
CHAPTER_CELL = "computed by the chapter's own code cell, not by a companion function"
EXEMPT: dict[str, str] = {
    "ch2-jensen": DERIVATION + " (non-negativity of the KL divergence)",
    "ch2-invariance": "a property of the divergence, checked by Monte Carlo in the chapter",
    "ch3-naive-mc": CHAPTER_CELL + " (the estimator the text rejects)",
    "ch3-bayes": DERIVATION + " (Bayes' rule, to show why it does not help)",
    "ch3-elbo-split": DERIVATION + " (ch3-identity)",
    "ch3-two-gaps": "a definition (the two parts of the gap); " + CHAPTER_CELL,
    "ch4-grad-theta": CHAPTER_CELL + " (autograd on the decoder's matrix)",
    "ch4-product-rule": DERIVATION + " (why the gradient in phi is hard)",
    "ch4-score-mean": DERIVATION + " (the swapped gradient is zero)",
    "ch4-change-of-variables": DERIVATION + " (ch4-entropy-term)",
    "ch5-two-gaps": "a definition (model misfit and inference gap); " + CHAPTER_CELL,
    "ch8-elbo-chain": DERIVATION + " (ch8-bound)",
    "ch8-elbo-markov": DERIVATION + " (ch8-bound)",
    "ch8-bayes": DERIVATION + " (ch8-bound)",
    "ch8-elbo-telescoped": DERIVATION + " (ch8-bound)",
    "ch8-posterior-bayes": DERIVATION + " (ch8-posterior)",
    "ch8-eps-star-gauss": CHAPTER_CELL + " (gaussian_bound: the exact bound on Gaussian data)",
    "ch8-linear-mean": CHAPTER_CELL + " (gaussian_bound)",
    "ch8-residual": DERIVATION + " (gaussian_bound's squared error)",
    "ch8-kl-gauss": CHAPTER_CELL + " (gaussian_bound)",
    "ch8-score-posterior-mean": DERIVATION + " (ch8-tweedie)",
    "ch9-best-variance": "the answer to an exercise, derived and not computed",
    "ch11-bound-jensen": DERIVATION + " (ch11-bound)",
    "ch12-posterior": "the distribution the in-painting methods aim at; none computes it",
    "ch13-fokker-planck": DERIVATION + " (ch13-pf-ode)",
    "ch14-chain": DERIVATION + " (ch14-steps)",
    "ch14-step-kl": DERIVATION + " (ch14-steps)",
    "ch13-prior-gap": "a first-order expansion, checked by an assert in the chapter",
    "ch13-sure-pixel": CHAPTER_CELL + " (sure_pixel_bits, a column of the start-time table)",
    "ch14-schedule-free": DERIVATION + " (a change of variables in ch14-elbo)",
    "ch14-any-order": "an identity for the exact denoiser, checked on the exact toy",
    "ch15-one-step": DERIVATION + " (one Euler step of a straight path)",
    "ch15-consistency": "a definition: the property ch15-consistency-pde states locally",
    "ch16-by-parts": DERIVATION + " (integration by parts, the step to ch16-ism)",
    "ch18-snr-integral": DERIVATION + " (a change of variables in ch18-continuous-loss)",
    "ch16-tilted": "a definition (the tilted distribution the guided sampler is compared "
                   "with); " + CHAPTER_CELL,
}

ROLE = re.compile(r"\{py:(func|meth|class|mod)\}`~?([\w.]+)`")
EQ_END = re.compile(r"^\s*\$\$\s*\(([\w:-]+)\)\s*$")
MATH_LABEL = re.compile(r"^\s*:label:\s*([\w:-]+)\s*$")
CITE = re.compile(r":eq:`([\w:-]+)`")


def chapters() -> list[Path]:
    """The chapters' MyST twins, in book order (the numbered part of _toc.yml)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for p in toc["parts"] if p.get("numbered") for c in p["chapters"]]
    return [ROOT / f"{f}.md" for f in files]


def markdown_cells(text: str) -> list[tuple[int, list[str]]]:
    """The Markdown cells of a MyST notebook as (first line number, lines); code cells,
    raw cells and the front matter are left out, `+++` separates Markdown cells."""
    cells, current, start, fence = [], [], 1, None
    lines = text.splitlines()
    i = 0
    if lines and lines[0].strip() == "---":  # jupytext's front matter
        i = start = lines.index("---", 1) + 1
        start += 1
    for n in range(i, len(lines)):
        line = lines[n]
        if fence:
            if line.strip() == fence:
                fence, start = None, n + 2
            continue
        m = re.match(r"^(`{3,})\{(code-cell|raw-cell)\}", line)
        if m or line.startswith("+++"):
            if current:
                cells.append((start, current))
            current, start = [], n + 2
            fence = m.group(1) if m else None
            continue
        current.append(line)
    if current:
        cells.append((start, current))
    return cells


def labelled_equations(text: str) -> list[tuple[str, int, list[str]]]:
    """(label, line number, the rest of its Markdown cell after the equation) for every
    labelled display equation: `$$ ... $$ (label)` or a {math} directive with :label:."""
    found = []
    for start, cell in markdown_cells(text):
        for k, line in enumerate(cell):
            m = EQ_END.match(line)
            if m:
                found.append((m.group(1), start + k, cell[k + 1:]))
                continue
            m = MATH_LABEL.match(line)
            if m and any(c.lstrip().startswith(("```{math}", ":::{math}")) for c in cell[:k]):
                close = next((j for j in range(k + 1, len(cell))
                              if cell[j].strip() in ("```", ":::")), len(cell) - 1)
                found.append((m.group(1), start + k, cell[close + 1:]))
    return found


def resolve(kind: str, name: str):
    """The companion object a {py:kind}`name` role names; raises LookupError with the reason
    if it does not exist, is private, is not documented or is of another kind."""
    if not name.startswith("companion"):
        raise LookupError(f"{name}: not in companion (the API reference documents only it)")
    parts = name.split(".")
    if any(p.startswith("_") for p in parts):
        raise LookupError(f"{name}: private, so it has no entry in the API reference")
    for k in range(len(parts), 0, -1):
        try:
            obj = module = importlib.import_module(".".join(parts[:k]))
            break
        except ImportError:
            continue
    documented = set(api_reference.public_modules(ROOT)) | {"companion"}
    if module.__name__ not in documented:
        raise LookupError(f"{name}: module {module.__name__} has no API page")
    owner = None
    for attr in parts[k:]:
        if not hasattr(obj, attr):
            raise LookupError(f"{name}: {type(obj).__name__} {obj.__name__} has no {attr!r}")
        owner, obj = obj, inspect.getattr_static(obj, attr)
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    ok = {"mod": inspect.ismodule(obj),
          "class": inspect.isclass(obj),
          "func": inspect.isfunction(obj) and inspect.ismodule(owner),
          "meth": inspect.isfunction(obj) and inspect.isclass(owner)}[kind]
    if not ok:
        raise LookupError(f"{name}: not a {kind} (write the role that matches what it is)")
    if kind != "mod" and getattr(obj, "__module__", None) != module.__name__:
        raise LookupError(f"{name}: defined in {obj.__module__}, name it there (its page)")
    return obj


def citations(obj) -> set[str]:
    return set(CITE.findall(obj.__doc__ or ""))


def uncovered(text: str) -> tuple[list[str], list[str]]:
    """For one chapter's text: (labels with no function named beside them that cites them,
    roles that do not resolve)."""
    missing, broken = [], []
    for kind, name in ROLE.findall(text):
        try:
            resolve(kind, name)
        except LookupError as e:
            broken.append(str(e))
    for label, line, after in labelled_equations(text):
        named = []
        for kind, name in ROLE.findall("\n".join(after)):
            try:
                named.append(resolve(kind, name))
            except LookupError:
                pass
        if not any(label in citations(obj) for obj in named):
            missing.append(f"{label} (line {line})")
    return missing, broken


def all_labels() -> dict[str, Path]:
    return {label: md for md in chapters() for label, _, _ in labelled_equations(md.read_text())}


def documented_objects():
    """(qualified name, object) for every public function, class and method of companion."""
    for modname in api_reference.public_modules(ROOT):
        mod = importlib.import_module(modname)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != modname:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{modname}.{name}", obj
            if inspect.isclass(obj):
                for mname, member in vars(obj).items():
                    if isinstance(member, property):
                        member = member.fget
                    member = getattr(member, "__func__", member)
                    if not mname.startswith("_") and inspect.isfunction(member):
                        yield f"{modname}.{name}.{mname}", member


# --- the tests ----------------------------------------------------------------------------
def test_every_role_resolves():
    """Every {py:...} role in the book names an existing, documented companion object."""
    pages = chapters() + sorted((ROOT / "book").rglob("*.md"))
    bad = {str(p.relative_to(ROOT)): b for p in pages if (b := uncovered(p.read_text())[1])}
    assert not bad, f"{{py:...}} roles that do not resolve: {bad}"


def test_every_labelled_equation_names_its_function():
    """After each labelled equation its Markdown cell names a function (a {py:...} role)
    whose docstring cites the equation's label; EXEMPT lists the exceptions."""
    report = {}
    for md in chapters():
        missing = [m for m in uncovered(md.read_text())[0] if m.split()[0] not in EXEMPT]
        if missing:
            report[md.name] = missing
    assert not report, (
        "labelled equations with no function named beside them (add "
        "{py:func}`~companion.module.function` after the equation, and "
        "Book: :eq:`label`. to that function's docstring; or, for a derivation step, an "
        "entry in EXEMPT with its reason):\n"
        + "\n".join(f"  {ch}: {', '.join(m)}" for ch, m in report.items()))


def test_exempt_equations_are_still_exempt():
    labels = all_labels()
    gone = sorted(set(EXEMPT) - set(labels))
    assert not gone, f"EXEMPT names equations that no chapter has: {gone}"
    named = []
    for md in chapters():
        missing = {m.split()[0] for m in uncovered(md.read_text())[0]}
        named += [lab for lab, _, _ in labelled_equations(md.read_text())
                  if lab in EXEMPT and lab not in missing]
    assert not named, f"EXEMPT equations that name their function after all: {named}"


def test_docstrings_cite_existing_labels_named_beside_them():
    """Every `:eq:` in a docstring is a chapter's label, and that chapter names the citing
    function after the equation (both directions of the link)."""
    labels = all_labels()
    unknown, unnamed = [], []
    for qual, obj in documented_objects():
        for label in citations(obj):
            md = labels.get(label)
            if md is None:
                unknown.append(f"{qual}: {label}")
                continue
            after = next(a for lab, _, a in labelled_equations(md.read_text()) if lab == label)
            names = {name for _, name in ROLE.findall("\n".join(after))}
            if qual not in names:
                unnamed.append(f"{qual} cites {label} ({md.name})")
    assert not unknown, f"docstrings cite labels that no chapter has: {unknown}"
    assert not unnamed, ("functions that cite an equation whose chapter does not name them "
                         "after it:\n  " + "\n  ".join(unnamed))


def test_the_checks_catch_planted_faults():
    """A chapter without the role, with a role to a missing function, with a role whose
    function does not cite the equation, and the Markdown cell boundary."""
    eq = "$$\nx = 1\n$$ (ch8-forward)\n"
    good = eq + "\n{py:meth}`~companion.diffusion.Diffusion.q_sample` samples it.\n"
    assert uncovered(good) == ([], [])
    assert uncovered(eq + "\nNo function named.\n")[0] == ["ch8-forward (line 3)"]
    wrong = eq + "\n{py:func}`~companion.kl.kl_normal` does not cite it.\n"
    assert uncovered(wrong)[0] == ["ch8-forward (line 3)"]
    missing, broken = uncovered(eq + "\n{py:func}`companion.diffusion.no_such_function`\n")
    assert missing == ["ch8-forward (line 3)"] and "no_such_function" in broken[0]
    assert "not a func" in uncovered("{py:func}`companion.diffusion.Diffusion`")[1][0]
    assert "private" in uncovered("{py:func}`companion.diffusion._check_T`")[1][0]
    # a role in the next Markdown cell (after a code cell) is not "beside" the equation
    split = eq + "\n```{code-cell} ipython3\nx = 1\n```\n\n" + good.split(eq)[1]
    assert uncovered(split)[0] == ["ch8-forward (line 3)"]
    math = "```{math}\n:label: ch8-forward\nx = 1\n```\n" + good.split(eq)[1]
    assert labelled_equations(math)[0][0] == "ch8-forward" and uncovered(math)[0] == []


# --- the pages ------------------------------------------------------------------------------
# A package's own page (its docstring, a table of its modules), listed in _toc.yml with its
# modules' pages as its sections; the API index's table names the package in their place.
PACKAGE_PAGES = {"companion.recipes": "book/api/recipes"}


def toc_api_pages(index: str = "book/api/index") -> list[str]:
    """The pages under `index` in _toc.yml, in order, a package's page before its modules'."""
    def flat(sections):
        return [f for s in sections for f in [s["file"]] + flat(s.get("sections", []))]

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        for c in part["chapters"]:
            if c["file"] == index:
                return flat(c.get("sections", []))
    raise AssertionError(f"_toc.yml has no {index}")


def autosummary(page: str) -> list[str]:
    """The modules a page's autosummary table lists."""
    table = (ROOT / f"{page}.md").read_text().split(".. autosummary::")[1]
    return re.findall(r"^\s+(companion\.[\w.]+)$", table, re.M)


def test_every_public_module_has_a_page():
    """book/api/<module>.md for every public module, listed in _toc.yml and in a module
    table: the mathematics under the API index ("Models and mathematics"), then the
    machinery (companion.run) under book/api/run/index ("Running the book"), each page
    documenting its own module. A package with a page of its own (PACKAGE_PAGES) holds its
    modules' pages as its sections and their table; the API index's table names it."""
    modules = api_reference.public_modules(ROOT)
    pages = [f"book/api/{api_reference.page_name(m)}" for m in modules]
    own = set(PACKAGE_PAGES.values())
    toc = [f for f in toc_api_pages() if f not in own]
    assert toc + toc_api_pages("book/api/run/index") == pages, (
        "_toc.yml's API sections differ from the modules")
    first = [m for m in modules if not m.startswith("companion.run")]
    assert first and modules[:len(first)] == first, "the mathematics must come first"
    assert toc == [f"book/api/{api_reference.page_name(m)}" for m in first]
    on_disk = sorted(str(p.relative_to(ROOT).with_suffix(""))
                     for p in (ROOT / "book" / "api").rglob("*.md") if p.stem != "index")
    assert on_disk == sorted(pages + list(own))
    for m, page in zip(modules, pages, strict=True):
        assert f".. automodule:: {m}\n" in (ROOT / f"{page}.md").read_text(), page
    listed = []
    for m in autosummary("book/api/index") + autosummary("book/api/run/index"):
        listed += autosummary(PACKAGE_PAGES[m]) if m in PACKAGE_PAGES else [m]
    assert listed == modules
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    sections = [s for p in toc["parts"] for c in p["chapters"] for s in c.get("sections", [])]
    for package, page in PACKAGE_PAGES.items():
        text = (ROOT / f"{page}.md").read_text()
        assert f".. automodule:: {package}\n   :no-members:\n" in text, (
            f"{page}: the package's docstring, not its re-exports again")
        inside = [f"book/api/{api_reference.page_name(m)}" for m in modules
                  if m.startswith(package + ".")]
        entry = next(s for s in sections if s["file"] == page)
        assert [s["file"] for s in entry.get("sections", [])] == inside, page


def test_autodoc_reads_this_checkout():
    """The build imports companion from the book's root, whatever is installed."""
    import companion

    assert Path(companion.__file__).resolve().parent == ROOT / "companion", (
        f"companion comes from {companion.__file__}: run with PYTHONPATH={ROOT}")

    class App:
        srcdir = str(ROOT)

    api_reference._import_from_the_book(App)  # no error: it is this checkout's copy
    assert sys.path[0] == str(ROOT)


# --- docstrings as reStructuredText ------------------------------------------------------------
def test_clean_docstring():
    clean = api_reference.clean_docstring
    assert clean(["KL(p || q) and |x|^2, z_>i and x_"]) == \
        [r"KL(p \|\| q) and \|x\|^2, z\_>i and x\_"]
    assert clean(["*args, **kwargs: kept *as emphasis* and **bold**"]) == \
        [r"\*args, \*\*kwargs: kept *as emphasis* and **bold**"]
    assert clean(["Book: :eq:`ch8-forward`, `x_` and `prefix`es."]) == \
        [r"Book: :eq:`ch8-forward`, `x_` and `prefix`\ es."]
    formula = ["Forward:", "    q(x_t | x_0) = N(...)", "    x_t = ...", "Then text."]
    assert clean(formula) == ["Forward:", "", ".. code-block:: text", "",
                              "    q(x_t | x_0) = N(...)", "    x_t = ...", "", "Then text."]
    args = ["Args:", "    x: (B, D) |x| the input.", "", "Returns:", "    (B,)."]
    assert clean(args) == ["Args:", r"    x: (B, D) \|x\| the input.", "", "Returns:",
                           "    (B,)."]


@pytest.mark.slow
def test_every_docstring_is_valid_restructured_text():
    """What autodoc renders: each docstring made safe, read by napoleon, parsed by docutils
    with the Sphinx roles the docstrings use; no warning or error (the -W build fails on
    them, this finds them in seconds and names the function)."""
    import docutils.core
    from docutils import nodes
    from docutils.parsers.rst import roles
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    def literal_role(name, rawtext, text, lineno, inliner, options=None, content=None):
        return [nodes.literal(rawtext, text)], []

    for role in ("eq", "math", "cite", "ref", "doc", "py:func", "py:meth", "py:class",
                 "py:mod", "func", "meth", "class", "mod", "obj", "attr", "data", "exc"):
        roles.register_local_role(role, literal_role)
    config = Config(napoleon_use_rtype=False)
    bad = {}
    for qual, obj in [(m, importlib.import_module(m))
                      for m in api_reference.public_modules(ROOT)] + list(documented_objects()):
        doc = obj.__doc__ and inspect.cleandoc(obj.__doc__)
        if not doc:
            continue
        lines = GoogleDocstring(api_reference.clean_docstring(doc.splitlines()), config).lines()
        err = io.StringIO()
        docutils.core.publish_doctree("\n".join(lines), settings_overrides={
            "warning_stream": err, "report_level": 2, "halt_level": 5})
        if err.getvalue().strip():
            bad[qual] = err.getvalue().strip()
    assert not bad, "docstrings that render badly:\n" + "\n".join(
        f"{q}:\n  {m}" for q, m in bad.items())


# The main entry points: the samplers, the bounds and likelihoods, the losses, the recipes.
# companion.train.fit is described where it is defined (issue 42, item 4).
ENTRY_POINTS = [
    *(f"companion.diffusion.Diffusion.{m}" for m in (
        "sample", "sample_ddim", "bound_terms", "bound_monte_carlo", "simple_loss")),
    "companion.diffusion.annealed_langevin",
    *(f"companion.sde.{f}" for f in ("euler", "heun", "euler_maruyama", "ddim",
                                     "ode_log_likelihood")),
    "companion.flow.flow_matching_loss",
    *(f"companion.edm.{f}" for f in ("euler", "heun", "dpm_solver_pp_2m", "edm_loss")),
    *(f"companion.metrics.{f}" for f in ("iw_estimate", "iw_log_likelihood",
                                         "vae_iw_log_likelihood")),
    "companion.latent_diffusion.latent_bound", "companion.latent_diffusion.sample",
    "companion.inpainting.inpaint",
    *(f"companion.recipes.{f}" for f in (
        "vaes.chapter1_autoencoder", "vaes.single_level_vae", "vaes.hierarchical_vae",
        "vaes.eight_bit_vae", "pixel.ddpm", "pixel.classifier", "latents.latent_vae",
        "latents.latent_denoiser", "flows.flow_matching", "preconditioned.edm")),
]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_describe_every_argument(name):
    """The main entry points have an Args section that names each of their parameters."""
    obj = resolve("meth" if name.split(".")[2][0].isupper() else "func", name)
    doc = inspect.cleandoc(obj.__doc__)
    assert "\nArgs:\n" in doc, f"{name}: no Args section"
    args = doc.split("\nArgs:\n")[1].split("\n\n")[0]
    described = set(re.findall(r"^    (\w+)(?: \([^)]*\))?:", args, re.M))
    params = [p for p in inspect.signature(obj).parameters if p not in ("self",)]
    assert set(params) <= described, f"{name}: Args misses {sorted(set(params) - described)}"


def test_dataclass_defaults_keep_the_signature_parseable():
    """autodoc writes a default_factory as `= <factory>`, which no parser reads; the
    signature shows the factory's call instead (and its types become links)."""
    from companion.em import EMHistory

    sig = ("(loglik: list[float] = <factory>, elbo_after_m: list[float] = <factory>, "
           "models: list[GaussianMixture] = <factory>)")
    out, _ = api_reference._dataclass_defaults(None, "class", "EMHistory", EMHistory, {},
                                               sig, None)
    assert out == ("(loglik: list[float] = list(), elbo_after_m: list[float] = list(), "
                   "models: list[GaussianMixture] = list())")
    assert api_reference._dataclass_defaults(None, "function", "f", EMHistory, {}, sig,
                                             None) is None
