"""The built book as a reader sees it: every page opened offline in headless Chromium.

The book is built once (-W -n, into a temporary folder) and served on 127.0.0.1; Chromium
resolves no other host name, so anything that needs a CDN shows up. Each page must have:
every equation typeset (MathJax comes from the local copy that `make mathjax` installs)
and no LaTeX left as raw text; every image and same-site resource loaded; every internal
link and anchor pointing at something that exists; no Python traceback in an output; and
no empty widget area without a static figure beside it. Every chapter is also rendered in
light and dark mode, and a sample of its equations is cropped from the screenshots and
checked for contrast against the page background (pixels, not the DOM). Screenshots are
kept in $BOOK_SCREENSHOTS (default: _build/screenshots) for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import io
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

from companion import colab

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("BOOK_SCREENSHOTS", ROOT / "_build" / "screenshots"))
MIN_CONTRAST = 3.0      # WCAG's minimum for large text and graphics
EQUATIONS_PER_PAGE = 8  # display and inline equations cropped per chapter and mode


def toc_pages() -> list[str]:
    """The html paths of the pages in _toc.yml, root first (collected before any build)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return [f"{Path(f).with_suffix('').as_posix()}.html" for f in files]


PAGES = toc_pages() + ["genindex.html", "search.html"]
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]


# --- the site ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(built_book) -> Path:
    """The book built once per run (tests/conftest.py), as `make book` builds it."""
    return built_book


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


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


# Scroll the equation into the viewport and wait for two painted frames before measuring:
# headless Chromium sometimes leaves a region far outside the viewport unpainted.
REMEASURE = """(async () => { const el = document.querySelector('[data-eq-check="ID"]');
  el.scrollIntoView({block: 'center'});
  for (let i = 0; i < 2; i++) await new Promise(r => requestAnimationFrame(() => r()));
  const r = el.getBoundingClientRect();
  return {x: r.left + scrollX, y: r.top + scrollY}; })()"""


class PageReport(dict):
    """What INSPECT found on one page, plus the network failures seen while loading it."""


_VISITS: dict[tuple[str, str], PageReport] = {}


def visit(browser, server: str, page: str, mode: str = "light") -> PageReport:
    """Load `page` in `mode` (light or dark) once per session and inspect it."""
    key = (page, mode)
    if key in _VISITS:
        return _VISITS[key]
    # The theme reads its mode from localStorage before drawing (pydata-sphinx-theme).
    script = browser.call("Page.addScriptToEvaluateOnNewDocument", session=True,
                          source=f"localStorage.setItem('mode', '{mode}');"
                                 f"localStorage.setItem('theme', '{mode}');")["identifier"]
    try:
        events = browser.goto(server + page)
        report = PageReport(browser.evaluate(INSPECT, timeout=60))
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
    report["local_failures"] = [(u, why) for u, why in failed if u.startswith(server)]
    report["external_blocked"] = sorted({urlsplit(u).netloc for u, _ in failed
                                         if not u.startswith(server)})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = page.replace("/", "__").removesuffix(".html")
    tiles = browser.full_page()
    for i, (_, png) in enumerate(tiles):
        (SCREENSHOTS / f"{name}-{mode}{f'-{i + 1}' if i else ''}.png").write_bytes(png)
    if page in CHAPTERS:
        report["crops"] = crop_equations(tiles, report["equations"])
        for i, (box, image) in enumerate(report["crops"]):
            # Now and then a capture misses a glyph that is drawn a moment later, or a
            # region of a tall capture comes out black (headless Chromium). Measure that
            # equation again and capture it alone, a few times: one that is truly
            # unreadable stays so.
            for attempt in range(6):
                if not problem(image, mode):
                    break
                time.sleep(0.2 * (attempt + 1))
                box = box | browser.evaluate(REMEASURE.replace("ID", str(box["id"])))
                png = browser.screenshot(clip=_padded(box))
                image = Image.open(io.BytesIO(png)).convert("RGB")
            report["crops"][i] = (box, image)
    _VISITS[key] = report
    return report


def _padded(box: dict, pad: int = 4) -> dict:
    return {"x": max(box["x"] - pad, 0), "y": max(box["y"] - pad, 0),
            "width": box["width"] + 2 * pad, "height": box["height"] + 2 * pad}


def crop_equations(tiles: list[tuple[int, bytes]], boxes: list[dict], pad: int = 4):
    """(box, image) for each equation box, cut with `pad` pixels of margin from the
    full-page screenshot tiles (a box that straddles two tiles is left out)."""
    images = [(top, Image.open(io.BytesIO(png)).convert("RGB")) for top, png in tiles]
    crops = []
    for box in boxes:
        x0, y0 = int(box["x"]) - pad, int(box["y"]) - pad
        x1, y1 = int(box["x"] + box["width"]) + pad, int(box["y"] + box["height"]) + pad
        for top, im in images:
            if top <= y0 and y1 <= top + im.height and x0 >= 0 and x1 <= im.width:
                crops.append((box, im.crop((x0, y0 - top, x1, y1 - top))))
                break
    return crops


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


def broken_links(site: Path, server: str, links: list[str]) -> list[str]:
    """Same-site links whose file or #anchor does not exist in the built site."""
    bad = []
    for link in links:
        if not link.startswith(server):
            continue
        parts = urlsplit(link)
        target = site / unquote(parts.path).lstrip("/")
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
