"""The book's reading budgets, measured on the stored notebooks (DESIGN.md, "The voice").

    python tools/prose_budget.py                      # every chapter's row and the book's
    python tools/prose_budget.py notebooks/18_*.ipynb # some chapters
    python tools/prose_budget.py --check              # exit 1 where a voiced chapter is over

For each chapter, from its `.ipynb` (the Markdown cells, with every `{glue:text}` replaced by
the value the stored run glued, and the code cells' outputs):

- main prose: the words outside the "Exercises" section and outside dropdowns (an
  admonition with `:class: dropdown`); code, display maths and MyST syntax are not words,
  an inline formula or a role (a citation, an equation number) is one;
- exercises and dropdowns: their words, counted apart;
- long glue: glued texts of more than LONG_GLUE characters inside a sentence of any
  Markdown cell (a verdict inline is a short phrase linked to its evidence row);
- figures: the images the code cells output before the Exercises (one per output),
  explorers (code cells with `explorer` metadata), and Markdown images or figures; words
  per figure is main prose over that count;
- the stored run: its profile and seconds (`book.execution` metadata), and whether its
  earlier chapters' models came from the cache ("reused") or were trained ("fresh").

- the budget box: the admonition titled BOX_TITLE near the start (DESIGN.md, "The voice"),
  one a chapter, with every field of BOX_FIELDS.

The budgets hold for the chapters in VOICED, the ones rewritten in the book's voice
(`make check-fast` runs `--check` through tests/test_prose_budget.py): main prose at most
MAX_WORDS, at least one figure or explorer per WORDS_PER_FIGURE words, no long glue, one
budget box with all its fields, and a
stored `cpu` run within CPU_CACHED_S (models cached) or CPU_FRESH_S (trained). Once every
chapter is voiced, the book's median main prose is held to MAX_MEDIAN too.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_WORDS = 4_000
MAX_MEDIAN = 3_000
WORDS_PER_FIGURE = 800
LONG_GLUE = 60
CPU_CACHED_S = 15 * 60
CPU_FRESH_S = 30 * 60
# The budget box: one admonition of this title near a chapter's start, with these fields.
BOX_TITLE = "What these runs are"
BOX_FIELDS = ("**Runs.**", "**What they can say.**", "**What they cannot say.**",
              "**At scale.**", "**In Colab**")
# Chapters rewritten in the voice (issues 75 and 77): their budgets are checked.
VOICED: frozenset[str] = frozenset({
    "01_autoencoders", "02_kl_divergence", "03_elbo", "04_reparameterization",
    "05_gaussian_toys", "06_vae_mnist", "07_hierarchical_vae", "08_diffusion_elbo",
    "09_ddpm_mnist", "10_comparison", "11_latent_diffusion",
    "12_inpainting", "14_discrete_diffusion", "15_fewer_steps",
    "13_continuous_time", "16_scores_guidance", "17_design_space",
    "18_variational_diffusion", "19_discrete_latents", "20_judging_samples",
    "21_transformers_text", "22_diffusion_language"})

GLUE_ROLE = re.compile(r"\{glue(?::(?:text|md))?\}`([^`:]+)(?::([^`]*))?`")
ROLE = re.compile(r"\{[a-z:]+\}`[^`]*`")
FENCE = re.compile(r"^(`{3,}|:{3,})(.*)$")
DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$[^$\n]+?\$")
WORD = re.compile(r"[^\W_](?:[\w'’.,/-]*[^\W_])?")
IMAGE_MIME = ("image/png", "image/jpeg", "image/svg+xml")
PROSE_DIRECTIVES = ("admonition", "dropdown", "toggle", "note", "warning", "tip", "important",
                    "caution", "seealso", "hint", "figure", "epigraph", "attention",
                    "margin", "sidebar", "topic", "card")


@dataclass
class Chapter:
    """One chapter's measured reading load."""

    name: str
    main: int = 0
    exercises: int = 0
    dropdowns: int = 0
    figures: int = 0
    long_glue: list[str] = field(default_factory=list)
    profile: str = "?"
    seconds: float | None = None
    checkpoints: str = ""
    boxes: list[str] = field(default_factory=list)  # each budget box's text

    @property
    def words_per_figure(self) -> float:
        return self.main / self.figures if self.figures else float("inf")

    def over(self) -> list[str]:
        """The budgets this chapter misses, in words (empty when it keeps them all)."""
        out = []
        if self.main > MAX_WORDS:
            out.append(f"main prose {self.main:,} words > {MAX_WORDS:,}")
        if self.words_per_figure > WORDS_PER_FIGURE:
            out.append(f"{self.words_per_figure:,.0f} words per figure > "
                       f"{WORDS_PER_FIGURE} ({self.figures} figures)")
        if len(self.boxes) != 1:
            out.append(f"{len(self.boxes)} budget boxes ('{BOX_TITLE}'), not one")
        for box in self.boxes:
            missing = [f for f in BOX_FIELDS if f not in box]
            if missing:
                out.append(f"the budget box lacks {', '.join(missing)}")
        for text in self.long_glue:
            out.append(f"glued text of {len(text)} characters inside a sentence: "
                       f"{text[:70]!r}...")
        if self.profile == "cpu" and self.seconds is not None:
            limit = CPU_CACHED_S if self.checkpoints == "reused" else CPU_FRESH_S
            if self.seconds > limit:
                out.append(f"stored cpu run {self.seconds / 60:.0f} min > {limit // 60} min "
                           f"(models {self.checkpoints or 'trained'})")
        return out


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def glued_values(nb: dict) -> dict[str, str]:
    """name -> the text/plain value each glue call of the stored run recorded."""
    values = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            text = out.get("data", {}).get("application/papermill.record/text/plain")
            if name is not None and text is not None:
                values[name] = "".join(text) if isinstance(text, list) else text
    return values


def _formatted(value: str, fmt: str | None) -> str:
    """A glued value as `{glue:text}` shows it: a number in `fmt`, a string unquoted."""
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if fmt:
        try:  # an integer keeps its type: `,d` formats 2820 as 2,820, as myst-nb does
            number = int(text) if re.fullmatch(r"-?\d+", text) else float(text)
            return format(number, fmt)
        except ValueError:
            return text
    return text


def substitute_glue(text: str, values: dict[str, str], long: list[str] | None = None) -> str:
    """text with each glue role replaced by its stored value; values over LONG_GLUE
    characters are appended to `long` (a glued text inside a sentence)."""
    def repl(m):
        shown = _formatted(values.get(m[1], m[1]), m[2])
        if long is not None and len(shown) > LONG_GLUE:
            long.append(shown)
        return shown

    return GLUE_ROLE.sub(repl, text)


def _boxes(markdown: str) -> list[str]:
    """The bodies of the budget boxes (admonitions titled BOX_TITLE) in a Markdown cell."""
    pattern = (r"^(:{3,}|`{3,})\{admonition\}\s+" + re.escape(BOX_TITLE)
               + r"\s*\n(.*?)^\1\s*$")
    return [m[2] for m in re.finditer(pattern, markdown, re.M | re.S)]


def _directive_name(info: str) -> str:
    m = re.match(r"\s*\{([^}]+)\}", info)
    return m[1] if m else info.strip()


def split_prose(markdown: str) -> dict[str, list[str]]:
    """The lines of prose of a Markdown cell by where they sit: 'main', 'exercises' (set by
    the caller through a heading) or 'dropdowns'; code and maths blocks dropped.

    Returns {"main": [...], "dropdowns": [...]}: each a list of text lines.
    """
    parts = {"main": [], "dropdowns": []}
    stack: list[tuple[str, str, bool]] = []  # (fence, directive, is_dropdown)
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line.strip())
        if m:
            fence, info = m[1], m[2]
            if stack and fence == stack[-1][0] and not info.strip():
                stack.pop()
                i += 1
                continue
            if info.strip():
                name = _directive_name(info)
                j, dropdown = i + 1, False
                while j < len(lines) and (lines[j].startswith(":") and not
                                          FENCE.match(lines[j].strip())):
                    dropdown |= bool(re.match(r":class:.*\bdropdown\b", lines[j]))
                    j += 1
                stack.append((fence, name, dropdown or name in ("dropdown", "toggle")))
                title = re.sub(r"^\{[^}]+\}", "", info).strip()
                if title and not _is_code(name):
                    where = "dropdowns" if stack[-1][2] or _in_dropdown(stack[:-1]) else "main"
                    parts[where].append(title)
                i = j
                continue
        if any(_is_code(d) for _, d, _ in stack):
            i += 1
            continue
        if re.match(r"^\s*\([\w-]+\)=\s*$", line) or line.strip().startswith("<!--"):
            i += 1
            continue
        parts["dropdowns" if _in_dropdown(stack) else "main"].append(line)
        i += 1
    return parts


def _is_code(directive: str) -> bool:
    """Whether a fenced block holds no prose (code, maths, tables of data)."""
    return not directive.startswith(PROSE_DIRECTIVES)


def _in_dropdown(stack) -> bool:
    return any(d for _, _, d in stack)


def count_words(text: str) -> int:
    """Words a reader reads: inline maths and roles count one each, display maths none."""
    text = DISPLAY_MATH.sub(" ", text)
    text = INLINE_MATH.sub(" x ", text)
    text = ROLE.sub(" x ", text)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)        # images
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)      # links: their text
    text = re.sub(r"<[^>]+>", " ", text)                      # HTML tags
    text = re.sub(r"^[\s|:-]*-{3,}[\s|:-]*$", " ", text, flags=re.M)  # tables' rules
    return len(WORD.findall(text))


def measure(path: Path) -> Chapter:
    """The reading load of one stored notebook (.ipynb)."""
    nb = json.loads(Path(path).read_text())
    values = glued_values(nb)
    ch = Chapter(Path(path).stem)
    section = "main"
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            long: list[str] = []
            text = substitute_glue(_source(cell), values, long)
            ch.boxes += _boxes(text)
            parts = split_prose(text)
            main_lines = []
            for line in parts["main"]:
                h = re.match(r"^(#{1,6})\s+(.*)$", line)
                if h and len(h[1]) <= 2:
                    section = "exercises" if re.match(r"exercises?\b", h[2].strip(),
                                                      re.I) else "main"
                main_lines.append((section, line))
            ch.main += count_words("\n".join(t for s, t in main_lines if s == "main"))
            ch.exercises += count_words("\n".join(t for s, t in main_lines
                                                  if s == "exercises"))
            if section == "exercises":
                ch.exercises += count_words("\n".join(parts["dropdowns"]))
            else:
                ch.dropdowns += count_words("\n".join(parts["dropdowns"]))
            ch.long_glue += long
            if section == "main":
                ch.figures += len(re.findall(r"!\[|^(?:`{3,}|:{3,})\{(?:figure|image|glue:"
                                             r"figure)\}", text, re.M))
        elif cell["cell_type"] == "code" and section == "main":
            if cell.get("metadata", {}).get("explorer"):
                ch.figures += 1
            ch.figures += sum(1 for o in cell.get("outputs", [])
                              if any(k in o.get("data", {}) for k in IMAGE_MIME))
    ex = nb.get("metadata", {}).get("book", {}).get("execution", {})
    ch.profile = ex.get("profile_env", "?")
    ch.seconds = ex.get("seconds")
    ch.checkpoints = ex.get("checkpoints", "")
    return ch


def chapters(paths=None) -> list[Chapter]:
    paths = paths or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [measure(Path(p)) for p in paths]


def report(rows: list[Chapter]) -> str:
    """The book's table: one row a chapter, then the median and the budgets."""
    head = ("chapter", "main", "exercises", "dropdowns", "figures", "words/fig",
            "long glue", "stored run", "voiced")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for c in rows:
        run = (f"{c.profile} {c.seconds / 60:.0f} min ({c.checkpoints or 'trained'})"
               if c.seconds is not None else c.profile)
        wpf = f"{c.words_per_figure:,.0f}" if c.figures else "no figure"
        lines.append(" | ".join([c.name, f"{c.main:,}", f"{c.exercises:,}",
                                 f"{c.dropdowns:,}", str(c.figures), wpf,
                                 str(len(c.long_glue)), run,
                                 "yes" if c.name in VOICED else ""]))
    mains = [c.main for c in rows]
    lines.append("")
    lines.append(f"median main prose {statistics.median(mains):,.0f} words (budget "
                 f"{MAX_MEDIAN:,}); over {MAX_WORDS:,}: "
                 f"{sum(m > MAX_WORDS for m in mains)} of {len(rows)} chapters; long glue "
                 f"inside sentences: {sum(len(c.long_glue) for c in rows)}; budgets: "
                 f"{MAX_WORDS:,} words, a figure per {WORDS_PER_FIGURE}, glue at most "
                 f"{LONG_GLUE} characters, a cpu run within {CPU_CACHED_S // 60} min cached "
                 f"({CPU_FRESH_S // 60} trained)")
    return "\n".join(lines)


def problems(rows: list[Chapter], voiced=VOICED) -> list[str]:
    """Every missed budget of a voiced chapter, and the book's median once all are voiced."""
    out = [f"{c.name}: {p}" for c in rows if c.name in voiced for p in c.over()]
    if rows and all(c.name in voiced for c in rows):
        median = statistics.median(c.main for c in rows)
        if median > MAX_MEDIAN:
            out.append(f"the book's median main prose is {median:,.0f} words > "
                       f"{MAX_MEDIAN:,}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a voiced chapter misses a budget")
    args = ap.parse_args(argv)
    rows = chapters(args.notebooks)
    print(report(rows))
    found = problems(rows)
    for p in found:
        print("over budget:", p)
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
