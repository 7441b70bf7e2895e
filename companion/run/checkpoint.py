"""A run's checkpoint file: where it lives, what it is, and how it is written and read.

`companion.train.fit` trains; this module keeps its work. It holds:

- where checkpoints live: `cache_dir()`, `checkpoint_path(name, profile)`;
- the run's identity (model, configuration, data, optimizer, EMA, batch size) and what
  differs when a checkpoint belongs to another run (`identity`, `check_identity`);
- the random state a step draws from (`rng_state`, `set_rng_state`);
- a lock on the path while a run trains into it (`PathLock`), and the check, before any
  training, that a checkpoint can be written there (`check_writable`);
- atomic saves with a checksum of the whole file, and loads that refuse a damaged or
  foreign file (`save_checkpoint`, `load_checkpoint`).

One serializer rule (`storable`): a checkpoint holds tensors, None, bools, ints, floats,
strings, and dicts, lists and tuples of them (what a weights_only load reads back). NumPy
scalars are stored as the Python numbers they equal; anything else (a NumPy array, an
object) is refused when saving, naming where it sits, so that whatever `save_checkpoint`
writes, `read_checkpoint` reads; `fit` runs the same check before its first step.

Checkpoints written before the whole-file checksum (no "digest" key) are checked as they
were: their tensors' checksum, the identity fields they have.
"""

from __future__ import annotations

import array
import atexit
import errno
import math
import numbers
import os
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from . import profiles

try:  # advisory file locks; absent on Windows, where two runs sharing a path go unnoticed
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT = 2  # 2: a checksum of the whole file ("digest"); 1 (no "format" key): tensors only


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


class NonFiniteWeightsError(NonFiniteLossError):
    """The weights (or optimizer state) stopped being finite; nothing of them is saved."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint belongs to another model or configuration, or is damaged."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message names the path."""


class CheckpointBusyError(RuntimeError):
    """This process already trains into the checkpoint path a second fit was given."""


# --- where ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$BOOK_CACHE (with ~ expanded; empty means unset), else ~/.cache/companion; in smoke
    mode (BOOK_SMOKE=1) a throwaway folder of this process's, removed when it exits, so a
    smoke run never touches the real cache."""
    if profiles.smoke_mode():
        return _smoke_dir()
    chosen = os.environ.get("BOOK_CACHE", "").strip()
    if not chosen:
        return Path.home() / ".cache" / "companion"
    return Path(chosen).expanduser().absolute()


_SMOKE_DIRS: dict[int, Path] = {}  # per process id: a forked child gets a folder of its own


def _smoke_dir() -> Path:
    pid = os.getpid()
    if pid not in _SMOKE_DIRS:
        _SMOKE_DIRS[pid] = Path(tempfile.mkdtemp(prefix="companion-smoke-"))
        atexit.register(_remove_smoke_dir, pid)
    return _SMOKE_DIRS[pid]


def _remove_smoke_dir(pid: int) -> None:
    if os.getpid() == pid:  # not a forked child that inherited the exit hook
        shutil.rmtree(_SMOKE_DIRS[pid], ignore_errors=True)


def through_links(path: Path) -> Path:
    """The file a checkpoint path names: `path`, or where its symbolic link (a link to a link,
    a link to a file not there yet) leads. fit locks, writes and replaces that file, so a
    link `latest.pt -> run.pt` stays a link and run.pt holds what was trained (replacing the
    link itself would leave run.pt stale). The folders on the way are kept as given."""
    path, seen = Path(path), []
    while path.is_symlink():
        if path in seen or len(seen) >= 40:
            chain = " -> ".join(map(str, [*seen, path]))
            raise CheckpointSaveError(
                f"checkpoint path {seen[0]} is a symbolic link that leads round in a loop "
                f"({chain}), to no file; point the link at a file, or pass the file's own "
                "path as checkpoint=")
        seen.append(path)
        path = path.parent / os.readlink(path)  # a relative link: from the link's folder
    return path


def checkpoint_path(name: str, profile) -> Path:
    """Where the load-or-train checkpoint of `name` lives for this profile: a plain name,
    refused with a folder in it (a variant "../../x" wrote outside the cache)."""
    pname = getattr(profile, "name", profile)
    for what, v in (("name", name), ("the profile's name", pname)):
        if not isinstance(v, str) or "/" in v or "\\" in v or (os.sep in v):
            raise ValueError(f"{what} of a checkpoint must be a plain name without a folder "
                             f"(it is a file in {cache_dir() / 'checkpoints'}), got {v!r}: "
                             "check the variant, kind or prefix passed")
    return cache_dir() / "checkpoints" / f"{name}-{pname}.pt"


# --- the lock ------------------------------------------------------------------------------
_HELD: set[str] = set()  # lock files this process holds (any thread)
_HELD_GUARD = threading.Lock()


class PathLock:
    """An exclusive lock on `<checkpoint>.lock` while a run trains into the checkpoint.

    A second run that wants the same checkpoint waits (saying who holds it: process, host,
    since when) until the first is done, then loads or resumes what it saved: two runs never
    write one file at once, and notebooks executed in parallel that share a model (chapters
    9 and 10) train it once. The wait polls, so Ctrl-C stops it at once; `timeout` seconds
    (None: no limit) end it with CheckpointBusyError. Within one process waiting would never
    end, so a second fit there is an error (known from this process's own list of the lock
    files it holds, by their real path, so a symlinked folder is the same folder). fcntl.flock
    locks an open file, so the kernel drops the lock when its process dies: a killed run
    leaves no stale lock. Without fcntl (Windows), or on a file system that cannot lock
    (some FUSE mounts, NFS without lockd: a warning says so), there is no lock. Use as a
    context manager; it also removes temporary files that killed saves left beside the path.
    """

    POLL = 0.2  # seconds between tries while waiting

    def __init__(self, path: Path, timeout: float | None = None):
        self.path = Path(path)
        self.file = self.path.with_name(self.path.name + ".lock")
        self.fd: int | None = None
        self.timeout = timeout
        self.key = os.path.join(os.path.realpath(self.file.parent), self.file.name)

    def __enter__(self) -> PathLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        with _HELD_GUARD:
            if self.key in _HELD:
                raise CheckpointBusyError(
                    f"this process is already training into {self.path} (another fit, in a "
                    "thread or a loss function, holds it): two runs writing one checkpoint "
                    "would overwrite each other's steps. Pass this run a different "
                    "checkpoint path.")
            _HELD.add(self.key)
        try:
            if fcntl is not None:
                self.fd = self._lock_file()
            _remove_stale_tmp(self.path)
        except BaseException:
            self.release()
            raise

    def _lock_file(self) -> int | None:
        said, start = False, time.monotonic()
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        warnings.warn(
                            f"the folder {self.path.parent} cannot lock files ({err}): "
                            "training without the lock, so two runs into this checkpoint "
                            "at once would overwrite each other's steps. Keep checkpoints on "
                            "a local disk (set BOOK_CACHE to a local folder) to have it.",
                            stacklevel=5)
                        return None
                    waited = time.monotonic() - start
                    if self.timeout is not None and waited >= self.timeout:
                        raise CheckpointBusyError(
                            f"gave up after waiting {waited:.0f} s (lock_timeout) for "
                            f"{self._holder(fd)}, which trains into {self.path}. Run again "
                            "when it is done, or pass another checkpoint path.") from None
                    if not said:
                        print(self._waiting(fd), file=sys.stderr, flush=True)
                        said = True
                    os.close(fd)
                    time.sleep(self.POLL)
                    continue
                # the holder before us may have removed the file between our open and lock
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    try:  # who holds it, for a waiting run's message; a full disk may refuse
                        os.ftruncate(fd, 0)
                        os.write(fd, f"{os.getpid()} {socket.gethostname()} "
                                     f"{time.time():.0f}\n".encode())
                    except OSError:
                        pass
                    return fd
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
            os.close(fd)

    def _waiting(self, fd: int) -> str:
        """What a run waiting for the lock says, once: who holds it and what the reader can
        do. Only fit takes lock_timeout; a recipe (ddpm, lm_model, ...) waits without a
        limit, so its reader is told what works there: end a stuck holder, Ctrl-C, or
        another checkpoint (the recipe's prefix=)."""
        holder = self._holder(fd)
        limit = (f"giving up after {self.timeout:g} s (lock_timeout)"
                 if self.timeout is not None else
                 "no time limit: companion.train.fit(..., lock_timeout=seconds) gives up "
                 "after a while; a recipe waits as long as the holder runs")
        pid = holder.split("process ", 1)[1].split(" ", 1)[0].rstrip(",)")
        end = f"`kill {pid}`" if pid.isdigit() else "end it"
        return (f"{holder} is training into {self.path}; waiting for it to finish, then "
                f"this run loads or resumes its checkpoint ({limit}). If that run is stuck, "
                f"{end} on its machine and this one goes on; Ctrl-C stops waiting; another "
                "checkpoint path (a recipe's prefix=) trains separately")

    @staticmethod
    def _holder(fd: int) -> str:
        """'another run (process 123 on host, since 05:31:02 UTC)', as far as it wrote."""
        try:
            words = os.pread(fd, 256, 0).decode(errors="replace").split()
        except OSError:
            words = []
        who = f"process {words[0]}" if words else "process ?"
        if len(words) > 1:
            who += f" on {words[1]}"
        if len(words) > 2:
            try:
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(words[2])))
                who += f", since {since}"
            except ValueError:
                pass
        return f"another run ({who})"

    def release(self) -> None:
        if self.fd is not None:
            try:  # while still holding it: see _lock_file
                self.file.unlink(missing_ok=True)
            except OSError:  # a folder turned read-only: the lock goes with the descriptor
                pass
            finally:
                os.close(self.fd)
                self.fd = None
        with _HELD_GUARD:
            _HELD.discard(self.key)


def _tmp_name(path: Path, thread: int | None = None) -> Path:
    """A temporary name of this process and thread's: two runs never move each other's."""
    thread = threading.get_ident() if thread is None else thread
    return path.with_name(f"{path.name}.{os.getpid()}.{thread}.tmp")


def _remove_stale_tmp(path: Path) -> None:
    """Remove `<path>.<pid>.<thread>.tmp` files of processes that no longer run (a save
    killed with -9 leaves one, as large as the checkpoint)."""
    for tmp in path.parent.glob(f"{path.name}.*.*.tmp"):
        pid = tmp.name[len(path.name) + 1:].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def replace_file(path: Path, data: bytes) -> None:
    """Write data to path atomically, as the checkpoints are written: into a temporary file
    of this process's in the same folder, then os.replace. A run killed while writing leaves
    the previous file whole, or none (a reader would take a cut-off file for the whole: an
    explorer's page fails with BadZipFile, a corpus is a third of itself) and a temporary
    file, which the next write removes once its process is gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes on disk before the name points at them
        os.replace(tmp, path)
    finally:  # also when Ctrl-C lands inside the write
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        return True
    return True


# --- random state --------------------------------------------------------------------------
def rng_state(generator: torch.Generator | None, device: torch.device) -> dict:
    """The random state a step draws from: torch's CPU generator, the CUDA generators when
    training on CUDA, and fit's own `generator`. Copies; draws nothing."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["rng_generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    """Restore what `rng_state` captured (keys it lacks are left as they are)."""
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    cuda = state.get("rng_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and state.get("rng_generator") is not None:
        try:
            generator.set_state(state["rng_generator"])
        except RuntimeError as err:  # a CUDA generator's state into a CPU one, say
            warnings.warn(f"could not restore the generator's state ({err}); the resumed "
                          "run draws other random numbers than an uninterrupted one would",
                          stacklevel=3)


# --- identity ------------------------------------------------------------------------------
def plain(value, key: str):
    """A config value as plain JSON-like data (what a weights_only load reads back)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if torch.is_tensor(value):
        raise TypeError(f"config[{key!r}] is a tensor; pass a plain number or list "
                        "(e.g. t.item() or t.tolist())")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): plain(v, f"{key}.{k}") for k, v in value.items()}
    name = getattr(value, "name", None)
    if isinstance(name, str):  # a Profile, an enum: its name identifies it
        return name
    raise TypeError(f"config[{key!r}] is a {type(value).__name__}, which a checkpoint cannot "
                    "store; pass numbers, strings, lists or dicts of them")


def fingerprint(tensors) -> list:
    """Shapes, dtypes and checksums of the data: the sums of 64 evenly spaced rows (what
    checkpoints of format 1 hold), and per-row sums of every row, plain and weighted by the
    position in the row ("rows", (N, 2) float64: 16 bytes a row, about 1 MB for 60,000
    digits, and one pass over the data, some 20 ms on a CPU for 60,000 x 784). Sums, not a
    hash of the bytes: the same data computed on another device (codes from an encoder, say)
    differs in its last bits, and must still count as the same."""
    out = []
    for t in tensors:
        n = t.shape[0]
        flat = t.detach().reshape(n, -1)
        width = max(flat.shape[1], 1)
        w = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64)
        rows = torch.linspace(0, n - 1, min(n, 64)).round().long().to(t.device)
        sample = flat[rows].cpu().double()
        per_row = []
        for chunk in flat.split(4096):  # 4,096 rows at a time in float64, on the host
            chunk = chunk.cpu().double()
            per_row.append(torch.stack([chunk.sum(1), chunk @ w / width], 1))
        out.append({"shape": list(t.shape), "dtype": str(t.dtype),
                    "sum": float(sample.sum()), "weighted": float((sample * w).sum() / width),
                    "rows": torch.cat(per_row)})
    return out


def optimizer_identity(optimizer) -> dict:
    """The optimizer's type and constructor settings (not the current lr: a warm-up changes
    that every step, and an early checkpoint must resume into the full run)."""
    keep = {}
    for k, v in optimizer.defaults.items():
        try:
            keep[k] = plain(v, k)
        except TypeError:
            keep[k] = repr(v)
    return {"type": type(optimizer).__name__, "defaults": keep}


def structure(model: nn.Module) -> list[str]:
    """The module tree as text, one line per module: its name, class and non-parameter
    settings (`extra_repr`: "p=0.5", "in_features=3, ..."), e.g. "1: Tanh()". Two models of
    the same parameter shapes differ here when an activation or a dropout rate does."""
    return [f"{name or '(model)'}: {type(m).__name__}({m.extra_repr()})"
            for name, m in model.named_modules()]


def identity(model: nn.Module, config: dict | None, tensors=(), optimizer=None,
             ema: float | None = None, batch_size: int | None = None) -> dict:
    """What makes a checkpoint this run's: the model's class, size and module tree,
    `config`, the data's fingerprint, the optimizer, the EMA decay and the batch size
    (which, with the data's size, decides what a step count means)."""
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    ident = {
        "model": type(model).__qualname__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "structure": structure(model),
        "config": {str(k): plain(v, str(k)) for k, v in (config or {}).items()},
    }
    if tensors:
        ident["data"] = fingerprint(tensors)
    if optimizer is not None:
        ident["optimizer"] = optimizer_identity(optimizer)
    ident["ema"] = None if ema is None else float(ema)
    if batch_size is not None:
        ident["batch_size"] = int(batch_size)
    return ident


def same_value(a, b) -> bool:
    """Equal as a checkpoint stores them: tuples as lists, NaN equal to NaN, and floats
    within 1e-6 relative, as the data fingerprint: a setting computed from the data (chapter
    11's latent scale) changes in its last digits with the CPU's summation order (AVX-512
    against AVX2), and a cache must not refuse its own checkpoint on another CPU."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def _data_difference(saved: list, now: list) -> str:
    """'' when the data matches the fingerprint a checkpoint holds, else what differs."""
    if len(saved) != len(now):
        return f"{len(saved)} data tensors, this run {len(now)}"
    for i, (x, y) in enumerate(zip(saved, now, strict=True)):
        name = "data" if len(now) == 1 else f"data[{i}]"
        for k in ("shape", "dtype"):
            if x.get(k) != y.get(k):
                return f"{name} {k}: checkpoint {x.get(k)}, this run {y.get(k)}"
        for k in ("sum", "weighted"):
            if not math.isclose(x.get(k, 0.0), y.get(k, 0.0), rel_tol=1e-6, abs_tol=1e-6):
                return f"{name}: the checkpoint was trained on other values"
        if torch.is_tensor(x.get("rows")):  # format 2: every row
            a, b = x["rows"], y["rows"]
            # rounding (the same data computed on another device) stays far inside this
            scale = float(b.abs().mean()) if b.numel() else 0.0
            bad = (~torch.isclose(a, b, rtol=1e-5, atol=1e-5 * scale).all(1)).nonzero()
            if len(bad):
                return (f"{name}: {len(bad)} of its {len(a)} rows differ from the "
                        f"checkpoint's (the first is row {int(bad[0])})")
    return ""


def _settings(line: str) -> tuple[str, dict[str, str]]:
    """A `structure` line split into its head ("down.0: GroupNorm") and its settings,
    {"eps": "1e-05", "#0": "4"} (positional ones numbered), split at the top-level commas
    only: "kernel_size=(3, 3)" stays one setting."""
    head, _, rest = line.partition("(")
    rest = rest[:-1] if rest.endswith(")") else rest
    parts, depth, cur = [], 0, ""
    for ch in rest:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    settings = {}
    for i, part in enumerate(parts):
        key, eq, value = part.partition("=")
        if eq:
            settings[key.strip()] = value.strip()
        else:
            settings[f"#{i}"] = part
    return head, settings


def _same_line(a: str, b: str) -> bool:
    """Two lines of a module tree agree: the same name and class, and the same value for
    every setting both print. A setting only one prints is not compared: torch versions
    differ in what `extra_repr` shows (2.14 adds "bias=True" to its norm layers), and a
    checkpoint saved under one must load under another."""
    (ha, sa), (hb, sb) = _settings(a), _settings(b)
    return ha == hb and all(sa[k] == sb[k] for k in sa.keys() & sb.keys())


def _structure_difference(saved: list, now: list) -> str:
    """'' when the module trees agree, else the first few lines that differ."""
    if len(saved) == len(now) and all(map(_same_line, saved, now)):
        return ""
    pairs = [(a, b) for a, b in zip(saved, now, strict=False) if not _same_line(a, b)][:3]
    said = "; ".join(f"checkpoint {a!r}, this run {b!r}" for a, b in pairs)
    if len(saved) != len(now):
        said += (("; " if said else "") + f"checkpoint {len(saved)} modules, "
                 f"this run {len(now)}")
    return said


def check_identity(path: Path, saved: dict, expected: dict) -> None:
    """Raise CheckpointMismatchError naming every difference between the identity a
    checkpoint holds and this run's (a field the checkpoint lacks is not compared: older
    checkpoints did not record it)."""
    diffs = []
    for key in ("model", "n_params"):
        if saved.get(key) != expected[key]:
            diffs.append(f"{key}: checkpoint has {saved.get(key)!r}, this run {expected[key]!r}")
    if "structure" in saved and "structure" in expected:
        why = _structure_difference(saved["structure"], expected["structure"])
        if why:
            diffs.append(f"module tree: {why}")
    if "data" in saved and "data" in expected:
        why = _data_difference(saved["data"], expected["data"])
        if why:
            diffs.append(f"data: {why}")
    for key in ("optimizer", "ema", "batch_size"):
        if key in saved and key in expected and not same_value(
                _round_trip(saved[key]), expected[key]):
            diffs.append(f"{key}: checkpoint has {saved[key]!r}, this run {expected[key]!r}")
    scfg, ecfg = saved.get("config", {}), expected["config"]
    for key in sorted(set(scfg) | set(ecfg)):
        if not same_value(_round_trip(scfg.get(key)), ecfg.get(key)):
            diffs.append(f"config[{key!r}]: checkpoint has {scfg.get(key)!r}, "
                         f"this run {ecfg.get(key)!r}")
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} was saved by another model or configuration:\n  "
            + "\n  ".join(diffs)
            + "\nDelete it to train from scratch, or pass a different checkpoint path.")


def _round_trip(value):
    """A stored value as `plain` would give it now (an earlier commit stored tuples)."""
    try:
        return plain(value, "")
    except TypeError:
        return value


# --- checksums -----------------------------------------------------------------------------
def _tensors_of(obj):
    """Every tensor in a nested state, in a fixed order."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors_of(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_of(v)


def _tensor_bytes(t: torch.Tensor):
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def checksum(*parts) -> int:
    """crc32 of every tensor in `parts` (format 1's checksum: the tensors only)."""
    crc = 0
    for t in _tensors_of(list(parts)):
        crc = zlib.crc32(_tensor_bytes(t), crc)
    return crc


def digest(obj, crc: int = 0) -> int:
    """crc32 of a whole nested state: every key, type, number, string and tensor (its
    dtype, shape and bytes), so that a flipped byte anywhere in a checkpoint shows."""
    if torch.is_tensor(obj):
        crc = zlib.crc32(f"T{obj.dtype}{tuple(obj.shape)}".encode(), crc)
        return zlib.crc32(_tensor_bytes(obj), crc)
    if isinstance(obj, dict):
        crc = zlib.crc32(f"D{len(obj)}".encode(), crc)
        for k in sorted(obj, key=repr):
            crc = digest(obj[k], digest(k, crc))
        return crc
    if isinstance(obj, (list, tuple)):
        crc = zlib.crc32(f"{type(obj).__name__[0]}{len(obj)}".encode(), crc)
        if obj and all(type(v) is float for v in obj):  # a history: one pass
            return zlib.crc32(array.array("d", obj).tobytes(), crc)
        if obj and all(type(v) is int for v in obj) and all(
                -2**63 <= v < 2**63 for v in obj):
            return zlib.crc32(b"i" + array.array("q", obj).tobytes(), crc)
        for v in obj:
            crc = digest(v, crc)
        return crc
    if isinstance(obj, float):
        return zlib.crc32(b"f" + struct.pack("<d", obj), crc)
    return zlib.crc32(f"{type(obj).__name__}:{obj!r}".encode(), crc)


def all_finite(*modules_and_states) -> bool:
    """One reduction over every floating tensor: are they all finite?"""
    ts = [t for t in _tensors_of(list(modules_and_states))
          if t.is_floating_point() and t.numel()]
    if not ts:
        return True
    by_device: dict = {}
    for t in ts:
        by_device.setdefault(t.device, []).append(t.detach().float()
                                                  if t.dtype != torch.float32 else t.detach())
    return all(bool(torch.isfinite(torch.stack(torch._foreach_norm(v))).all())
               for v in by_device.values())


# --- writing and reading -------------------------------------------------------------------
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def storable(obj, key: str = "checkpoint"):
    """`obj` as a checkpoint stores it (the module's serializer rule): tensors and plain
    values as they are, NumPy scalars as the Python numbers they equal, dicts, lists and
    tuples entry by entry (the same object when nothing in it changes: a state_dict keeps
    its metadata); anything else raises CheckpointSaveError naming `key` and the place."""
    if torch.is_tensor(obj) or type(obj) in _PLAIN:
        return obj
    if _numpy_scalar(obj):  # np.float32(0.5), np.int64(3), np.bool_(True)
        return obj.item()
    for plain_type in (bool, int, float, str):  # a subclass: an IntEnum, a str enum
        if isinstance(obj, plain_type):
            return plain_type(obj)
    if isinstance(obj, dict):
        out = {k: storable(v, f"{key}[{k!r}]") for k, v in obj.items()}
        return obj if all(out[k] is obj[k] for k in obj) else out
    if isinstance(obj, (list, tuple)):
        items = [storable(v, f"{key}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    if type(obj).__module__ == "numpy":
        what = f"a NumPy array of shape {tuple(getattr(obj, 'shape', ()))}"
        fix = "store torch.from_numpy(a) (or a.tolist()) instead"
    else:
        what, fix = f"a {type(obj).__name__}", ("store tensors, numbers, strings, or lists "
                                                "and dicts of them")
    raise CheckpointSaveError(f"{key} holds {what}, which a checkpoint cannot store (a "
                              f"weights_only load would refuse it): {fix}")


def _numpy_scalar(obj) -> bool:
    np = sys.modules.get("numpy")  # no NumPy imported: no NumPy scalar exists
    return np is not None and isinstance(obj, np.generic)


def check_storable(**parts) -> None:
    """Raise CheckpointSaveError unless every part (a model's state_dict, an optimizer's,
    ...) can be stored: what fit checks before its first step, not after its last."""
    for key, part in parts.items():
        storable(part, key)


def check_writable(path: Path) -> None:
    """Raise CheckpointSaveError unless a checkpoint can be written at `path`: it is a
    regular file or absent (a directory or a FIFO is refused: opening a FIFO would block),
    its name and its temporary and lock files' names fit the file system's limit, and its
    folder takes a new file."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".lock")):
        try:
            mode = p.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            raise CheckpointSaveError(f"cannot use checkpoint path {p} ({err}); pass "
                                      "checkpoint= a writable path, or set BOOK_CACHE") from err
        if stat.S_ISDIR(mode) and p == path:
            raise CheckpointSaveError(f"checkpoint path {path} is a directory; pass a file "
                                      f"name such as {path}/model.pt")
        if not stat.S_ISREG(mode):
            raise CheckpointSaveError(f"{p} is not a regular file (a FIFO, a socket or a "
                                      "device: reading it could wait for ever); pass a file "
                                      "name of its own as checkpoint=")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointSaveError(f"cannot write checkpoints to {path.parent} ({err}); pass "
                                  "checkpoint= a writable path, or set BOOK_CACHE") from err
    longest = os.fsencode(_tmp_name(path, thread=2**64 - 1).name)
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if len(longest) > limit:
        raise CheckpointSaveError(
            f"the checkpoint's file name is too long: {len(os.fsencode(path.name))} bytes, "
            f"and its temporary file adds {len(longest) - len(os.fsencode(path.name))}, over "
            f"this file system's {limit}; pass a name of at most "
            f"{limit - (len(longest) - len(os.fsencode(path.name)))} bytes")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".",
                                         suffix=".probe"):
            pass
    except OSError as err:
        raise CheckpointSaveError(f"cannot write checkpoints to {path.parent} ({err}); pass "
                                  "checkpoint= a writable path, or set BOOK_CACHE") from err


def _disk_full(folder: Path, state: dict) -> str:
    """' (the disk holding FOLDER is full: N MB free, the checkpoint needs about M MB)' when
    it is, else ''. torch reports a full disk as 'PytorchStreamWriter failed writing file'."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    need = sum(t.numel() * t.element_size() for t in _tensors_of(state))
    if free > need + 2**20:
        return ""
    return (f"; the disk holding {folder} is full: {free / 2**20:.1f} MB free, the checkpoint "
            f"needs about {need / 2**20:.1f} MB. Free some space, or set BOOK_CACHE to a "
            "folder on another disk")


def save_checkpoint(path: Path, model, optimizer, ema, step, history, identity,
                    train_seconds: float = 0.0, *, rng: dict | None = None,
                    data_order: torch.Tensor | None = None, data_start: int = 0,
                    scaler=None, extra: dict | None = None) -> None:
    """Write a checkpoint atomically: the weights, the optimizer, the EMA, the history, the
    random state (`rng`, as from rng_state; torch's CPU state if not given) and, for a run
    stopped inside an epoch, that epoch's order of the examples and how many of them the
    saved steps used (`data_order`, `data_start`), so a resumed run sees the very batches
    an uninterrupted one would. `extra`: more plain entries (the other ranks' random state
    under torchrun). The file carries a checksum of all of it ("digest")."""
    path = through_links(path)
    opt_state = optimizer.state_dict()
    ema_state = ema.state_dict() if ema is not None else None
    if not all_finite(model.state_dict(), opt_state.get("state", {}), ema_state):
        raise NonFiniteWeightsError(f"the weights or optimizer state are NaN/inf at step "
                                    f"{step}; not saved to {path}")
    model_state = model.state_dict()
    order = None if data_order is None else data_order.detach().cpu()
    state = {
        "format": FORMAT,
        "identity": identity,
        "step": step,
        "model": model_state,
        "optimizer": opt_state,
        "ema": ema_state,
        "history": history,
        "train_seconds": train_seconds,
        **(rng if rng is not None else {"rng": torch.get_rng_state()}),
        "data_order": order,
        "data_start": int(data_start) if order is not None else 0,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        **(extra or {}),
        # format 1's checksum stays, so that code of before format 2 still reads the file
        "checksum": checksum(model_state, opt_state, ema_state, order),
    }
    state = storable(state)  # what cannot be read back is refused before writing
    state["digest"] = digest(state)
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint behind
    except (OSError, RuntimeError) as err:
        raise CheckpointSaveError(f"could not save checkpoint {path} ({err})"
                                  f"{_disk_full(path.parent, state)}") from err
    finally:  # also when a second Ctrl-C lands inside torch.save
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a folder turned read-only, a name too long: nothing was written
            pass


class Resumed(NamedTuple):
    """What a checkpoint hands back to fit besides the states it loads in place."""

    step: int
    history: dict
    train_seconds: float
    data_order: torch.Tensor | None  # the unfinished epoch's order, or None
    data_start: int  # how many examples of that order the saved steps used
    state: dict  # the whole loaded checkpoint (its other entries: e.g. "rng_ranks")



def seed_from(path: Path, source, expected: dict, total: int) -> None:
    """Start the run that trains into `path` from `source`, a checkpoint of the same run
    with fewer steps (an early run), so that its steps are not trained again: `source` is
    read whole (a damaged one, or one that is not fit's, is refused), must hold at most
    `total` steps and the identity `expected` (another recipe's checkpoint is refused
    before it is copied), and is copied atomically (a Ctrl-C during the copy leaves no
    damaged file at `path`). fit then resumes from `path`."""
    source, path = Path(source), through_links(path)
    if not source.is_file():
        raise FileNotFoundError(f"resume_from={source} does not exist: train the early run "
                                "first (e.g. recipes.ddpm(..., steps=...)), or pass "
                                "resume_from=None to train from scratch")
    state = read_checkpoint(source)
    done = int(state["step"])
    if done > total:
        raise ValueError(f"resume_from={source} holds {done} steps, not a shorter run of "
                         f"this recipe's {total}: pass the early run's checkpoint")
    check_identity(source, state.get("identity", {}), expected)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

KNOWN_KEYS = {"format", "identity", "step", "model", "optimizer", "ema", "history",
              "train_seconds", "rng", "rng_cuda", "rng_generator", "data_order", "data_start",
              "scaler", "checksum", "digest", "rng_ranks"}


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, checked whole: CheckpointMismatchError if it cannot be
    read, is no checkpoint of fit's, or is damaged (its checksum disagrees)."""
    damaged = (f"checkpoint {path} is damaged: its checksum does not match its contents. "
               "Delete it to train from scratch.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path} ({err}). It is damaged or was not written by "
            "companion.fit; delete it to train from scratch.") from err
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointMismatchError(
            f"{path} holds a {type(state).__name__}, not a checkpoint written by "
            "companion.fit; delete it or pass a different checkpoint path.")
    if "digest" in state:
        rest = {k: v for k, v in state.items() if k != "digest"}
        if digest(rest) != state["digest"]:
            raise CheckpointMismatchError(damaged)
    else:  # format 1: only the tensors were summed, and it had no other keys
        unknown = set(state) - KNOWN_KEYS
        if "format" in state or unknown:
            raise CheckpointMismatchError(damaged + f" (unexpected entries: "
                                          f"{sorted(map(str, unknown)) or ['format']})")
        if "checksum" in state and checksum(state["model"], state["optimizer"],
                                            state.get("ema"), state.get("data_order")
                                            ) != state["checksum"]:
            raise CheckpointMismatchError(damaged)
    return state


def load_checkpoint(path: Path, model, optimizer, ema, identity, *,
                    generator: torch.Generator | None = None, scaler=None,
                    note: bool = True, state: dict | None = None) -> Resumed:
    """Load a checkpoint into model/optimizer/ema (and restore the random state, fit's
    `generator` and the gradient scaler's). Checkpoints of earlier versions (without the
    CUDA or generator state, the data order, a checksum or the whole-file one) load as
    they did. state: the file as `read_checkpoint` returned it (not read again)."""
    state = read_checkpoint(path) if state is None else state
    check_identity(path, state.get("identity", {}), identity)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this model's weights ({err}). "
            "Delete it to train from scratch, or pass a different checkpoint path.") from err
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state, generator)
    if note:
        note_loaded(path)
    return Resumed(int(state["step"]), state["history"],
                   float(state.get("train_seconds", 0.0)), state.get("data_order"),
                   int(state.get("data_start", 0)), state)


def note_loaded(path: Path) -> None:
    """Append the checkpoint's name to $BOOK_LOADED_LOG, if set: `make outputs` reads it to
    tell on the status page which chapters loaded training instead of doing it. A log that
    cannot be written warns; the checkpoint loads all the same."""
    log = os.environ.get("BOOK_LOADED_LOG")
    if log:
        try:
            with open(log, "a") as f:
                f.write(Path(path).name + "\n")
        except OSError as err:
            warnings.warn(f"BOOK_LOADED_LOG={log} cannot be written ({err}); the checkpoint "
                          "loaded, but is not noted there. Point it at a writable file.",
                          stacklevel=3)
