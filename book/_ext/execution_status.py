"""What each notebook costs to run: measured when its outputs were made, shown in the book.

Two measurements, both stored in the notebook next to the outputs they describe:
- every code cell carries nbclient's own timestamps (cell metadata `execution`), written by
  `jupyter execute`, whoever ran it;
- `make outputs` runs each notebook through tools/run_notebooks.py (`python
  tools/run_notebooks.py execute NB...`), which times the whole `jupyter execute` (kernel
  start and imports included) and stores that wall time in the notebook's metadata
  `book.execution`.
The wall time is shown when it belongs to the stored outputs (it ended within a minute of
the last cell); otherwise the span of the cells is shown, and the page says which.

The profile and device come from the line that `companion.setup()` prints in every notebook.
On a GPU the run also records torch's peak GPU memory (torch.cuda.max_memory_allocated in the
kernel, which `companion.setup()` writes to $BOOK_PEAK_LOG after every cell), and
`tools/run_notebooks.py t4 NB...` runs a copy of each notebook under the T4 emulation
(BOOK_T4=1: fp16, 15 GB) and stores only its peak memory and time (metadata `book.t4`).
`execute --copy` runs copies in a temporary folder and stores nothing (a dry run);
`--into FOLDER` keeps each run in FOLDER/notebooks/ instead of in place (outputs_device.sh).

As a Sphinx extension (`sphinx.local_extensions` in _config.yml) it provides the
`execution-status` directive used by book/status.md: the table is made from the notebooks
at every build, so it cannot disagree with the outputs the book shows. A chapter in the
table of contents without complete measurements is a build warning (an error with -W).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP_LINE = re.compile(r"profile=(?P<profile>\S+) device=(?P<device>.+?) "
                        r"(?:precision=(?P<precision>\S+) )?"
                        r"torch=(?P<torch>\S+) python=(?P<python>\S+)")
WALL_SLACK_S = 60  # the recorded wall time must end this close to the last cell's reply


@dataclass
class NotebookStatus:
    """The measured cost of one notebook's stored outputs.

    seconds:        wall time of `jupyter execute` ("wall"), or the span from the first
                    cell's start to the last cell's reply ("cells") when no wall time
                    belongs to these outputs.
    slowest_cell:   (seconds, index among code cells) of the most expensive cell.
    problems:       what keeps the measurement from being complete (empty when fine).
    """

    path: Path
    title: str = ""
    profile: str = "?"
    device: str = "?"
    torch: str = "?"
    executed: datetime | None = None
    seconds: float | None = None
    source: str = ""
    slowest_cell: tuple[float, int] | None = None
    cpus: int | None = None
    checkpoints: str = ""
    loaded: list[str] = field(default_factory=list)
    loaded_train_seconds: float | None = None  # what training the loaded models took
    versions: dict[str, str] = field(default_factory=dict)
    cuda_peak_mib: float | None = None  # torch.cuda.max_memory_allocated of the run
    cuda_reserved_mib: float | None = None  # torch.cuda.max_memory_reserved of the run
    device_peak_mib: float | None = None  # the whole device's, as nvidia-smi read it
    t4: dict | None = None  # the T4-emulated run's record (metadata book.t4), if any
    problems: list[str] = field(default_factory=list)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def notebook_status(path: Path) -> NotebookStatus:
    """Read the measurements stored in notebook `path` (.ipynb)."""
    path = Path(path)
    nb = json.loads(path.read_text())
    st = NotebookStatus(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            m = re.search(r"^#\s+(.+)$", src, re.M)
            if m:
                st.title = m.group(1).strip()
                break

    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    spans, missing = [], []
    for i, cell in enumerate(code):
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            spans.append((_time(ex["iopub.execute_input"]), _time(ex["shell.execute_reply"]), i))
        else:
            missing.append(i + 1)
        for out in cell.get("outputs", []):
            m = SETUP_LINE.search(_text(out))
            if m and st.profile == "?":
                st.profile, st.device, st.torch = m["profile"], m["device"], m["torch"]
    if not code:
        st.problems.append("no code cells")
        return st
    if missing:
        st.problems.append(f"code cells {missing} have no execution timestamps: the stored "
                           "outputs were not made by one `jupyter execute` run (run `make "
                           "outputs`)")
    if st.profile == "?":
        st.problems.append("no `profile=... device=...` line in the outputs (the setup cell "
                           "must call companion.setup())")
    if not spans:
        return st
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    if any(b[0] < a[1] - timedelta(seconds=1) for a, b in zip(spans[:-1], spans[1:],
                                                                 strict=True)):
        st.problems.append("cell timestamps are out of order: the outputs come from more "
                           "than one run (run `make outputs`)")
    st.executed = first
    st.seconds, st.source = (last - first).total_seconds(), "cells"
    slow = max(spans, key=lambda s: s[1] - s[0])
    st.slowest_cell = ((slow[1] - slow[0]).total_seconds(), slow[2])
    st.t4 = nb.get("metadata", {}).get("book", {}).get("t4")
    rec = nb.get("metadata", {}).get("book", {}).get("execution")
    if rec:
        finished = _time(rec["finished"])
        belongs = abs((finished - last).total_seconds()) <= WALL_SLACK_S
        if belongs and rec["seconds"] + 0.5 >= st.seconds:
            st.seconds, st.source = float(rec["seconds"]), "wall"
            st.cpus, st.checkpoints = rec.get("cpus"), rec.get("checkpoints", "")
            st.loaded = list(rec.get("loaded", []))
            st.loaded_train_seconds = rec.get("loaded_train_seconds")
            st.versions = dict(rec.get("versions", {}))
            peak = rec.get("cuda_peak_mib") or {}
            st.cuda_peak_mib = peak.get("allocated_mib")
            st.cuda_reserved_mib = peak.get("reserved_mib")
            st.device_peak_mib = rec.get("gpu_memory_peak_mib")
    return st


# --- the table ------------------------------------------------------------------------------
def format_seconds(s: float | None) -> str:
    if s is None:
        return "not measured"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks named in _toc.yml, in book order (as .ipynb paths)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [root / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]


def chapter_numbers(root: Path = ROOT) -> dict[str, int]:
    """{notebook stem: the chapter number the book shows}: its place among the TOC's
    notebooks, as Sphinx numbers them (a file's NN differs where a chapter is still to
    come: 22_diffusion_language is chapter 21 while 21 is missing)."""
    return {p.stem: i for i, p in enumerate(toc_notebooks(root), 1)}


CHECKPOINT = re.compile(r"^ch(?P<n>\d+)-.*-(?P<profile>[a-z]+)\.pt$")


def mismatched(st: NotebookStatus, statuses: list[NotebookStatus]) -> list[tuple]:
    """(chapter, checkpoint profile, that chapter's stored profile) for every model `st`
    loaded from a chapter whose stored outputs come from another profile."""
    stored = {int(m[1]): s.profile for s in statuses
              if (m := re.match(r"(\d+)_", s.path.name))}
    out = []
    for name in st.loaded:
        m = CHECKPOINT.match(name)
        if m and int(m["n"]) in stored and stored[int(m["n"])] != m["profile"]:
            out.append((int(m["n"]), m["profile"], stored[int(m["n"])]))
    return sorted(set(out))


def short_device(device: str) -> str:
    """'cuda (NVIDIA H100 80GB HBM3)' -> 'H100 80GB HBM3'; 'cpu' -> 'CPU' (a narrow column)."""
    m = re.fullmatch(r"cuda \((?:NVIDIA )?(.+)\)", device)
    return m[1] if m else device.upper() if device == "cpu" else device


COLUMNS = ["Chapter", "Profile", "Device", "Software", "Time to run", "Slowest cell",
           "Executed"]
UNBROKEN = ["Executed"]  # not "2026-11-/22"
PHONE_PX = 720  # narrower than this, each chapter's row is a card of labelled lines
NBSP = "\u00a0"


def unbroken(text: str) -> str:
    """`text` with non-breaking spaces: a cell of the table breaks between such items
    ("torch 2.14.1," / "numpy 2.4.6"), never inside one ("53" / "s", "numpy" / "2.4.6").
    The 688-px column holds the seven columns at 1280 px only if cells may break there."""
    return text.replace(" ", NBSP)


def device_cell(st: NotebookStatus) -> str:
    """'H100 80GB HBM3, 16 cores', breakable only after the model and after the comma."""
    model, _, rest = short_device(st.device).partition(" ")
    cell = model + (f" {unbroken(rest)}" if rest else "")
    return cell + (f", {unbroken(f'{st.cpus} cores')}" if st.cpus else "")


def gib(mib: float) -> str:
    return unbroken(f"{mib / 1024:.1f} GiB")


def memory_cell(st: NotebookStatus) -> str:
    """'peak 61.0 / 68.4 GiB; T4 12.4 GiB': torch's peak GPU memory in the stored run,
    allocated / reserved, and under the T4 emulation where it ran (or that it did not fit);
    for a run that recorded only nvidia-smi's reading of the whole device, 'device 60.8 GiB';
    '' on a CPU. Part of the Device cell: an eighth column would not fit the 688-px column
    (88 px over, measured with test_browser), and the memory belongs to the device."""
    parts = []
    if st.cuda_peak_mib is not None:
        peak = unbroken(f"peak {st.cuda_peak_mib / 1024:.1f}")
        # may break after the slash: 'peak 3.5 /' over '7.6 GiB' (the column is narrow)
        parts.append(f"{peak} GiB" if st.cuda_reserved_mib is None else
                     f"{peak} / {gib(st.cuda_reserved_mib)}")
    elif st.device_peak_mib is not None:
        parts.append(f"device {gib(st.device_peak_mib)}")
    if st.t4:
        peak = (st.t4.get("cuda_peak_mib") or {}).get("allocated_mib")
        if st.t4.get("ran_through"):
            parts.append(f"T4 {gib(peak)}" if peak is not None else "")
        else:
            cap = st.t4.get("cap_bytes", 15e9) / 1e9
            parts.append(f"T4 over {unbroken(f'{cap:.0f} GB')}")
    return "; ".join(p for p in parts if p)


def table_css() -> str:
    """The status table's layout: 0.8em (as tables in outputs), dates never broken; on a
    phone each row a card with the column names as labels (made from COLUMNS, so the
    labels cannot disagree with the header)."""
    t = ".execution-status table"
    nowrap = ", ".join(f"{t} td:nth-child({COLUMNS.index(c) + 1})" for c in UNBROKEN)
    labels = "\n".join(
        f'  {t} td:nth-child({i + 1})::before {{ content: "{c}: "; font-weight: 600; }}'
        for i, c in enumerate(COLUMNS) if i > 0)
    return f"""{t} {{ font-size: 0.8em; }}
{t} th, {t} td {{ padding: 0.3rem 0.3rem; }}
{nowrap} {{ white-space: nowrap; }}
@media (max-width: {PHONE_PX}px) {{
  {t}, {t} tbody, {t} tr, {t} td {{ display: block; width: 100%; }}
  {t} thead {{ display: none; }}
  {t} tr {{ padding: 0.4rem 0; border-bottom: 1px solid var(--pst-color-border); }}
  {t} td {{ border: none; padding: 0.05rem 0.5rem; white-space: normal; }}
  {t} td p {{ display: inline; }}
  {t} td:nth-child(1) {{ font-weight: 600; }}
  {t} td:has(> p:empty) {{ display: none; }}
{labels}
}}
"""


def table(statuses: list[NotebookStatus], root: Path = ROOT) -> list[str]:
    """The status table as MyST markdown lines."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for st in statuses:
        doc = st.path.relative_to(root).with_suffix("").as_posix()
        run = unbroken(format_seconds(st.seconds))
        if st.seconds is not None and st.source == "cells":
            run += " †"
        elif st.checkpoints == "reused":
            run += " ‡"
            if st.loaded_train_seconds is not None:
                fresh = unbroken(format_seconds(st.seconds + st.loaded_train_seconds))
                run += f" ({fresh} from an empty cache)"
        if mismatched(st, statuses):
            run += " §"
        slow = (f"{unbroken(format_seconds(st.slowest_cell[0]))}, "
                f"{unbroken(f'cell {st.slowest_cell[1] + 1}')}" if st.slowest_cell else "")
        device = "; ".join(c for c in (device_cell(st), memory_cell(st)) if c)
        when = st.executed.strftime("%Y-%m-%d") if st.executed else ""
        # torch from the kernel's own setup line, the rest as recorded by `make outputs`
        versions = ({"torch": st.torch} if st.torch != "?" else {}) | {
            k: v for k, v in st.versions.items() if k != "torch" or st.torch == "?"}
        software = ", ".join(unbroken(f"{k} {v.split('+')[0]}") for k, v in versions.items())
        lines.append(f"| {{doc}}`/{doc}` | `{st.profile}` | {device} | {software} | {run} | "
                     f"{slow} | {when} |")
    known = [s.seconds for s in statuses if s.seconds is not None]
    if len(statuses) > 1 and known:
        lines.append(f"| **All chapters** | | | | **{unbroken(format_seconds(sum(known)))}** | "
                     "| |")
    if any(s.source == "cells" for s in statuses):
        lines += ["", "† Outputs not made by `make outputs`: the time from the first cell's "
                  "start to the last cell's end, without the kernel's start."]
    for st in statuses:
        for n, prof, stored in mismatched(st, statuses):
            lines += ["", f"§ {st.title or st.path.stem} loads a `{prof}` model of chapter {n}, "
                      f"whose stored outputs are from the `{stored}` profile: the two pages "
                      "show different models under one name."]
    if any(s.cuda_peak_mib is not None or s.t4 or s.device_peak_mib is not None
           for s in statuses):
        lines += ["", "Peak: the most GPU memory the chapter's tensors held at once "
                  "(`torch.cuda.max_memory_allocated`) / the most torch's caching allocator "
                  "held (`torch.cuda.max_memory_reserved`). Device: an older run's record, "
                  "the whole device's memory in use as `nvidia-smi` read it, which counts "
                  "what the allocator keeps after use. T4: the peak with the chapter run "
                  "again as on Colab's T4, emulated on the same GPU (`BOOK_T4=1`: fp16 with a "
                  "gradient scaler, no TF32, the process capped at 15 GB); a T4's speed is "
                  "not emulated. What each chapter needs on a T4, estimated without a GPU, is "
                  "on the page Running the notebooks."]
    if any(s.source == "wall" and s.checkpoints == "reused" for s in statuses):
        lines += ["", "‡ Loaded at least one model that an earlier chapter or run had trained "
                  "and saved, instead of training it. In brackets, where the saved models "
                  "record it: the time plus their training time, what the run costs from an "
                  "empty cache on the machine that trained them."]
    return lines


# --- Sphinx -----------------------------------------------------------------------------------
def setup(app):
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective

    logger = logging.getLogger(__name__)

    class ExecutionStatus(SphinxDirective):
        """The table of every chapter's measured run time, profile and device."""

        def run(self):
            root = Path(self.env.srcdir)
            statuses = []
            for path in toc_notebooks(root):
                self.env.note_dependency(str(path))
                if not path.exists():
                    logger.warning(f"execution-status: {path} does not exist",
                                   location=self.get_location())
                    continue
                st = notebook_status(path)
                for problem in st.problems:
                    logger.warning(f"execution-status: {path.relative_to(root)}: {problem}",
                                   location=self.get_location())
                statuses.append(st)
            container = nodes.container(classes=["execution-status"])
            container += nodes.raw("", f"<style>\n{table_css()}</style>\n", format="html")
            self.state.nested_parse(StringList(table(statuses, root)), self.content_offset,
                                    container)
            return [container]

    app.add_directive("execution-status", ExecutionStatus)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}


def main(argv: list[str]) -> int:
    if argv in ([], ["show"]):
        for line in table([notebook_status(p) for p in toc_notebooks()]):
            print(line)
        return 0
    print("usage: execution_status.py [show]  (running notebooks: tools/run_notebooks.py)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
