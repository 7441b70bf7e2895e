"""The built book as a reader sees it: every page opened offline in headless Chromium.

The book is built once (-W -n, into a temporary folder) and served on 127.0.0.1; Chromium
resolves no other host name, so anything that needs a CDN shows up. Each page must have:
every equation typeset (MathJax comes from the local copy that `make mathjax` installs)
and no LaTeX left as raw text; every image and same-site resource loaded; every internal
link and anchor pointing at something that exists; no Python traceback in an output; and
no empty widget area without a static figure beside it. Every chapter is also rendered in
light and dark mode, and a sample of its equations is cropped from the screenshots and
checked for contrast against the page background (pixels, not the DOM). The crops, each
page's top on a phone and the explorers' frames are kept in $BOOK_SCREENSHOTS (default:
_build/screenshots) for a person to look at; whole pages in both modes are kept only when
$BOOK_SCREENSHOTS is set (about 5 s a chapter, which CI, where nobody looks, skips).

What the reader sees on the page, at 1280 px (the theme's text column is 688 px) and on a
390-px phone: no element of the article wider than its column (code, printed outputs,
tables, MathJax displays: an element that scrolls, scrollWidth against clientWidth, or
one that sticks out of the column), no printed line over 80 characters, no Markdown table
left as raw pipe text, every display equation of a numbered chapter numbered, no progress
bar (stored widget or text) and no error text in an output, every figure with alt text
that says something (not a hashed file name); on a phone the page never scrolls sideways,
printed outputs wrap, and the status table and the API reference's pages (book/api) fit the
column. test_planted_faults_are_caught shows that each of these checks fails on a page with
the fault planted in it.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import math
import os
import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import yaml
from PIL import Image

from companion.run import colab
from companion.run.runtime import one_thread

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("BOOK_SCREENSHOTS", ROOT / "_build" / "screenshots"))
WHOLE_PAGES = bool(os.environ.get("BOOK_SCREENSHOTS"))  # whole-page tiles, for a person
MIN_CONTRAST = 3.0      # WCAG's minimum for large text and graphics
EQUATIONS_PER_PAGE = 8  # display and inline equations cropped per chapter and mode
DESKTOP, PHONE = 1280, 390  # window widths (CSS px): a laptop, and a phone held upright
SLACK_PX = 2            # sub-pixel rounding: wider than this is cut off or scrolls
MAX_PRINTED = 80        # characters in a printed line (the book's standard)


def toc_pages() -> list[str]:
    """The html paths of the pages in _toc.yml, root first (collected before any build)."""
    def flat(entries):  # a section's own sections too (the recipes' family modules)
        return [f for e in entries for f in [e["file"]] + flat(e.get("sections", []))]

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [f for part in toc.get("parts", [])
                             for f in flat(part.get("chapters", []))]
    return [f"{Path(f).with_suffix('').as_posix()}.html" for f in files]


def numbered_pages() -> list[str]:
    """The html paths of the pages in _toc.yml's numbered parts (equations read (6.1))."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [f"{Path(c['file']).with_suffix('').as_posix()}.html"
            for part in toc.get("parts", []) if part.get("numbered")
            for c in part.get("chapters", [])]


PAGES = toc_pages() + ["genindex.html", "search.html"]
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]
NUMBERED = numbered_pages()
STATUS = "book/status.html"
API = [p for p in PAGES if p.startswith("book/api/")]  # the API reference, one page a module
PHONE_PAGES = CHAPTERS + [STATUS] + API

# --- the site ---------------------------------------------------------------------------
# What the reader still meets on the page, found by the checks below and not yet fixed
# (issue 18). Each listed case is an xfail(strict=True): it must keep failing until it is
# fixed, and then the entry has to go, so this list cannot hide a fixed or a new problem.
OPEN_ON_THE_PAGE: dict[str, str] = {
    # "test_name[notebooks/page.html]": "why it is still open"; empty: nothing is
}


@pytest.fixture(autouse=True)
def _open_on_the_page(request):
    why = OPEN_ON_THE_PAGE.get(request.node.name)
    if why:
        request.applymarker(pytest.mark.xfail(reason=f"open: {why}",
                                              strict=True))


@pytest.fixture(scope="module")
def site(built_book) -> Path:
    """The book built once per run (tests/conftest.py), as `make book` builds it."""
    return built_book


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 while the generator is open; yields the base URL."""
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(site):
    yield from serve(site)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium (.ci/run does it)")
    from tests.chromium import Chromium

    b = Chromium(str(CHROMIUM))
    yield b
    b.close()


# --- visiting a page ----------------------------------------------------------------------
INSPECT = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  // MathJax's web fonts load only once laid-out text needs them, and text waiting for its
  // font is drawn invisible: wait for layout, then for every font load that it started.
  const frame = () => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  for (let i = 0; i < 100; i++) {
    await frame();
    await document.fonts.ready;
    if (![...document.fonts].some(f => f.status === 'loading')) break;
  }
  const skip = 'pre, code, script, style, textarea, noscript, mjx-container, .highlight';
  const rawTex = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\end\{|\$[^$\n]*[\\^_{}][^$\n]*\$/;
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walker.nextNode());) {
    const p = n.parentElement;
    if (p && !p.closest(skip) && rawTex.test(n.nodeValue)) {
      raw.push(n.nodeValue.trim().slice(0, 160));
    }
  }
  const untypeset = [...document.querySelectorAll('.math')]
    .filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 160));
  const mathErrors = [...document.querySelectorAll('mjx-merror')]
    .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 160));
  const images = [...document.images].map(i => ({src: i.currentSrc || i.src,
    ok: i.complete && i.naturalWidth > 0, alt: i.alt}));
  const links = [...new Set([...document.querySelectorAll('a[href]')].map(a => a.href))];
  const tracebacks = [...document.querySelectorAll('.cell_output')]
    .filter(o => !o.closest('.tag_raises-exception'))
    .map(o => o.querySelector('.traceback') || o)
    .filter(o => /Traceback \(most recent call last\)/.test(o.textContent))
    .map(o => o.textContent.slice(o.textContent.indexOf('Traceback') - 60).trim().slice(0, 400));
  const cells = [...document.querySelectorAll('div.cell')];
  const hasFigure = c => !!c &&
    [...c.querySelectorAll('.cell_output img')].some(i => i.naturalWidth > 0);
  const widgets = [];
  cells.forEach((cell, i) => {
    if (!cell.querySelector('script[type="application/vnd.jupyter.widget-view+json"]')) return;
    const out = cell.querySelector('.cell_output') || cell;
    const drawn = out.innerText.trim().length > 0 ||
      !!out.querySelector('img, canvas, svg, .widget-area, .jupyter-widgets');
    widgets.push({cell: i, drawn,
      figureBeside: hasFigure(cell) || hasFigure(cells[i - 1]) || hasFigure(cells[i + 1]),
      code: (cell.querySelector('.cell_input') || cell).innerText.slice(0, 120)});
  });
  // Code that does not fit the text column is cut and scrolls: the widest line of every
  // visible code cell, against the width its box offers.
  const overflow = [...document.querySelectorAll('.cell_input pre')]
    .filter(e => e.checkVisibility() && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.textContent.split('\n').reduce((a, b) => (b.length > a.length ? b : a), ''))
    .map(line => `${line.length} characters: ${line.trim().slice(0, 100)}`);
  window.scrollTo(0, 0);
  await frame();
  let tag = 0;
  const boxes = sel => [...document.querySelectorAll(sel)]
    .filter(e => e.checkVisibility() && !e.closest('details:not([open]), .toggle-hidden'))
    .map(e => { const r = e.getBoundingClientRect(); e.dataset.eqCheck = ++tag;
      return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height,
              id: tag, tex: (e.closest('.math') || e).textContent.trim().slice(0, 80)}; })
    .filter(r => r.width > 4 && r.height > 4);
  const spread = (arr, k) => arr.length <= k ? arr :
    Array.from({length: k}, (_, j) => arr[Math.floor(j * arr.length / k)]);
  const equations = [...spread(boxes('mjx-container[display="true"]'), PER_KIND),
                     ...spread(boxes('mjx-container:not([display="true"])'), PER_KIND)];
  return {raw, untypeset, mathErrors, images, links, tracebacks, widgets, equations, overflow,
          theme: document.documentElement.dataset.theme || '',
          background: getComputedStyle(document.body).backgroundColor};
})()
""".replace("PER_KIND", str(EQUATIONS_PER_PAGE // 2))


# Scroll the equation to the middle of the window and wait for two painted frames; its box
# in the window's coordinates.
SHOW = """(async () => { const el = document.querySelector('[data-eq-check="ID"]');
  el.scrollIntoView({block: 'center', behavior: 'instant'});
  for (let i = 0; i < 2; i++) await new Promise(r => requestAnimationFrame(() => r()));
  const r = el.getBoundingClientRect();
  return {x: r.left, y: r.top, width: r.width, height: r.height}; })()"""


class PageReport(dict):
    """What INSPECT found on one page, plus the network failures seen while loading it."""


_VISITS: dict[tuple[str, str, str], PageReport] = {}


def visit(browser, server: str, page: str, mode: str = "light") -> PageReport:
    """Load `page` in `mode` (light or dark) once per session and inspect it, at DESKTOP
    width; report["layout"] is what LAYOUT finds."""
    key = (server, page, mode)
    if key in _VISITS:
        return _VISITS[key]
    set_width(browser, DESKTOP)
    # The theme reads its mode from localStorage before drawing (pydata-sphinx-theme). Light
    # is a first visit: nothing stored, so the theme follows the system, which is light here
    # (test_equations_visible checks the mode shown); dark is the reader's choice, stored.
    stored = ("localStorage.removeItem('mode'); localStorage.removeItem('theme');"
              if mode == "light" else
              f"localStorage.setItem('mode', '{mode}'); localStorage.setItem('theme', '{mode}');")
    script = browser.call("Page.addScriptToEvaluateOnNewDocument", session=True,
                          source=stored)["identifier"]
    try:
        events = browser.goto(server + page)
        report = PageReport(browser.evaluate(INSPECT, timeout=60))
        report["layout"] = browser.evaluate(LAYOUT, timeout=60)
        events += browser.drain_events()  # what the page's scripts did after loading
    finally:
        browser.call("Page.removeScriptToEvaluateOnNewDocument", session=True,
                     identifier=script)
    urls = {e["params"]["requestId"]: e["params"]["request"]["url"]
            for e in events if e.get("method") == "Network.requestWillBeSent"}
    status = {e["params"]["requestId"]: e["params"]["response"]["status"]
              for e in events if e.get("method") == "Network.responseReceived"}
    failed = [(urls.get(e["params"]["requestId"], "?"), e["params"].get("errorText", ""))
              for e in events if e.get("method") == "Network.loadingFailed"]
    failed += [(urls.get(rid, "?"), f"HTTP {code}") for rid, code in status.items()
               if code >= 400]
    # Chromium asks every site for /favicon.ico once the page has loaded; the book has none
    # (its absence is no console error and no missing part of the page)
    report["local_failures"] = [(u, why) for u, why in failed if u.startswith(server)
                                and urlsplit(u).path != "/favicon.ico"]
    report["console_errors"] = console_errors(events)
    report["external_requests"] = sorted({u for u in urls.values()
                                          if urlsplit(u).scheme not in ("data", "blob")
                                          and not u.startswith(server)})
    report["external_blocked"] = sorted({urlsplit(u).netloc for u, _ in failed
                                         if not u.startswith(server)})
    if WHOLE_PAGES:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = page.replace("/", "__").removesuffix(".html")
        for i, (_, png) in enumerate(browser.full_page()):
            (SCREENSHOTS / f"{name}-{mode}{f'-{i + 1}' if i else ''}.png").write_bytes(png)
    if page in CHAPTERS:
        report["crops"] = [(box, crop_equation(browser, box["id"], mode))
                           for box in report["equations"]]
    _VISITS[key] = report
    return report


def console_errors(events: list[dict]) -> list[str]:
    """The page's uncaught exceptions and console.error / console.assert messages, among
    the protocol events of a visit."""
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            what = (d.get("exception") or {}).get("description") or d.get("text", "")
            out.append(f"exception: {what.splitlines()[0][:200]} "
                       f"({d.get('url', '?')}:{d.get('lineNumber', '?')})")
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in (
                "error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", "")))
                            for a in p.get("args", []))
            out.append(f"console.{p['type']}: {args[:200]}")
    return out


def crop_equation(browser, eq_id: int, mode: str, pad: int = 4, tries: int = 10):
    """The equation INSPECT tagged `eq_id`, as a reader sees it: scrolled to the middle of
    the window and cut, with `pad` pixels of margin, from a screenshot of the window (PIL
    image). Not from a capture of the whole page: Chromium lays the page out again for a
    window as tall as such a capture, and its pixels need not sit where the page was
    measured. Now and then a glyph is drawn a moment late, so a crop with a problem is
    taken again a few times; one that is truly unreadable stays so."""
    for attempt in range(tries):
        r = browser.evaluate(SHOW.replace("ID", str(eq_id)))
        window = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
        image = window.crop((max(int(r["x"]) - pad, 0), max(int(r["y"]) - pad, 0),
                             int(r["x"] + r["width"]) + pad, int(r["y"] + r["height"]) + pad))
        if not problem(image, mode):
            break
        time.sleep(0.2 * (attempt + 1))
    return image


# Everything here is measured in the article (the text column), after MathJax and its fonts.
LAYOUT = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const frame = () => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  for (let i = 0; i < 100; i++) {
    await frame();
    await document.fonts.ready;
    if (![...document.fonts].some(f => f.status === 'loading')) break;
  }
  const article = document.querySelector('article.bd-article') || document.body;
  const box = article.getBoundingClientRect(), cs = getComputedStyle(article);
  const right = box.right - parseFloat(cs.paddingRight);
  // what the reader sees: not a permalink hidden until hover (a figure's "#"), not a
  // closed dropdown, not a 1-px screen-reader-only text (the explorers' "to the power")
  const visible = e => e.checkVisibility({visibilityProperty: true}) &&
    !e.closest('details:not([open]), .toggle-hidden') &&
    !(e.getBoundingClientRect().width <= 1 && getComputedStyle(e).position === 'absolute');
  const clips = e => getComputedStyle(e).overflowX !== 'visible';
  const kind = e => e.closest('mjx-container[display="true"]') ? 'display equation' :
    e.closest('.cell_input') ? 'code cell' :
    e.closest('table') || e.querySelector(':scope > table') ? 'table' :
    e.closest('.cell_output') ? 'output' : e.tagName.toLowerCase();
  const text = e => e.textContent.replace(/\s+/g, ' ').trim().slice(0, 100);
  // MathJax 4 draws letters as Unicode's mathematical italics (𝑎) and keeps the invisible
  // operators (function application, times): plain letters, as the TeX reads
  const mathText = e => text(e).normalize('NFKC').replace(/[\u2061-\u2064]/g, '');
  // An element wider than the column either scrolls (it clips: scrollWidth > clientWidth)
  // or sticks out of the column; each is reported once, at the outermost such element.
  // MathJax's own parts are measured through their container only.
  const wide = [], reported = new Set(), scrollingTables = [];
  const under = (e, pred) => {
    for (let a = e.parentElement; a && a !== article; a = a.parentElement) if (pred(a)) return true;
    return false; };
  // Equations by what MathJax drew (mjx-math): the container's scrollWidth also counts
  // the invisible assistive MathML. Inline math is clipped by the theme (overflow: hidden).
  for (const m of article.querySelectorAll('mjx-container')) {
    const math = m.querySelector('mjx-math');
    if (!visible(m) || !math) continue;
    const display = m.getAttribute('display') === 'true';
    const holder = display ? m : (m.closest('span.math') || m);
    const cut = math.getBoundingClientRect().width - Math.min(holder.clientWidth || 1e9,
                                                               right - box.left);
    // a display that scrolls shows it: the edge shadows of book/_static/code-cells.css
    const cued = /gradient/.test(getComputedStyle(m).backgroundImage);
    if (cut > SLACK) wide.push({kind: display ? 'display equation' : 'inline equation',
      how: display ? 'scrolls' : 'is cut off', px: Math.round(cut), text: mathText(m), cued});
  }
  for (const e of article.querySelectorAll('*')) {
    if (e.closest('.math, mjx-container')) continue;
    if (!visible(e) || getComputedStyle(e).display === 'inline') continue;
    if (under(e, a => reported.has(a))) continue;
    const r = e.getBoundingClientRect();
    if (clips(e) && e.scrollWidth > e.clientWidth + SLACK) {
      reported.add(e);
      wide.push({kind: kind(e), how: 'scrolls', px: e.scrollWidth - e.clientWidth, text: text(e)});
      if (kind(e) === 'table') scrollingTables.push([e, wide[wide.length - 1]]);
    } else if (r.width > 0 && r.right > right + SLACK && !under(e, clips)) {
      reported.add(e);
      wide.push({kind: kind(e), how: 'sticks out', px: Math.round(r.right - right), text: text(e)});
    }
  }
  // A table that scrolls shows it: the fades of book/_static/code-cells.css (a mask whose
  // edges follow the scrolling), at the far edge before it is scrolled and at the near edge
  // once scrolled to the end, never at an end already reached.
  const fades = e => { const cs = getComputedStyle(e);
    if (!/gradient/.test(cs.maskImage || cs.webkitMaskImage || '')) return [0, 0];
    return ['--book-fade-start', '--book-fade-end']
      .map(p => parseFloat(cs.getPropertyValue(p)) || 0); };
  for (const [e, w] of scrollingTables) {
    const [start, end] = fades(e);
    e.scrollLeft = e.scrollWidth;
    await frame();
    const [startAtEnd, endAtEnd] = fades(e);
    e.scrollLeft = 0;
    await frame();
    w.cued = start === 0 && end > 0 && startAtEnd > 0 && endAtEnd === 0;
  }
  // Printed outputs: <pre> in an output (streams and text/plain), line by line.
  const outputs = [...article.querySelectorAll('.cell_output pre')]
    .filter(e => visible(e) && !e.closest('.tag_raises-exception'));
  const lines = outputs.flatMap(e => e.textContent.split('\n'));
  const printed = lines.filter(l => l.length > MAX_PRINTED)
    .map(l => ({length: l.length, line: l.trimEnd()}));
  const outputScrolls = outputs.filter(e => e.scrollWidth > e.clientWidth + SLACK).map(text);
  // A Markdown table left as text: a |-delimited row and its |---| separator line.
  const sep = /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$/m, row = /^\s*\|.*\|\s*$/m;
  const source = '.cell_input, .highlight-python, .highlight-ipython3, .highlight-bash';
  const pipes = [...article.querySelectorAll('p, pre, li, td, div.output')]
    .filter(e => !e.closest(source))
    .filter(e => ![...e.children].some(c => c.matches('p, pre, li, div')))
    .filter(e => visible(e) && sep.test(e.textContent) && row.test(e.textContent))
    .map(e => e.textContent.trim().slice(0, 160));
  // lineboxes: the lines MathJax 4 broke the display into (0: it broke none)
  const displays = [...article.querySelectorAll('div.math')].filter(visible)
    .map(d => ({numbered: !!d.querySelector('.eqno'), id: d.id, text: mathText(d),
                lineboxes: d.querySelectorAll('mjx-linebox').length}));
  // Progress bars: a stored widget view whose model is (or holds) a progress bar would be
  // drawn by the widget manager online (or leave a blank gap where it was hidden), and a
  // tqdm line printed as text.
  const mime = kind => `script[type="application/vnd.jupyter.widget-${kind}+json"]`;
  const stateEl = document.querySelector(mime('state'));
  const state = stateEl ? (JSON.parse(stateEl.textContent).state || {}) : {};
  const kids = m => (m.state.children || []).map(c => String(c).replace('IPY_MODEL_', ''));
  const holdsBar = (id, depth) => { const m = state[id]; if (!m || depth > 8) return false;
    return /ProgressModel$/.test(m.model_name) || kids(m).some(c => holdsBar(c, depth + 1)); };
  const words = id => { const m = state[id]; if (!m) return '';
    return [m.state.value, ...kids(m).map(words)].filter(v => typeof v === 'string')
      .join(' ').replace(/\s+/g, ' ').trim(); };
  const barWidgets = [...article.querySelectorAll(mime('view'))]
    .map(e => JSON.parse(e.textContent).model_id).filter(id => holdsBar(id, 0))
    .map(id => `widget ${id}: ${words(id).slice(0, 80) || '(no text)'}`);
  const barText = lines.filter(l => /\d+%\|/.test(l) || /\d+\/\d+ \[\d+:\d+/.test(l))
    .map(l => `text: ${l.trim().slice(0, 100)}`);
  const stderr = [...article.querySelectorAll('.cell_output .stderr')]
    .filter(e => visible(e) && !e.closest('.tag_raises-exception') && e.textContent.trim())
    .map(e => `stderr: ${text(e)}`);
  const errorLines = lines.filter(l => /^\s*(\w*(Error|Warning|Exception)\b|Traceback)/.test(l))
    .map(l => `error text: ${l.trim().slice(0, 100)}`);
  // Each figure image as shown: its text (the smallest, PNG px, that companion.panels
  // wrote into it; a column of a figure stacked on a phone carries its own) and the scale
  // it is drawn at. A figure stored before that (no data-text-px) has the book's 9-pt
  // labels, 12.5 px. wider: the image is wider than its box (it scrolls sideways).
  const figures = [...article.querySelectorAll('.cell_output img, figure img')].filter(visible)
    .map(i => { const panel = i.closest('.book-panel'), holder = i.closest('figure');
      const box = (panel || i.closest('.cell_output') || holder || i).getBoundingClientRect();
      const named = panel ? panel.closest('.book-panels') : i;
      return {alt: i.alt || '', src: (i.currentSrc || i.src).split('/').pop().slice(0, 24),
        name: (holder && holder.id) || (named.getAttribute('aria-label') || named.alt || '')
          .slice(0, 50).trim(),
        textPx: parseFloat((panel || i).dataset.textPx || '12.5'),
        scale: i.getBoundingClientRect().width / (i.naturalWidth || 1),
        wider: !panel && i.getBoundingClientRect().width > box.width + SLACK}; });
  const sidebar = [...document.querySelectorAll('nav.bd-docs-nav a.reference')]
    .map(a => ({href: a.href.split('#')[0], text: a.textContent.trim()}));
  const links = [...article.querySelectorAll('a.reference.internal')]
    .map(a => ({href: a.href.split('#')[0], text: a.textContent.trim()}));
  return {wide, printed, outputScrolls, pipes, displays, progress: [...barWidgets, ...barText],
          errors: [...stderr, ...errorLines], figures, sidebar, links,
          pageWidth: document.documentElement.scrollWidth, viewport: innerWidth};
})()
""".replace("SLACK", str(SLACK_PX)).replace("MAX_PRINTED", str(MAX_PRINTED))


def set_width(browser, width: int) -> None:
    """Lay pages out for a window `width` CSS px wide (a phone below 600: touch, mobile)."""
    if getattr(browser, "width", DESKTOP) == width:
        return
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                 height=900 if width >= 600 else 844, deviceScaleFactor=1,
                 mobile=width < 600)
    browser.width = width


def visit_phone(browser, server: str, page: str) -> dict:
    """LAYOUT of `page` at PHONE width (light mode), once per session; a screenshot of the
    top of the page is kept beside the others."""
    key = (server, page, f"phone{PHONE}")
    if key not in _VISITS:
        set_width(browser, PHONE)
        try:
            browser.goto(server + page)
            _VISITS[key] = browser.evaluate(LAYOUT, timeout=60)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = page.replace("/", "__").removesuffix(".html")
            browser.screenshot(SCREENSHOTS / f"{name}-phone{PHONE}.png")
        finally:
            set_width(browser, DESKTOP)
    return _VISITS[key]


def too_wide(layout: dict) -> list[str]:
    return [f"{w['kind']} {w['how']} by {w['px']} px: {w['text']}" for w in layout["wide"]]


def scrolls_unseen(layout: dict) -> list[str]:
    """Display equations and tables that scroll with nothing to say so: no edge shadows (an
    equation) or no fade at the edge where more lies (a table; book/_static/code-cells.css)."""
    return [f"{w['kind']}: {w['text']}" for w in layout["wide"]
            if w["kind"] in ("display equation", "table") and w["how"] == "scrolls"
            and not w.get("cued")]


def long_lines(page: str, layout: dict) -> list[str]:
    return [f"{p['length']} characters: {p['line'][:100]}" for p in layout["printed"]]


def unnumbered(layout: dict) -> list[str]:
    return [d["text"][:80] for d in layout["displays"] if not d["numbered"]]


def meaningless_alt(layout: dict) -> list[str]:
    """Figures whose alt text is missing, a file name or a hash, or under three words."""
    bad = []
    for f in layout["figures"]:
        alt = f["alt"].strip()
        if (len(alt.split()) < 3 or re.search(r"[0-9a-f]{16,}|_images/|\.(png|jpe?g|svg)$", alt)):
            bad.append(f"{f['src']}: alt={alt[:60]!r}")
    return bad


def escaped_bars_in_tables(text: str) -> list[str]:
    """Rows of Markdown pipe tables whose math holds `\\|`: inside a table cell Markdown
    reads it as an escaped pipe, so D_KL(p \\| q) shows one bar (write \\Vert)."""
    return [line for line in text.splitlines()
            if line.lstrip().startswith("|") and re.search(r"\$[^$]*\\\|[^$]*\$", line)]


# --- pixels -------------------------------------------------------------------------------
def luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of sRGB values in [0, 255]: (..., 3) -> (...)."""
    c = rgb / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def ink_contrast(image) -> tuple[float, float, float]:
    """(background luminance, contrast of the strongest ink, share of pixels with
    contrast >= MIN_CONTRAST) for a crop (PIL image) around an equation; the background is
    the median of the crop's border, which the padding keeps free of glyphs."""
    lum = luminance(np.asarray(image.convert("RGB"), dtype=float))
    border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
    bg = float(np.median(border))
    ratio = (np.maximum(lum, bg) + 0.05) / (np.minimum(lum, bg) + 0.05)
    return bg, float(np.percentile(ratio, 99.5)), float((ratio >= MIN_CONTRAST).mean())


def problem(image, mode: str) -> str:
    """Why an equation's crop is not readable in `mode` ('' when it is)."""
    bg, contrast, ink = ink_contrast(image)
    if (mode == "dark") != (bg < 0.2):
        return f"background luminance {bg:.2f} in {mode} mode"
    if contrast < MIN_CONTRAST or ink < 0.003:
        return f"contrast {contrast:.2f} (need {MIN_CONTRAST}), ink {ink:.2%} of the box"
    return ""


# --- links --------------------------------------------------------------------------------
class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            self.refresh = (a.get("content") or "").partition("url=")[2] or None


@functools.cache
def anchors(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(errors="replace"))
    return parser


# The download button's PDF: the Pages workflow builds it before the HTML, which copies it in
# (book/_ext/book_pdf.py; the workflow checks that it is there); `make test` builds no PDF.
BOOK_PDF = "autoencoders-to-diffusion.pdf"


def broken_links(site: Path, server: str, links: list[str]) -> list[str]:
    """Same-site links whose file or #anchor does not exist in the built site."""
    bad = []
    for link in links:
        if not link.startswith(server):
            continue
        parts = urlsplit(link)
        target = site / unquote(parts.path).lstrip("/")
        if target.name == BOOK_PDF and not target.exists():
            continue  # made by `make pdf`, copied in when the HTML is built after it (Pages)
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            bad.append(f"{link} (no such file)")
        elif parts.fragment and target.suffix == ".html":
            if unquote(parts.fragment) not in anchors(target).ids:
                bad.append(f"{link} (no element with id {parts.fragment!r})")
    return bad


# --- the checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(browser, server, page):
    r = visit(browser, server, page)
    assert not r["raw"], f"{page}: LaTeX left as raw text (not typeset): {r['raw'][:5]}"
    assert not r["untypeset"], f"{page}: math elements MathJax did not render: " \
                               f"{r['untypeset'][:5]} (is the local MathJax served?)"
    assert not r["mathErrors"], f"{page}: MathJax errors (bad TeX): {r['mathErrors'][:5]}"


@pytest.mark.parametrize("page", PAGES)
def test_images_and_resources_load(browser, server, page):
    r = visit(browser, server, page)
    missing = [i["src"] for i in r["images"] if not i["ok"] and i["src"].startswith(server)]
    assert not missing, f"{page}: images that do not load: {missing}"
    assert not r["local_failures"], f"{page}: requests to the book's own files failed: " \
                                    f"{r['local_failures']}"


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_resolve(browser, server, site, page):
    r = visit(browser, server, page)
    bad = broken_links(site, server, r["links"])
    assert not bad, f"{page}: broken internal links or anchors:\n  " + "\n  ".join(bad)


def test_index_redirects_to_a_page(site):
    refresh = anchors(site / "index.html").refresh
    assert refresh and (site / refresh).is_file(), f"index.html redirects to {refresh!r}"


@pytest.mark.parametrize("page", PAGES)
def test_no_traceback_in_outputs(browser, server, page):
    r = visit(browser, server, page)
    assert not r["tracebacks"], f"{page}: an output shows a Python traceback:\n" + \
        "\n---\n".join(r["tracebacks"][:3])


@pytest.mark.parametrize("page", PAGES)
def test_widgets_have_a_static_figure(browser, server, page):
    r = visit(browser, server, page)
    empty = [w for w in r["widgets"] if not w["drawn"] and not w["figureBeside"]]
    assert not empty, (f"{page}: a widget renders as an empty area (the page has no kernel) "
                       f"and no static figure is beside it (in its cell or the cell before or "
                       f"after): {[w['code'] for w in empty]}")


@pytest.mark.parametrize("mode", ["light", "dark"])
@pytest.mark.parametrize("page", CHAPTERS)
def test_equations_visible(browser, server, page, mode):
    r = visit(browser, server, page, mode)
    assert r["theme"] == mode, f"{page}: asked for {mode} mode, the page shows {r['theme']!r}"
    assert r["crops"], f"{page}: no visible equation to check"
    bad = []
    for i, (eq, image) in enumerate(r["crops"]):
        if problem(image, mode):
            bad.append(f"{eq['tex']!r}: {problem(image, mode)}")
            # kept for a person to look at, beside the page's screenshots
            image.save(SCREENSHOTS / f"{page.replace('/', '__')}-{mode}-eq{i}.png")
    assert not bad, f"{page} ({mode}): equations not visible against the page:\n  " + \
        "\n  ".join(bad)


@pytest.mark.parametrize("mode", ["light", "dark"])
@pytest.mark.parametrize("page", CHAPTERS)
def test_code_fits_the_text_column(browser, server, page, mode):
    """No code cell scrolls sideways at the theme's width: lines of about 80 characters."""
    r = visit(browser, server, page, mode)
    assert not r["overflow"], (f"{page} ({mode}): code cells wider than the text column "
                               "(wrap the lines at about 80 characters):\n  "
                               + "\n  ".join(r["overflow"][:10]))


@pytest.mark.parametrize("page", CHAPTERS)
def test_launch_buttons_open_this_chapter(site, page):
    """The rocket menu's Colab entry and the badge both open this chapter's .ipynb."""
    html = (site / page).read_text()
    expected = colab.colab_url(str(Path(page).with_suffix(".ipynb")))
    launch = re.findall(r'<a href="([^"]+)"[^>]*\s+title="Launch on Colab"', html)
    assert launch == [expected], f"{page}: Colab launch button {launch}, expected {expected}"
    badges = re.findall(r'href="(https://colab\.research\.google\.com/github/[^"]+)"', html)
    assert badges and set(badges) == {expected}, \
        f"{page}: Colab links {sorted(set(badges))}, expected only {expected}"


# --- what the reader sees -----------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_nothing_wider_than_the_column(browser, server, page):
    """At 1280 px no code cell, output, table or display equation scrolls sideways or
    sticks out of the 688-px column: the reader sees every character without scrolling."""
    bad = too_wide(visit(browser, server, page)["layout"])
    assert not bad, (f"{page}: wider than the text column at {DESKTOP} px (split displays "
                     "with aligned/split, print at most 80 characters a line, make tables "
                     "with fewer or narrower columns):\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("page", CHAPTERS)
def test_printed_lines_fit(browser, server, page):
    """Printed output lines are at most 80 characters (the CSS wraps longer ones, which
    breaks columns of numbers apart); tabular results go through the table renderer."""
    bad = long_lines(page, visit(browser, server, page)["layout"])
    assert not bad, (f"{page}: printed lines longer than {MAX_PRINTED} characters:\n  "
                     + "\n  ".join(bad))


@pytest.mark.parametrize("page", PAGES)
def test_no_raw_pipe_tables(browser, server, page):
    bad = visit(browser, server, page)["layout"]["pipes"]
    assert not bad, (f"{page}: Markdown tables shown as raw pipe text (is "
                     f"nb_render_markdown_format: myst still set?):\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("page", NUMBERED)
def test_display_equations_are_numbered(browser, server, page):
    """In a numbered chapter every display equation carries its number, (8.3): label it
    ($$ ... $$ (label)) so that the prose can refer to it."""
    layout = visit(browser, server, page)["layout"]
    bad = unnumbered(layout)
    assert not bad, (f"{page}: {len(bad)} of {len(layout['displays'])} display equations "
                     "have no number:\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("page", PAGES)
def test_no_progress_bars_or_error_text(browser, server, page):
    """Stored outputs show results, not machinery: no progress bar (a stored widget that the
    widget manager draws online, or tqdm's text) and nothing written to stderr or reading
    as an error or warning."""
    layout = visit(browser, server, page)["layout"]
    bad = layout["progress"] + layout["errors"]
    assert not bad, (f"{page}: progress bars or error text in outputs (make outputs runs "
                     "with BOOK_PROGRESS=0):\n  " + "\n  ".join(bad[:12]))


@pytest.mark.parametrize("page", CHAPTERS)
def test_figures_have_alt_text(browser, server, page):
    """Every figure says what it shows to a reader who cannot see it (myst-nb's
    `mystnb: image: alt:` cell metadata, or glue:figure); not its hashed file name."""
    bad = meaningless_alt(visit(browser, server, page)["layout"])
    assert not bad, (f"{page}: figures without meaningful alt text:\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("page", PHONE_PAGES)
def test_phone_layout(browser, server, page):
    """On a 390-px phone the page never scrolls sideways, printed outputs wrap and no inline
    equation is cut off; a display equation that MathJax could not break into lines that fit,
    or a wide table, may scroll inside its own box, and shows it (a display with a shadow at
    the edge that hides more of it, a table fading out there), but the status page's table
    fits (one card per chapter) and nothing on an API page is wider than the column
    (signatures break one parameter a line, formulas wrap)."""
    layout = visit_phone(browser, server, page)
    # a phone widens its layout viewport to fit content, so compare with PHONE itself
    assert layout["pageWidth"] <= PHONE + SLACK_PX, (
        f"{page}: the page is {layout['pageWidth']} px wide on a {PHONE}-px phone: "
        "something pushes it sideways")
    assert not layout["outputScrolls"], (f"{page}: printed outputs scroll at {PHONE} px "
                                         f"instead of wrapping: {layout['outputScrolls'][:5]}")
    cut = [f"cut off by {w['px']} px: {w['text']}" for w in layout["wide"]
           if w["kind"] == "inline equation"]
    assert not cut, (f"{page}: inline equations cut off at {PHONE} px (make them displays "
                     "or shorter pieces):\n  " + "\n  ".join(cut))
    silent = scrolls_unseen(layout)
    assert not silent, (f"{page}: display equations or tables that scroll at {PHONE} px "
                        "with nothing to say so (book/_static/code-cells.css):\n  "
                        + "\n  ".join(silent))
    if page == STATUS or page in API:
        bad = too_wide(layout)
        assert not bad, f"{page}: wider than the phone's column:\n  " + "\n  ".join(bad)


# Figures a phone shows with labels under 9 px, or wider than the screen: stored before their
# PNGs said where their columns of panels are (companion.panels), each with the reason. The
# list is what test_figures_readable_on_a_phone reads: a figure on it that has become
# readable fails the test until its line goes, so the list only shrinks.
PHONE_FIGURES = ROOT / "tests" / "data" / "figures_small_on_a_phone.txt"


def phone_figures_listed() -> dict[tuple[str, str], str]:
    """{(page, figure): reason} from PHONE_FIGURES: lines `page | figure | reason`."""
    listed = {}
    for line in PHONE_FIGURES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            page, figure, reason = (part.strip() for part in line.split("|", 2))
            listed[page, figure] = reason
    return listed


def small_on_a_phone(layout: dict) -> dict[str, str]:
    """{figure: what is wrong} for the figures of a page laid out at PHONE width: text drawn
    under companion.plot.MIN_TEXT_PX, or an image wider than its box. A figure stacked in
    columns is one entry (its smallest column)."""
    from companion.plot import MIN_TEXT_PX

    found: dict[str, str] = {}
    for f in layout["figures"]:
        # a panel with no text carries Infinity, which comes back from JSON as None
        shown = math.inf if f["textPx"] is None else f["textPx"] * f["scale"]
        why = (f"scrolls sideways (labels {shown:.1f} px)" if f["wider"] else
               f"labels {shown:.1f} px" if shown < MIN_TEXT_PX else None)
        if why and f["name"] not in found:
            found[f["name"]] = why
    return found


@pytest.mark.parametrize("page", CHAPTERS)
def test_figures_readable_on_a_phone(browser, server, page):
    """On a 390-px phone every figure's smallest text is drawn at 9 px or more and no figure
    is wider than the screen (a figure of panels side by side shows them one under the
    other: book/_ext/panels.py), except the figures PHONE_FIGURES lists with a reason."""
    found = small_on_a_phone(visit_phone(browser, server, page))
    listed = {f: r for (p, f), r in phone_figures_listed().items() if p == page}
    new = [f"{name[:50]!r}: {why}" for name, why in found.items() if name not in listed]
    assert not new, (f"{page}: figures a {PHONE}-px phone shows with labels under 9 px or "
                     "wider than the screen (draw them with companion.plot.subplots, whose "
                     "PNG stacks its columns on a phone):\n  " + "\n  ".join(new))
    fixed = [name for name in listed if name not in found]
    assert not fixed, (f"{page}: readable on a phone now, so take them off "
                       f"{PHONE_FIGURES.name}: {fixed}")


def test_intro_names_chapters_as_the_sidebar(browser, server):
    """The introduction's chapter list uses the chapters' own titles, as the sidebar does."""
    layout = visit(browser, server, PAGES[0])["layout"]
    sidebar = {a["href"]: re.sub(r"^\d+\.\s*", "", a["text"]) for a in layout["sidebar"]}
    named = [(a["text"], sidebar[a["href"]]) for a in layout["links"]
             if "/notebooks/" in a["href"] and a["href"] in sidebar]
    assert len({t for t, _ in named}) >= len(CHAPTERS), \
        f"{PAGES[0]} links to {len(named)} chapters, the book has {len(CHAPTERS)}"
    bad = [f"{text!r} (sidebar: {title!r})" for text, title in named if text != title]
    assert not bad, f"{PAGES[0]}: chapters named differently from the sidebar: {bad}"


def test_no_escaped_bar_in_table_math():
    bad = {str(p.relative_to(ROOT)): rows for p in sorted(ROOT.glob("book/*.md"))
           + sorted(ROOT.glob("notebooks/*.md")) if (rows := escaped_bars_in_tables(
               p.read_text()))}
    assert not bad, f"\\| inside a Markdown table shows one bar, use \\Vert: {bad}"
    assert escaped_bars_in_tables(r"| $D(p \| q)$ | the divergence |")  # the check bites


# --- the checks above, shown to fail --------------------------------------------------------
PLANTED_INTO = "notebooks/02_kl_divergence.html"  # a numbered chapter with outputs
PLANTED = """
<div class="math notranslate nohighlight" id="planted-wide-equation">
\\[ L = \\left( TERMS \\right) \\]</div>
<div class="math notranslate nohighlight" id="planted-breaking-equation">
\\[ B = TERMS \\]</div>
<style>#planted-bare-equation mjx-container { background: none !important; }</style>
<div class="math notranslate nohighlight" id="planted-bare-equation">
\\[ U = \\left( TERMS \\right) \\]</div>
<div class="pst-scrollable-table-container"><table class="table"><tbody><tr>CELLS</tr>
</tbody></table></div>
<div style="overflow-x: auto"><table class="table"><tbody><tr>BARE</tr></tbody></table></div>
<div class="cell docutils container"><div class="cell_output docutils container">
<div class="output text_markdown"><p>| model | bits/dim |
|---|---|
| planted VAE | 1.23 |</p></div>
<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre>\
<span></span>planted print: WIDE
</pre></div></div>
<div class="output stderr highlight-myst-ansi notranslate"><div class="highlight"><pre>\
<span></span>planted:  40%|████      | 4/10 [00:01&lt;00:02,  3.10it/s]
UserWarning: planted warning
</pre></div></div>
<img alt="../_images/0123456789abcdef0123456789abcdef.png" src="../_static/images/logo_colab.png">
</div></div>
""".replace("TERMS", " + ".join(f"a_{{{i}}} b_{{{i}}}" for i in range(1, 41))).replace(
    "WIDE", " ".join(f"{0.1 * i:.4f}" for i in range(30))).replace(
    "CELLS", "".join(f"<td>planted&nbsp;cell&nbsp;{i}</td>" for i in range(30))).replace(
    "BARE", "".join(f"<td>bare&nbsp;cell&nbsp;{i}</td>" for i in range(30)))
# Two inline equations at the article's end, below a spacer deeper than a capture of the whole
# page can hold in one piece: one in red (its crop must show red ink, so crops are cut where
# the equation is drawn) and one drawn in almost the background's colour (must be flagged).
PLANTED_DEEP = """
<div style="height: 15000px"></div>
<p>Planted <span class="math notranslate nohighlight" id="planted-red"
style="color: rgb(220, 0, 0)">\\(q_{\\rm red}\\)</span> and
<span class="math notranslate nohighlight" id="planted-faint"
style="color: rgb(247, 247, 247)">\\(q_{\\rm faint}\\)</span>.</p>
"""


# What myst-nb used to put on a page with saved widget state: the widget manager from a CDN.
PLANTED_CDN = ('<script src="https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.6'
               '/dist/embed-amd.js" crossorigin="anonymous"></script>'
               '<script>console.error("planted console error");</script>'
               '<script>throw new Error("planted exception");</script>')


@pytest.fixture(scope="module")
def planted_server(site, tmp_path_factory):
    """The built site with one more page: a copy of PLANTED_INTO with PLANTED after its
    article's title (a wide unnumbered equation, a raw pipe table, a wide print, a progress
    bar and a warning on stderr, a figure whose alt text is its file name) and PLANTED_DEEP
    at its end. The rest of the site is linked in."""
    root = tmp_path_factory.mktemp("planted-site")
    for entry in site.iterdir():
        if entry.name != "notebooks":
            (root / entry.name).symlink_to(entry)
    (root / "notebooks").mkdir()
    for entry in (site / "notebooks").iterdir():
        (root / "notebooks" / entry.name).symlink_to(entry)
    html = (site / PLANTED_INTO).read_text()
    head, sep, tail = html.partition('<article class="bd-article">')
    tail_head, sep2, tail = tail.partition("</h1>")
    assert sep and sep2, f"{PLANTED_INTO} has no <h1> in its article"
    head, sep = head + sep + tail_head, sep2
    body, sep3, tail = tail.partition("</article>")
    assert sep3, f"{PLANTED_INTO} has no </article>"
    (root / "notebooks" / "planted.html").write_text(head + sep + PLANTED + body
                                                     + PLANTED_DEEP + sep3 + tail)
    head, sep, tail = html.partition("</head>")
    (root / "notebooks" / "planted-cdn.html").write_text(head + PLANTED_CDN + sep + tail)
    # chapter 6's latent explorer, on a copy of PLANTED_INTO in place of its first explorer,
    # with the decoder of a VAE shaped as chapter 6's vae2 (seeded, untrained)
    weights = root / "latent-decoder.npz"
    import torch

    from companion.models.vae import VAE
    from companion.page_explorers import save_latent_decoder

    torch.manual_seed(0)
    save_latent_decoder(VAE(latent_dim=2, hidden=(512,)), weights)
    state = _extension().state_json("latent", {"stored": str(weights), "span": 2.5})
    start = html.index('<div class="book-explorer"')
    end = html.index("</div>", start) + len("</div>")
    (root / "notebooks" / "planted-latent.html").write_text(
        html[:start] + _extension().explorer_html("latent", state) + html[end:])
    yield from serve(root)


@functools.cache
def _extension():
    """book/_ext/live_explorers.py, the Sphinx extension that puts explorers in the page."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "live_explorers", ROOT / "book" / "_ext" / "live_explorers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planted_faults_are_caught(browser, planted_server, server):
    """Each check above fails on the planted page, and for the planted fault, while the
    page it was copied from passes them (the checks see the fault, not the page)."""
    page = "notebooks/planted.html"
    layout = visit(browser, planted_server, page)["layout"]
    wide = too_wide(layout)
    # a display with no place to break (all of it in brackets) scrolls; the same sum
    # without the brackets is broken into lines by MathJax and fits
    assert any(w.startswith("display equation scrolls") and "L=(a1b1+a2b2" in w
               for w in wide), wide
    assert not any("B=a1b1+a2b2" in w for w in wide), wide
    breaking = [d for d in layout["displays"] if d["id"] == "planted-breaking-equation"]
    assert breaking and breaking[0]["lineboxes"] > 1, layout["displays"]
    assert any(w.startswith("table scrolls") and "planted cell 0" in w for w in wide), wide
    assert any("planted print" in p for p in long_lines(page, layout)), layout["printed"]
    assert any("planted VAE" in p for p in layout["pipes"]), layout["pipes"]
    assert any("L=(a1b1+a2b2" in u for u in unnumbered(layout)), layout["displays"]
    assert any("40%|" in p for p in layout["progress"]), layout["progress"]
    assert any("stderr: planted" in e for e in layout["errors"]), layout["errors"]
    assert any("UserWarning: planted" in e for e in layout["errors"]), layout["errors"]
    assert any("0123456789abcdef" in f for f in meaningless_alt(layout)), layout["figures"]
    # the book's CSS wraps the planted print (it does not scroll): the line length catches it
    assert not any("planted print" in w for w in wide), wide
    original = visit(browser, server, PLANTED_INTO)["layout"]
    for check in (too_wide, unnumbered):
        assert not any("L=(a1b1+a2b2" in m or "planted cell" in m for m in check(original))
    assert not any("planted" in m for m in long_lines(PLANTED_INTO, original)
                   + original["pipes"] + original["progress"] + original["errors"])


def test_planted_scrolling_is_caught(browser, planted_server, server):
    """At PHONE width test_phone_layout's check of what scrolls sees a display equation whose
    shadows are taken away and a wide table in a box without the fades (both planted), and
    passes the planted display and table that keep them; the sum that MathJax breaks into
    lines does not scroll."""
    layout = visit_phone(browser, planted_server, "notebooks/planted.html")
    scrolling = [w["text"] for w in layout["wide"] if w["how"] == "scrolls"]
    assert any("L=(a1b1+a2b2" in w for w in scrolling), scrolling
    assert any("planted cell 0" in w for w in scrolling), scrolling
    assert not any("B=a1b1+a2b2" in w for w in scrolling), scrolling
    silent = scrolls_unseen(layout)
    assert any(w.startswith("display equation: U=(a1b1+a2b2") for w in silent), silent
    assert any(w.startswith("table: bare cell 0") for w in silent), silent
    assert not any("L=(a1b1+a2b2" in w or "planted cell" in w for w in silent), silent
    assert not scrolls_unseen(visit_phone(browser, server, PLANTED_INTO))


def test_equation_crops_show_the_equation(browser, planted_server):
    """The crop test_equations_visible judges is cut where the equation is drawn, even
    15,000 px down a page (a red equation's crop shows red ink), and an equation drawn in
    almost the background's colour is flagged."""
    set_width(browser, DESKTOP)
    browser.goto(planted_server + "notebooks/planted.html")
    browser.evaluate(INSPECT, timeout=60)  # waits for MathJax and its fonts; tags equations
    mode = browser.evaluate("document.documentElement.dataset.theme") or "light"
    red, faint = browser.evaluate("['planted-red', 'planted-faint'].map(i => "
                                  "document.querySelector(`#${i} mjx-container`).dataset.eqCheck)")
    pixels = np.asarray(crop_equation(browser, red, mode), dtype=int)
    is_red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    assert is_red.mean() > 0.02, f"the red equation's crop has {is_red.mean():.2%} red pixels"
    assert not problem(crop_equation(browser, red, mode), mode)
    assert problem(crop_equation(browser, faint, mode, tries=1), mode)


# --- explorers that move on the page --------------------------------------------------------
# Each explorer cell of a chapter names its web explorer in its metadata (explorer: {name:
# ...}); book/_ext/live_explorers.py puts its states in the page and book-explorers.js draws
# it. A reader moves it with the mouse or the keyboard, offline, and reads the same numbers as
# the notebook's widget prints: checked here against companion at sampled positions.
def explorer_cells() -> dict[str, list[str]]:
    """{page: [the names of its explorers, in page order]} from the chapters' metadata."""
    out = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        names = [c["metadata"]["explorer"]["name"] for c in cells
                 if "explorer" in c.get("metadata", {})]
        if names:
            out[f"notebooks/{nb.stem}.html"] = names
    return out


EXPLORERS = explorer_cells()
# Chapter 6's latent explorer runs the decoder its stored run saved
# (notebooks/explorers/ch6-latent-decoder.npz); against the full-precision model it came
# from, it is tested on a planted page with a seeded decoder of the same shape
# (planted_server), since the trained model is not kept with the book.
PLANTED_LATENT = "notebooks/planted-latent.html"
EXPLORER_CASES = [pytest.param(page, i, name, id=f"{name}-{Path(page).stem}")
                  for page, names in EXPLORERS.items() for i, name in enumerate(names)]
EXPLORER_CASES += [pytest.param(PLANTED_LATENT, 0, "latent", id="latent-planted")]
# The Jupyter widgets of the chapters (they need a kernel): each must have a web explorer.
WIDGET_CALL = re.compile(r"\b(kl_explorer|elbo_explorer|pinned_explorer|latent_explorer)\(")
EXPLORER_BUDGET = 2_000_000  # bytes a chapter's page may grow by for its explorers
EXPLORER_SHOTS = SCREENSHOTS / "explorers"

EXPLORER_ROOT = "document.querySelectorAll('.book-explorer')[IDX]"
READY = """(async () => { for (let k = 0; k < 200; k++) {
  const r = ROOT; if (r && r.dataset.ready) return true;
  await new Promise(d => setTimeout(d, 50)); } return false; })()"""
BOX = """(async () => { const r = ROOT, svg = r.querySelector('svg.bx-figure');
  r.scrollIntoView({block: 'start', behavior: 'instant'});
  // the pictures drawn (an <image> decodes its data URL after the redraw that made it)...
  await Promise.all([...r.querySelectorAll('image')].map(i => i.decode().catch(() => 0)));
  // ...and the box once it holds still for a frame: a scroll still under way (the theme
  // scrolls smoothly) or a late layout would move it away from the screenshot
  let last = '';
  for (let i = 0; i < 60; i++) {
    await new Promise(d => requestAnimationFrame(() => d()));
    const b = (WHICH).getBoundingClientRect();
    const box = {x: b.left + scrollX, y: b.top + scrollY, width: b.width, height: b.height,
                 inView: b.top >= 0 && b.left >= 0 && b.bottom <= innerHeight
                   && b.right <= innerWidth};
    const now = JSON.stringify([box, scrollX, scrollY]);
    if (i > 0 && now === last) return box;
    last = now;
  }
  return JSON.parse(last)[0]; })()"""
STATE = "JSON.parse(ROOT.querySelector('script.book-explorer-state').textContent)"
SET_RANGE = """(() => { const i = ROOT.querySelector('input[type=range][data-name="NAME"]');
  i.value = K; i.dispatchEvent(new Event('input', {bubbles: true})); return +i.value; })()"""
SET_RADIO = """(() => { const i = [...ROOT.querySelectorAll('input[type=radio][data-name="NAME"]')]
  .find(e => e.value === VALUE); i.click(); return i.checked; })()"""


def js(template: str, idx: int, **subs) -> str:
    out = template.replace("ROOT", EXPLORER_ROOT).replace("IDX", str(idx))
    for k, v in subs.items():
        out = out.replace(k, str(v))
    return out


def open_explorer(browser, url: str, idx: int, width: int = DESKTOP) -> dict:
    """Load the page, wait for explorer idx to be drawn; returns its state (the JSON)."""
    set_width(browser, width)
    browser.goto(url)
    assert browser.evaluate(js(READY, idx)), f"{url}: explorer {idx} never drew itself"
    return browser.evaluate(js(STATE, idx))


def explorer_pixels(browser, idx: int, path: Path | None = None,
                    which: str = "r.querySelector('svg.bx-figure')") -> np.ndarray:
    """The explorer's figure (or `which`, an element under r) as the reader sees it."""
    box = browser.evaluate(js(BOX, idx, WHICH=which))
    in_view = box.pop("inView")
    # Two screenshots that agree. A capture beyond the viewport resizes the view, and the
    # explorer, redrawing on resize, was caught with its pictures not yet decoded (a full
    # run's chapter 9: the arrow key 'left the figure'); in view there is no resize.
    png, previous = None, b""
    for _ in range(8):
        png, previous = browser.screenshot(clip=box, beyond_viewport=not in_view), png
        if png == previous:
            break
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)


def set_control(browser, idx: int, control: dict, value) -> None:
    """Move a control to `value` by script: a range input to that slider position, or a
    radio button (value: its option)."""
    if "values" in control:
        k = next(k for k, v in enumerate(control["values"]) if abs(v - value) < 1e-9)
        assert browser.evaluate(js(SET_RANGE, idx, NAME=control["name"], K=k)) == k
    else:
        assert browser.evaluate(js(SET_RADIO, idx, NAME=control["name"],
                                   VALUE=json.dumps(value)))


# The readout as the reader sees it: its subscripts and powers as <sub> and <sup> (x<sub>t</sub>),
# without the words a screen reader says for a power (.bx-sr, not shown).
READOUT = """(() => { const r = ROOT.querySelector('.bx-readout').cloneNode(true);
  r.querySelectorAll('.bx-sr').forEach(e => e.remove()); return r.innerHTML; })()"""


def readout(browser, idx: int) -> str:
    return browser.evaluate(js(READOUT, idx))


def controls_of(state: dict) -> list[dict]:
    """The explorer's controls: its sliders, then its radio groups (name, options)."""
    radios = {"forward": [("schedule", "schedules")],
              "solvers": [("solver", "solvers")], "fewstep": [("solver", "solvers")],
              "corruption": [("corruption", "corruptions")], "grid": [("solver", "solvers")],
              "unmasking": [("order", "orders")],
              "completions": [("mask", "masks"), ("method", "methods")],
              "bound": [("schedule", "schedules")],
              "textunmasking": [("order", "orders")]}
    return state["controls"] + [{"name": n, "options": state[k]}
                                for n, k in radios.get(state["name"], [])]


def test_every_widget_has_a_web_explorer():
    """Every cell that shows a Jupyter widget names the web explorer that replaces it on the
    page (the widget alone would be a dead control there: no kernel)."""
    missing = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and WIDGET_CALL.search(source):
                spec = cell["metadata"].get("explorer") or {}
                if not spec.get("widget"):
                    missing.append(f"{nb.name}: {source.strip().splitlines()[-1][:60]}")
    missing = [m for m in missing if not m.startswith(tuple(WIDGETS_WITHOUT_EXPLORER))]
    assert not missing, f"widgets with no explorer on the page: {missing}"


# Widgets still without a web explorer, each with the reason; the list may only shrink.
WIDGETS_WITHOUT_EXPLORER: dict[str, str] = {}


@pytest.mark.parametrize("page", PAGES)
def test_no_request_leaves_the_machine(browser, server, page):
    """Opening the page requests nothing but the book's own files: no CDN, no web image."""
    r = visit(browser, server, page)
    assert not r["external_requests"], f"{page}: requests off the machine: " \
                                       f"{r['external_requests']}"


@pytest.mark.parametrize("page", PAGES)
def test_console_is_clean(browser, server, page):
    """Opening the page as a first visit (no mode chosen before) logs no error and throws
    nothing (sphinx-thebe's configuration was on every page twice, and the theme logged an
    invalid empty mode: issue 64)."""
    r = visit(browser, server, page)
    assert not r["console_errors"], f"{page}: {r['console_errors']}"


def test_planted_console_errors_are_caught(browser, planted_server):
    """A page that throws and logs an error fails the check above."""
    r = visit(browser, planted_server, "notebooks/planted-cdn.html")
    errors = " | ".join(r["console_errors"])
    assert "planted exception" in errors and "planted console error" in errors, errors


def test_planted_cdn_script_is_caught(browser, planted_server):
    """A page that loads a script from a CDN (what myst-nb's widget manager did) fails the
    check above, and its explorer still moves with the network blocked."""
    page = "notebooks/planted-cdn.html"
    r = visit(browser, planted_server, page)
    assert any("cdn.jsdelivr.net" in u for u in r["external_requests"]), \
        r["external_requests"]
    state = open_explorer(browser, planted_server + page, 0)
    before = explorer_pixels(browser, 0)
    set_control(browser, 0, state["controls"][0], state["controls"][0]["values"][-1])
    assert (explorer_pixels(browser, 0) != before).any()


@pytest.mark.parametrize("page, idx, name", EXPLORER_CASES)
def test_explorer_moves(browser, server, planted_server, page, idx, name):
    """Each control, moved by script, changes the drawn picture and the numbers shown; the
    first slider moves by keyboard (focus, arrow key) too. Screenshots of two positions at
    1280 and 390 px are kept in SCREENSHOTS/explorers."""
    server = planted_server if page == PLANTED_LATENT else server
    state = open_explorer(browser, server + page, idx)
    assert state["name"] == name
    stem = f"{name}-{Path(page).stem}"
    first = explorer_pixels(browser, idx, EXPLORER_SHOTS / f"{stem}-{DESKTOP}-a.png")
    for control in controls_of(state):
        before, text = explorer_pixels(browser, idx), readout(browser, idx)
        options = control.get("values") or control["options"]
        now = browser.evaluate(js(
            "(() => { const e = [...ROOT.querySelectorAll('[data-name=\"NAME\"]')];"
            " return e[0].type === 'range' ? +e[0].value : e.findIndex(i => i.checked); })()",
            idx, NAME=control["name"]))
        target = options[(now + len(options) // 3 + 1) % len(options)]
        set_control(browser, idx, control, target)
        after = explorer_pixels(browser, idx)
        assert after.shape != before.shape or (after != before).any(), \
            f"{page}: moving {control['name']} to {target} did not change the figure"
        assert readout(browser, idx) != text, f"{page}: {control['name']} left the numbers"
    explorer_pixels(browser, idx, EXPLORER_SHOTS / f"{stem}-{DESKTOP}-b.png")
    # the keyboard: focus the first slider, press the right arrow
    slider = state["controls"][0]
    before = explorer_pixels(browser, idx)
    # focused as a click would, without scrolling the page (focus() alone scrolls to it)
    k0 = browser.evaluate(js("(() => { const i = ROOT.querySelector('input[type=range]');"
                             " i.focus({preventScroll: true}); return +i.value; })()", idx))
    key = "ArrowRight" if k0 < len(slider["values"]) - 1 else "ArrowLeft"
    code = 39 if key == "ArrowRight" else 37
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", session=True, type=kind, key=key, code=key,
                     windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)
    k1 = browser.evaluate(js("+ROOT.querySelector('input[type=range]').value", idx))
    assert abs(k1 - k0) == 1, f"{page}: the {key} key moved the slider from {k0} to {k1}"
    after = explorer_pixels(browser, idx)
    assert after.shape == before.shape, f"{page}: the key moved the figure's box"
    assert (after != before).any(), f"{page}: the key left the figure"
    assert not (explorer_pixels(browser, idx) == first).all()
    # the phone: the same two positions, stacked
    state = open_explorer(browser, server + page, idx, PHONE)
    try:
        explorer_pixels(browser, idx, EXPLORER_SHOTS / f"{stem}-{PHONE}-a.png",
                        which="r")
        for control in controls_of(state):
            options = control.get("values") or control["options"]
            set_control(browser, idx, control, options[len(options) // 3])
        explorer_pixels(browser, idx, EXPLORER_SHOTS / f"{stem}-{PHONE}-b.png", which="r")
        width = browser.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE + SLACK_PX, f"{page}: the explorer widens the phone page"
    finally:
        set_width(browser, DESKTOP)


@pytest.mark.parametrize("page, idx, name", EXPLORER_CASES)
def test_explorer_resets_and_plays(browser, server, planted_server, page, idx, name):
    """Reset puts every control back at the chapter's setting (the first readout again);
    a step slider's play button moves it forward on its own, and pressing it again pauses
    it where it is."""
    server = planted_server if page == PLANTED_LATENT else server
    state = open_explorer(browser, server + page, idx)
    first = readout(browser, idx)
    for control in controls_of(state):
        options = control.get("values") or control["options"]
        set_control(browser, idx, control, options[-1])
    assert readout(browser, idx) != first, f"{page}: moving every control left the numbers"
    browser.evaluate(js("ROOT.querySelector('button.bx-reset').click()", idx))
    assert readout(browser, idx) == first, f"{page}: reset did not restore the first view"
    plays = browser.evaluate(js("ROOT.querySelectorAll('button.bx-play').length", idx))
    assert plays == sum(bool(c.get("play")) for c in state["controls"])
    if not plays:
        return
    value = js("+ROOT.querySelector('button.bx-play').parentElement"
               ".querySelector('input[type=range]').value", idx)
    label = js("ROOT.querySelector('button.bx-play').getAttribute('aria-label')", idx)
    k0 = browser.evaluate(value)
    browser.evaluate(js("ROOT.querySelector('button.bx-play').click()", idx))
    for _ in range(40):  # a frame comes every 90 to 400 ms
        time.sleep(0.05)
        if browser.evaluate(value) != k0:
            break
    assert browser.evaluate(value) != k0, f"{page}: play did not move the slider from {k0}"
    assert browser.evaluate(label).startswith("pause "), "the button does not offer pause"
    browser.evaluate(js("ROOT.querySelector('button.bx-play').click()", idx))  # pause
    k2 = browser.evaluate(value)
    time.sleep(0.5)
    assert browser.evaluate(value) == k2, f"{page}: pause did not stop the slider"
    assert browser.evaluate(label).startswith("play "), "the button does not offer play"


@pytest.mark.parametrize("page, idx, name", EXPLORER_CASES)
def test_explorer_controls_link_their_equation(browser, server, planted_server, page, idx,
                                               name):
    """A control that names the chapter's equation it moves carries a link to it, with the
    number the page gives that equation."""
    server = planted_server if page == PLANTED_LATENT else server
    state = open_explorer(browser, server + page, idx)
    want = [f"#equation-{c['equation']}" for c in state["controls"] if c.get("equation")]
    got = browser.evaluate(js(
        "[...ROOT.querySelectorAll('a.bx-eq')].map(a => { const h = a.getAttribute('href');"
        " const e = document.getElementById(h.slice(1));"
        " return [h, a.textContent, e && e.querySelector('.eqno').textContent]; })", idx))
    assert [h for h, _, _ in got] == want, f"{page}: equation links {got}, expected {want}"
    for href, text, eqno in got:
        assert eqno and eqno.startswith(text), f"{page}: {href} shown as {text}, is {eqno}"


PHONE_CONTROLS = """(async () => {
  const r = ROOT, svg = r.querySelector('svg.bx-figure'), s = r.querySelector('input[type=range]');
  const frame = () => new Promise(d => requestAnimationFrame(() => requestAnimationFrame(d)));
  const seen = [];
  for (const at of [0.3, 0.6, 1]) {  // the figure's top, middle and bottom on screen
    const b = svg.getBoundingClientRect();
    window.scrollTo(0, b.top + scrollY + at * b.height - innerHeight * (at === 1 ? 1 : 0.5));
    await frame();
    const q = s.getBoundingClientRect(), x = q.left + q.width / 2, y = q.top + q.height / 2;
    const hit = document.elementFromPoint(x, y);
    seen.push({at, y: Math.round(y), hit: hit === s || s.contains(hit)});
  }
  const q = s.getBoundingClientRect();
  return {seen, share: q.width / r.getBoundingClientRect().width, height: q.height};
})()"""


@pytest.mark.parametrize("page, idx, name", EXPLORER_CASES)
def test_explorer_controls_stay_with_the_plot_on_a_phone(browser, server, planted_server,
                                                         page, idx, name):
    """At 390 px the first slider spans most of the explorer's width and is tall enough for
    a thumb (30 px at least), and wherever the reader is in the figure (its top, middle or bottom on
    screen) that slider is on screen and not covered: the controls stay with the plot."""
    server = planted_server if page == PLANTED_LATENT else server
    open_explorer(browser, server + page, idx, PHONE)
    try:
        got = browser.evaluate(js(PHONE_CONTROLS, idx))
    finally:
        set_width(browser, DESKTOP)
    assert got["share"] >= 0.6, f"{page}: the slider takes {got['share']:.0%} of the width"
    assert got["height"] >= 30, f"{page}: the slider is {got['height']} px tall"
    lost = [s for s in got["seen"] if not s["hit"]]
    assert not lost, f"{page}: the slider is off screen or covered at {lost}"


# Every text of an explorer (readout, labels, figure, notes) and its aria and title attributes.
EXPLORER_TEXTS = """(() => {
  const r = ROOT, out = [], walk = document.createTreeWalker(r, NodeFilter.SHOW_TEXT);
  for (let n; (n = walk.nextNode());) if (!n.parentElement.closest('script')) out.push(n.data);
  for (const e of r.querySelectorAll('[aria-label], [aria-valuetext], [title]')) {
    out.push(...['aria-label', 'aria-valuetext', 'title'].map(a => e.getAttribute(a) || ''));
  }
  return out; })()"""
# TeX or code spelling of a symbol the chapter typesets: x_t, 10^-4.42, sqrt(, log10, a log
# axis's tick 1e-3 (a readout's 2.5e-03 is the chapter's table's), 14 x 14
ASCII_NOTATION = re.compile(r"_\S|\^|sqrt\(|log10|(?<![\d.])1e[-+]?\d|\d x \d")


@pytest.mark.parametrize("page, idx, name", EXPLORER_CASES)
def test_explorer_notation_is_typeset(browser, server, planted_server, page, idx, name):
    """An explorer's readout, labels, figure and notes show the chapter's symbols as the
    text beside them does (x<sub>t</sub>, 10<sup>−4.42</sup>, √ᾱ<sub>t</sub>), and its
    aria text says them in words or Unicode: no x_t, 10^-4.42, sqrt(, log10 or 14 x 14,
    as drawn, after each slider has moved once and at each option of a radio group."""
    server = planted_server if page == PLANTED_LATENT else server
    state = open_explorer(browser, server + page, idx)
    seen = set(browser.evaluate(js(EXPLORER_TEXTS, idx)))
    for control in controls_of(state):
        # a slider once; a radio group to each option (chapter 12's masks each name their own)
        values = control.get("values")
        for target in [values[len(values) // 3]] if values else control["options"]:
            set_control(browser, idx, control, target)
            seen |= set(browser.evaluate(js(EXPLORER_TEXTS, idx)))
    ascii_ = sorted(t for t in seen if ASCII_NOTATION.search(t))
    assert not ascii_, f"{page}: notation in ASCII: {ascii_}"


# --- the numbers each explorer shows, from companion ---------------------------------------------
def _kl_expected(state, values):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from companion.kl import gaussian_mixture_1d
    from companion.widgets import plot_fit

    target = gaussian_mixture_1d([0.5, 0.5], [-2.5, 2.5], [0.7, 0.7])  # chapter 2's p
    grid = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    fig, ax = plt.subplots()
    _, fwd, rev = plot_fit(target, values["mu"], values["sigma"], grid, ax=ax)
    plt.close(fig)
    return f"KL(p‖q) = {fwd:.3f}    KL(q‖p) = {rev:.3f}"


def _elbo_expected(state, values):
    import torch

    from companion.explorers import elbo_terms
    from companion.toy import LinearGaussian

    f64 = torch.float64  # chapter 3's model and x
    model = LinearGaussian(torch.tensor([[1.5], [-0.5]], dtype=f64),
                           torch.tensor([0.2, 0.1], dtype=f64), 0.6)
    t = elbo_terms(model, torch.tensor([1.8, -0.9], dtype=f64), values["mean"], values["std"])
    return (f"gap = KL(q‖p(z|x)) = {t['gap']:.3f} nats; log p(x) = {t['log_px']:.3f}, "
            f"ELBO = {t['elbo']:.3f}, 𝔼<sub>q</sub> log p(x|z) = {t['reconstruction']:.3f}, "
            f"−KL(q‖p(z)) = {-t['kl_prior']:.3f}")


def _pinned_expected(state, values):
    import torch

    from companion.affine_vae import pinned_gap
    from companion.explorers import pinned_samples

    mu, sigma, d, t, s = 1.0, 1.5, 2, values["t"], values["s"]  # chapter 5's data
    xs = pinned_samples(mu, sigma, s, 20_000, torch.Generator().manual_seed(0))
    return (f"gap {pinned_gap(d, sigma, t, s).item():.3f} nats at t = {t:.2f}, s = {s:.2f}; "
            f"model samples, var {xs.var():.2f}; data, var {sigma**2:.2f}")


def _forward_expected(state, values):
    import math

    from companion import diffusion as dm

    t, sched = values["t"], values["schedule"]
    betas = {"linear": dm.linear_betas, "cosine": dm.cosine_betas}[sched](1000)
    a = dm.Diffusion(betas).alphas_bar[t - 1].item()
    return (f"t = {t}, {sched} schedule: ᾱ<sub>t</sub> = {a:.4f}, SNR = ᾱ<sub>t</sub>/"
            f"(1 − ᾱ<sub>t</sub>) = 10<sup>{_minus(f'{math.log10(a / (1 - a)):.2f}')}</sup>")


def _minus(number: str) -> str:
    """A number's sign as MathJax sets it in a power: a true minus."""
    return number.replace("-", "−")


def _solver_text(name, n, x, ref, means, ref_label):
    """The solver explorers' readout for ends x (N, 2) against ref (N, 2), in Python."""
    import torch

    d = (x.double() - ref).pow(2).sum(1).sqrt()  # (N,)
    flips = int((torch.cdist(x.double(), means).argmin(1)
                 != torch.cdist(ref, means).argmin(1)).sum())
    evals = (2 if name == "Heun" else 1) * n
    s = "s" if n > 1 else ""
    return (f"{name}, {n} step{s} ({evals} evaluation{'s' if evals > 1 else ''}): distance "
            f"to {ref_label}, RMS {d.pow(2).mean().sqrt().item():.2e}, median "
            f"{d.median().item():.2e}; {flips} of {len(x):,} points end nearest another mode")


@functools.cache
def _chapter13_toy():
    """Chapter 13's mixture, score, ODE, the 2,000 points of its table and its reference."""
    import torch

    from companion import sde
    from companion.page_explorers import chapter8_mixture
    from companion.toy import diffused_score

    mix, vp = chapter8_mixture(), sde.VPSDE()

    def score(x, t):
        return diffused_score(mix, x, vp.alpha_bar(t))

    ode = vp.ode_drift(score)
    x_T = torch.randn(2_000, 2, generator=torch.Generator().manual_seed(4),
                      dtype=torch.float64)
    ref = sde.heun(ode, x_T, torch.linspace(1, 0, 4001).tolist())
    return mix, vp, score, ode, x_T, ref


def _solvers_expected(state, values):
    import torch

    from companion import sde

    with one_thread():
        mix, vp, score, ode, x_T, ref = _chapter13_toy()  # as chapter 13 runs them

        def eps(x, t):
            return -vp.sigma(t) * score(x, t)

        n, name = values["n"], values["solver"]
        ts = torch.linspace(1, 0, n + 1).tolist()
        x = {"DDIM": lambda: sde.ddim(eps, vp, x_T, ts),
             "Euler": lambda: sde.euler(ode, x_T, ts),
             "Heun": lambda: sde.heun(ode, x_T, ts)}[name]()
    return _solver_text(name, n, x, ref, mix.means.to(torch.float64),
                        "the reference (Heun, 4,000 steps)")


@functools.cache
def _chapter15_toy():
    """Chapter 15's path, its x1 (N_TOY = 2,000 points of its cpu profile, seed 1) and the
    exact map of x1."""
    import torch

    from companion import fewstep
    from companion.page_explorers import chapter8_mixture

    mix = chapter8_mixture()
    path = fewstep.MixturePath(mix)
    x1 = torch.randn(2_000, 2, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    return mix, path, x1, fewstep.ode_map(path.velocity, x1)


def _fewstep_expected(state, values):
    import torch

    from companion import fewstep

    with one_thread():
        mix, path, x1, exact = _chapter15_toy()  # as chapter 15 runs them
        n, name = values["n"], values["solver"]
        x = fewstep.ode_sample(path.velocity, x1, n, solver=name.lower())
    return _solver_text(name, n, x, exact, mix.means.to(torch.float64), "the exact map")


def _latent_layers(state):
    """The decoder's layers as the page has them (half precision, widened to float32)."""
    import base64

    import torch

    def arr(p):
        return torch.from_numpy(np.frombuffer(base64.b64decode(p["f16"]), "<f2")
                                .astype("<f4").reshape(p["shape"]))

    return [(arr(layer["W"]), arr(layer["b"])) for layer in state["layers"]]


def _latent_expected(state, values):
    import torch

    from companion.page_explorers import latent_mean_image

    z = torch.tensor([values["z0"], values["z1"]])
    p = latent_mean_image(_latent_layers(state), z)
    return f"z = ({z[0]:.2f}, {z[1]:.2f}): mean pixel {p.mean():.4f}"


def _guidance_expected(state, values):
    """Chapter 16's guided sampler at w, as its cell runs it (the ci profile's 1,000
    samples), and the tilted density's moments by its quadrature, in Python."""
    import torch

    from companion import diffusion as dm
    from companion import score as S
    from companion.page_explorers import chapter8_mixture
    from companion.toy import diffused_log_posterior_grad, diffused_score

    w, Y, F64 = values["w"], state["y"], torch.float64
    with one_thread():
        mix, diff = chapter8_mixture(), dm.Diffusion(dm.linear_betas(1000))
        field = S.classifier_guided_score(
            lambda x, t: diffused_score(mix, x, diff.alphas_bar_[t]),
            lambda x, t: diffused_log_posterior_grad(mix, x, Y, diff.alphas_bar_[t]), w)
        x_T = torch.randn(1_000, 2, generator=torch.Generator().manual_seed(17), dtype=F64)
        x = diff.sample(lambda x, t: diff.eps_from_score(x, t, field(x, t)), (1_000, 2),
                        x_T=x_T.clone(), generator=torch.Generator().manual_seed(18),
                        quiet=True)
        u, u_dir = x @ mix.means[Y], mix.means[Y]
        fine = torch.linspace(-2.5, 2.5, 1001, dtype=F64)
        cell = torch.cartesian_prod(fine, fine)
        tilt = torch.softmax(mix.log_marginal(cell) + w * mix.log_posterior(cell)[:, Y], 0)
        u_tilt = (tilt * (cell @ u_dir)).sum().item()
        sd_tilt = (tilt * (cell @ u_dir - u_tilt).pow(2)).sum().sqrt().item()
        in_y = (mix.map_encode(x) == Y).double().mean().item()
    return (f"w = {w:g}: mean u {u.mean():.3f} (tilted {u_tilt:.3f}), sd {u.std():.3f} "
            f"({sd_tilt:.3f}); in class {Y}: {in_y:.3f}")


COMPLETIONS = ROOT / "notebooks" / "explorers" / "ch12-completions.npz"


def _completions_expected(state, values):
    """Chapter 12's stored table at (mask, method), in Python."""
    with np.load(COMPLETIONS) as f:
        ma = [str(m) for m in f["masks"]].index(values["mask"])
        me = [str(m) for m in f["methods"]].index(values["method"])
        acc, known, missing, spread, calls = f["numbers"][me, ma]
        # the page sets "14 x 14" as the text does, 14 × 14
        text = str(f["descriptions"][ma]).replace(" x ", " × ")
        shown = f["truth"].shape[0]
        n, k = int(f["n_digits"]), f["completions"].shape[2]
    return (f"test digit {values['digit']} of {shown} shown; over the table's {n:,} digits "
            f"× {k}, {text}, {values['method']}: judge accuracy {acc:.3f}, error on the "
            "missing "
            f"pixels {missing:.3f}, on the known {known:.3f}, spread {spread:.3f}; "
            f"{round(calls):,} network calls per image")


def _completions_positions():
    """Every (mask, method) of the stored run, the digit moving along."""
    if not COMPLETIONS.exists():
        return []
    with np.load(COMPLETIONS) as f:
        masks, methods = [str(m) for m in f["masks"]], [str(m) for m in f["methods"]]
        shown = f["truth"].shape[0]
    return [{"digit": 1 + (i + j) % shown, "mask": ma, "method": me}
            for i, ma in enumerate(masks) for j, me in enumerate(methods)]


CHAIN = ROOT / "notebooks" / "explorers" / "ch9-chain.npz"


def _chain_expected(state, values):
    """Chapter 9's stored chain: the step and the schedule's SNR there, in Python."""
    with np.load(CHAIN) as f:
        snr = f["snr"]
    t = values["t"]
    if t == 0:
        return "t = 0: the samples"
    return (f"t = {t} of {len(snr)}: SNR ᾱ<sub>t</sub>/(1 − ᾱ<sub>t</sub>) = "
            f"10<sup>{_minus(f'{math.log10(snr[t - 1]):.2f}')}</sup>")


def _chain_positions():
    """The first, a middle and the last kept step of the stored chain."""
    if not CHAIN.exists():
        return []
    with np.load(CHAIN) as f:
        t = f["t"].tolist()
    return [{"t": t[0]}, {"t": t[len(t) // 2]}, {"t": 0}]


TEXT_UNMASKING = ROOT / "notebooks" / "explorers" / "ch22-unmasking.npz"


def _text_unmasking_expected(state, values):
    """Chapter 22's stored sampler at step k of an order: the positions revealed by then
    and at that step, counted in Python from every step's states as the chapter stored
    them (the page has only each position's step)."""
    with np.load(TEXT_UNMASKING) as f:
        ids = f["ids"][[str(o) for o in f["orders"]].index(values["order"])]
    k, K, n = values["k"], len(ids) - 1, ids[0].size
    head = f"step {k} of {K} ({values['order']} order): "
    if k == 0:
        return head + f"all {n:,} positions masked"
    shown, now = int((ids[k] != -1).sum()), int(((ids[k] != -1) & (ids[k - 1] == -1)).sum())
    return head + f"{shown:,} of {n:,} positions revealed, {now:,} new"


def _text_unmasking_positions():
    """The first, a middle and the last step of the stored sampler, in both orders."""
    if not TEXT_UNMASKING.exists():
        return []
    with np.load(TEXT_UNMASKING) as f:
        K = f["ids"].shape[1] - 1
    return [{"k": k, "order": o} for o, ks in (("random", (0, K // 2, K)),
                                                ("confidence", (1, K // 3, K)))
            for k in ks]


def _bound_expected(state, values):
    """Chapter 18's T-step loss of a schedule on its Gaussian, and the exact one."""
    import torch

    from companion import vdm
    from companion.page_explorers import chapter18_schedules

    std = torch.logspace(-1.3, 0, 8, dtype=torch.float64)
    name, T = values["schedule"], values["T"]
    with one_thread():
        loss = vdm.gaussian_discrete_loss(chapter18_schedules()[name], T, std).item()
        exact = vdm.gaussian_continuous_loss(math.exp(10), math.exp(-6), std).item()
    return (f"{name}, T = {T}: ℒ<sub>T</sub> = {loss:.4f} nats, against ℒ<sub>∞</sub> = "
            f"{exact:.4f} (exact, the same for the three shapes: they share their ends)")


def _straight_expected(state, values):
    """Chapter 19's toy quantizer at z_e, its two losses and two gradients, in Python."""
    import torch

    from companion.page_explorers import chapter19_toy

    quantizer, loss = chapter19_toy()
    z = torch.tensor([[values["z1"], values["z2"]]], dtype=torch.float64,
                     requires_grad=True)
    out = quantizer(z.view(1, 2, 1, 1))
    (g_st,) = torch.autograd.grad(loss(out.z_q.view(1, 2)).sum(), z)
    (g_ze,) = torch.autograd.grad(loss(z).sum(), z)
    k = out.indices.item()
    e = quantizer.codebook[k].tolist()
    with torch.no_grad():
        l_q, l_e = loss(out.z_q.view(1, 2)).item(), loss(z).item()
    (a, b), (c, d), (p, q) = z[0].tolist(), g_st[0].tolist(), g_ze[0].tolist()
    return (f"z<sub>e</sub> = ({a:.1f}, {b:.1f}): code {k}, ({e[0]:.3g}, {e[1]:.3g}); "
            f"ℒ(z<sub>q</sub>) = {l_q:.4f}, ℒ(z<sub>e</sub>) = {l_e:.4f}; straight-through "
            f"gradient ({c:.3f}, {d:.3f}), gradient at z<sub>e</sub> ({p:.3f}, {q:.3f}): "
            f"{math.hypot(p - c, q - d):.3f} apart, "
            f"{math.hypot(a - e[0], b - e[1]):.3f} from the code")


def _unmasking_expected(state, values):
    """Chapter 14's sampler, its exact law on the toy, in Python."""
    from companion import masked as mk
    from companion.page_explorers import chapter14_toy

    toy, K, order = chapter14_toy(), values["steps"], values["order"]
    with one_thread():
        q = mk.sampler_law(toy.denoiser, toy.D, K, order=order)
    kl = (toy.probs * (toy.probs.log() - q.log())).sum().item()
    revealing = ", ".join(str(c) for c in mk.reveal_counts(toy.D, K))
    return (f"{order} order, K = {K} (revealing {revealing}): KL(p‖q) = {kl:.3f} nats; "
            f"entropy of q {-(q * q.log()).sum().item():.3f} nats (the data's "
            f"{toy.entropy():.3f})")


def _grid_expected(state, values):
    """Chapter 17's solver on the rho grid, from the chapter's 256 points, in Python."""
    import torch

    from companion import edm, sde
    from companion.page_explorers import chapter17_gaussian

    with one_thread():
        mean, std = chapter17_gaussian()
        x = 80 * torch.randn(256, 8, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(5))
        n, rho, name = values["n"], values["rho"], values["solver"]
        grid = edm.rho_grid(n, rho=rho)
        fn = {"Euler": edm.euler, "Heun": edm.heun,
              "DPM-Solver++(2M)": edm.dpm_solver_pp_2m}[name]
        counted = sde.Counted(edm.gaussian_denoiser(mean, std))
        out = fn(counted, x, grid)
        err = (out - edm.gaussian_flow(mean, std, x, 80.0, 0.0)).pow(2).sum(1).mean().sqrt()
    s = "s" if n > 1 else ""
    return (f"{name}, ρ = {rho:g}, {n} step{s} ({counted.calls} evaluations): RMS error at "
            f"σ = 0 {err.item():.2e}; {int((grid[:-1] < 0.1).sum())} of {n} levels below "
            "σ = 0.1")


# Chapter 20's explorer looks up the numbers its stored run measured (the judge's features of
# corrupted digits, not recomputed here): the page must show each one where Python puts it.
SWEEP = ROOT / "notebooks" / "explorers" / "ch20-corruptions.npz"


def _corruption_expected(state, values):
    from companion.page_explorers import CORRUPTION_MEASURES

    with np.load(SWEEP) as f:
        c = [str(n) for n in f["names"]].index(values["corruption"])
        unit, s = str(f["units"][c]), f["strength"][c, values["level"]]
        m = f["measures"][c, values["level"]]
    shown = ", ".join(f"{n} {v:.1f}" if j == 0 else f"{n} {v:.3g}" if j == 1
                      else f"{n} {v:.3f}" for j, (n, v) in enumerate(zip(
                          CORRUPTION_MEASURES, m, strict=True)))
    return f"{values['corruption']} ({unit} {s:g}): {shown}"


def _every_corruption_position():
    """Every (corruption, level) of the stored sweep: 45 readouts, each a lookup."""
    if not SWEEP.exists():
        return []
    with np.load(SWEEP) as f:
        return [{"corruption": str(n), "level": level} for n in f["names"]
                for level in range(f["strength"].shape[1])]


# name: (the expected readout, positions sampled: {control: value})
EXPECTED = {
    "kl": (_kl_expected, [{"mu": 2.5, "sigma": 0.7}, {"mu": -1.2, "sigma": 3.0},
                          {"mu": 0.0, "sigma": 2.6}]),
    "elbo": (_elbo_expected, [{"mean": 1.0, "std": 0.35}, {"mean": -2.0, "std": 0.5},
                              {"mean": 0.0, "std": 1.0}]),
    "pinned": (_pinned_expected, [{"t": 0.6, "s": 0.9}, {"t": 0.1, "s": 0.15},
                                  {"t": 1.0, "s": 1.5}]),
    "latent": (_latent_expected, [{"z0": 0.0, "z1": 0.0}, {"z0": -2.5, "z1": 1.3},
                                  {"z0": 2.0, "z1": -0.75}]),
    "forward": (_forward_expected, [{"t": 1, "schedule": "linear"},
                                    {"t": 500, "schedule": "cosine"},
                                    {"t": 1000, "schedule": "linear"}]),
    "solvers": (_solvers_expected, [{"n": 5, "solver": "DDIM"}, {"n": 20, "solver": "Heun"},
                                    {"n": 50, "solver": "Euler"}]),
    "fewstep": (_fewstep_expected, [{"n": 1, "solver": "Euler"}, {"n": 8, "solver": "Heun"},
                                    {"n": 32, "solver": "Euler"}, {"n": 64, "solver": "Euler"}]),
    "corruption": (_corruption_expected, _every_corruption_position()),
    "chain": (_chain_expected, _chain_positions()),
    "textunmasking": (_text_unmasking_expected, _text_unmasking_positions()),
    "straight": (_straight_expected, [{"z1": 0.9, "z2": 0.4}, {"z1": -2.5, "z2": 2.5},
                                      {"z1": 0.0, "z2": -1.2}, {"z1": 0.7, "z2": 0.0}]),
    "bound": (_bound_expected, [{"T": 1, "schedule": "linear"},
                                {"T": 4, "schedule": "cosine"},
                                {"T": 1024, "schedule": "learned, random"}]),
    "completions": (_completions_expected, _completions_positions()),
    "unmasking": (_unmasking_expected, [{"steps": 1, "order": "random"},
                                        {"steps": 9, "order": "random"},
                                        {"steps": 5, "order": "confidence"}]),
    "guidance": (_guidance_expected, [{"w": 0.0}, {"w": 1.5}, {"w": 8.0}]),
    "grid": (_grid_expected, [{"rho": 7, "n": 10, "solver": "Heun"},
                              {"rho": 1, "n": 2, "solver": "Euler"},
                              {"rho": 12, "n": 32, "solver": "DPM-Solver++(2M)"},
                              {"rho": 3, "n": 5, "solver": "Heun"}]),
}


@pytest.mark.parametrize("page, idx, name", EXPLORER_CASES)
def test_explorer_shows_pythons_numbers(browser, server, planted_server, page, idx, name):
    """At sampled positions the numbers on the page are the ones companion computes there
    (the notebook widget's own functions, as the chapter calls them)."""
    expected, positions = EXPECTED[name]
    server = planted_server if page == PLANTED_LATENT else server
    state = open_explorer(browser, server + page, idx)
    controls = {c["name"]: c for c in controls_of(state)}
    for values in positions:
        for key, value in values.items():
            set_control(browser, idx, controls[key], value)
        assert readout(browser, idx) == expected(state, values), f"{page} at {values}"


def test_forward_explorer_draws_q_sample(browser, server):
    """Chapter 8's explorer computes x_t in the page: the points it draws are
    Diffusion.q_sample of its x_0 and noise (float32 in the page)."""
    import base64

    import torch

    from companion import diffusion as dm

    page, idx = next((p, n.index("forward")) for p, n in EXPLORERS.items() if "forward" in n)
    state = open_explorer(browser, server + page, idx)
    arr = {k: torch.from_numpy(np.frombuffer(base64.b64decode(state[k]["f32"]), "<f4")
                               .astype(float).reshape(state[k]["shape"]))
           for k in ("x0", "eps")}
    controls = {c["name"]: c for c in controls_of(state)}
    for t, sched in [(37, "linear"), (640, "cosine")]:
        set_control(browser, idx, controls["t"], t)
        set_control(browser, idx, controls["schedule"], sched)
        drawn = torch.tensor(browser.evaluate(js("Array.from(ROOT.bxPoints)", idx)),
                             dtype=torch.float64)
        betas = {"linear": dm.linear_betas, "cosine": dm.cosine_betas}[sched](1000)
        want = dm.Diffusion(betas).q_sample(arr["x0"], t, arr["eps"])  # step t of 1..T
        assert torch.allclose(drawn.reshape(want.shape), want, atol=1e-12), (t, sched)


MARKS_IN_FRAMES = """Array.from(ROOT.querySelectorAll('svg.bx-figure circle')).map(c => {
  let g = c.parentNode;
  while (g && !g.querySelector(':scope > rect.bx-frame')) g = g.parentNode;
  if (!g) return null;  // a legend's sample marker, outside any axes
  const r = g.querySelector(':scope > rect.bx-frame');
  return [+c.getAttribute('cx'), +c.getAttribute('cy'), +r.getAttribute('x'),
          +r.getAttribute('y'), +r.getAttribute('width'), +r.getAttribute('height')];
}).filter(v => v)"""
LEGEND_OVER_BARS = """Array.from(ROOT.querySelectorAll('rect.bx-legend-box')).flatMap(l => {
  const [lx, ly, lw, lh] = ['x', 'y', 'width', 'height'].map(a => +l.getAttribute(a));
  return Array.from(l.parentNode.parentNode.querySelectorAll('rect[opacity]'))
    .filter(b => { const [bx, by, bw] = ['x', 'y', 'width'].map(a => +b.getAttribute(a));
                   return bx < lx + lw && bx + bw > lx && by < ly + lh; }).length; })"""


def test_forward_explorer_keeps_its_markers_on_their_axes(browser, server):
    """Chapter 8: at every step, for both schedules, the marker on the log-SNR curve lies
    inside its axes (the cosine schedule's log10 SNR ends near -8.6)."""
    page, idx = next((p, n.index("forward")) for p, n in EXPLORERS.items() if "forward" in n)
    state = open_explorer(browser, server + page, idx)
    controls = {c["name"]: c for c in controls_of(state)}
    for t, sched in [(1, "linear"), (1000, "linear"), (999, "cosine"), (1000, "cosine")]:
        set_control(browser, idx, controls["t"], t)
        set_control(browser, idx, controls["schedule"], sched)
        marks = browser.evaluate(js(MARKS_IN_FRAMES, idx))
        assert len(marks) == 2, (t, sched, marks)  # one on each curve
        for cx, cy, x, y, w, h in marks:
            assert x - 0.5 <= cx <= x + w + 0.5 and y - 0.5 <= cy <= y + h + 0.5, (t, sched)


def test_pinned_explorers_legend_leaves_the_histogram_visible(browser, server):
    """Chapter 5: the legend sits in headroom above the histogram's tallest bar, at the
    slider's ends and middle."""
    page, idx = next((p, n.index("pinned")) for p, n in EXPLORERS.items() if "pinned" in n)
    state = open_explorer(browser, server + page, idx)
    controls = {c["name"]: c for c in controls_of(state)}
    for pick in (0, len(controls["s"]["values"]) // 2, -1):
        for t in (controls["t"]["values"][0], controls["t"]["values"][-1]):
            set_control(browser, idx, controls["t"], t)
            set_control(browser, idx, controls["s"], controls["s"]["values"][pick])
            assert browser.evaluate(js(LEGEND_OVER_BARS, idx)) == [0], (t, pick)


def test_latent_explorer_decodes_as_the_vae(browser, planted_server):
    """The latent explorer's image is VAE.mean_image at the sliders' point: exactly (float32
    rounding) for the half-precision weights the page carries, and within 0.01 a pixel of
    the full-precision model; its page weight is the decoder's 0.8 MB in base64."""
    import torch

    from companion.models.vae import VAE

    torch.manual_seed(0)
    vae = VAE(latent_dim=2, hidden=(512,))  # as planted_server saved it
    state = open_explorer(browser, planted_server + PLANTED_LATENT, 0)
    half = VAE(latent_dim=2, hidden=(512,))
    linears = [m for m in half.decoder.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, (W, b) in zip(linears, _latent_layers(state), strict=True):
            lin.weight.copy_(W)
            lin.bias.copy_(b)
    controls = {c["name"]: c for c in state["controls"]}
    for z in [(0.0, 0.0), (-2.5, 2.5), (1.35, -0.4)]:
        set_control(browser, 0, controls["z0"], z[0])
        set_control(browser, 0, controls["z1"], z[1])
        drawn = torch.tensor(browser.evaluate(js("Array.from(ROOT.bxImage)", 0)))
        with torch.no_grad():
            want = half.mean_image(torch.tensor([z])).flatten()
            full = vae.mean_image(torch.tensor([z])).flatten()
        assert (drawn - want).abs().max() < 1e-5, z
        assert (drawn - full).abs().max() < 0.01, z
    size = len(_extension().explorer_html(
        "latent", json.dumps(state, separators=(",", ":"))).encode())
    assert size <= EXPLORER_BUDGET, size


@pytest.mark.parametrize("page", list(EXPLORERS))
def test_explorer_page_weight(site, page):
    """A chapter's explorers add at most EXPLORER_BUDGET bytes to its page (their states,
    the script and the style)."""
    html = (site / page).read_text()
    states = re.findall(r'<script type="application/json" class="book-explorer-state">'
                        r"(.*?)</script>", html, re.S)
    assert len(states) == len(EXPLORERS[page])
    assets = sum((site / "_static" / f).stat().st_size
                 for f in ("book-explorers.js", "book-explorers.css"))
    weight = sum(len(s.encode()) for s in states) + assets
    assert weight <= EXPLORER_BUDGET, f"{page}: explorers add {weight:,} bytes"


@pytest.mark.parametrize("page", list(EXPLORERS))
def test_explorer_without_javascript_shows_the_snapshot(browser, server, page):
    """With JavaScript off the explorer stays hidden (no dead controls), one line in its
    place says that a live version needs JavaScript, and the static view is what the reader
    sees: a figure or printed output in the explorer's cell or the next code cell (the
    chapters' snapshot figures, after a sentence that introduces them)."""
    set_width(browser, DESKTOP)
    browser.call("Emulation.setScriptExecutionDisabled", session=True, value=True)
    try:
        browser.goto(server + page)
        found = browser.evaluate("""(() => [...document.querySelectorAll('.book-explorer')]
          .map(e => { const cell = e.closest('div.cell');
            let next = cell.nextElementSibling;  // the next code cell, past a paragraph
            while (next && !next.matches('div.cell')) next = next.nextElementSibling;
            const shows = c => !!c && [...c.querySelectorAll(
              '.cell_output img, .cell_output pre, .cell_output table')]
              .some(o => o.checkVisibility() && !o.closest('.book-explorer')
                && (o.tagName !== 'IMG' || (o.complete && o.naturalWidth > 0)));
            const line = e.parentElement.querySelector('.bx-noscript');
            return {hidden: !e.checkVisibility(), controls: e.querySelectorAll('input').length,
                    snapshot: shows(cell) || shows(next),
                    line: !!line && line.checkVisibility() && line.textContent}; }))()""")
    finally:
        browser.call("Emulation.setScriptExecutionDisabled", session=True, value=False)
    browser.goto(server + page)
    seen_with_js = browser.evaluate(
        "[...document.querySelectorAll('.bx-noscript')].filter(e => e.checkVisibility())"
        ".length")
    assert len(found) == len(EXPLORERS[page])
    for f in found:
        assert f["hidden"] and not f["controls"], f"{page}: explorer visible without JS: {f}"
        assert f["snapshot"], f"{page}: no static figure or output beside the explorer"
        assert f["line"] and "JavaScript" in f["line"], f"{page}: no line on the live version"
    assert seen_with_js == 0, f"{page}: the JavaScript-off line shows with JavaScript on"
