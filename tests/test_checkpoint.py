"""A run's checkpoint (companion.run.checkpoint): whole or refused, the run's own or refused, and
fit leaves the process as it found it (issue 34's findings 1, 2, 5, 6, 7 and its notes on
the cache folder, the loaded-log, killed saves). Checkpoints of the format before the
whole-file checksum must still load: tests/data/fit-format1.pt was written by the code of
commit a91e94b (see test_a_checkpoint_of_format_1_resumes_exactly)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from companion.run import checkpoint as ck
from companion.run.checkpoint import CheckpointMismatchError
from companion.train import fit

X, Y = torch.randn(16, 3), torch.randn(16, 1)
FIXTURE = Path(__file__).parent / "data" / "fit-format1.pt"


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def run(tmp_path, d=(X, Y), name="m.pt", **kw):
    kw.setdefault("steps", 4)
    torch.manual_seed(0)
    model = kw.pop("model", None) or nn.Linear(3, 1)
    return model, fit(model, mse, d, quiet=True, checkpoint=tmp_path / name, **kw)


# --- 1. a full disk while taking the lock: no hang ----------------------------------------
def test_a_full_disk_while_locking_neither_fails_nor_hangs_the_next_run(tmp_path,
                                                                         monkeypatch):
    real_write = os.write

    def full_disk_for_locks(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk_for_locks)
    try:
        run(tmp_path)
    except OSError:
        pass  # refusing is fine; leaving the lock taken is not
    monkeypatch.undo()

    def hang(*_):
        raise TimeoutError("the second fit waits for a lock nobody holds")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        run(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert not (tmp_path / "m.pt.lock").exists()


# --- 2. whatever happens inside fit, the process is left as it was ------------------------
def loss_raising(model, batch):
    raise ValueError("a bug in the loss")


def loss_interrupted(model, batch, step):
    if step == 2:
        raise KeyboardInterrupt
    return mse(model, batch)


@pytest.mark.parametrize("how", ["unknown BOOK_PROFILE", "loss raises", "interrupt",
                                 "checkpoint of another run"])
def test_fit_leaves_no_lock_handler_or_tmp_behind(tmp_path, monkeypatch, how):
    if how == "checkpoint of another run":
        run(tmp_path, config={"a": 1})
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    kw = {}
    if how == "unknown BOOK_PROFILE":
        monkeypatch.setenv("BOOK_PROFILE", "nonesuch")
    with pytest.raises((ValueError, KeyboardInterrupt, CheckpointMismatchError)):
        torch.manual_seed(0)
        fn = {"loss raises": loss_raising, "interrupt": loss_interrupted}.get(how, mse)
        fit(nn.Linear(3, 1), fn, (X, Y), steps=4, checkpoint=tmp_path / "m.pt",
            quiet=None if how == "unknown BOOK_PROFILE" else True, **kw)
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    assert {s: signal.getsignal(s) for s in before} == before
    assert not (tmp_path / "m.pt.lock").exists() and not list(tmp_path.glob("*.tmp"))
    assert not ck._HELD
    if how != "checkpoint of another run":
        run(tmp_path)  # the same path trains again in this process


# --- 5. what decides the step count, and every row of the data, are in the identity ------
def test_another_batch_size_is_refused(tmp_path):
    run(tmp_path, epochs=2, steps=None, batch_size=4)
    with pytest.raises(CheckpointMismatchError, match="batch_size"):
        run(tmp_path, epochs=2, steps=None, batch_size=2)


def test_a_changed_row_the_old_sample_never_saw_is_caught(tmp_path):
    x, y = torch.randn(200, 3), torch.randn(200, 1)
    run(tmp_path, d=(x, y))
    x2 = x.clone()
    x2[1, 0] += 0.01  # row 1 is not among the 64 evenly spaced rows of format 1
    with pytest.raises(CheckpointMismatchError, match="1 of its 200 rows differ.*row 1"):
        run(tmp_path, d=(x2, y))
    # the same data computed another way (last bits differ) is the same data
    x3 = (x.double() * 3 / 3 + 1e-9 * x.double()).float()
    assert run(tmp_path, d=(x3, y))[1].resumed_at == 4


# --- 6. the checksum covers the whole file ------------------------------------------------
def _tamper(state, what):
    if what == "step":
        state["step"] = 3
    elif what == "history":
        state["history"]["loss"][0] += 1e-3
    elif what == "identity":
        state["identity"]["data"][0]["sum"] += 1.0
    elif what == "key name":
        state["histery"] = state.pop("history")
    elif what == "generator state":
        state["rng"][100] ^= 1
    elif what == "train_seconds":
        state["train_seconds"] = -1.0


@pytest.mark.parametrize("what", ["step", "history", "identity", "key name",
                                  "generator state", "train_seconds"])
def test_a_change_anywhere_in_the_file_says_it_is_damaged(tmp_path, what):
    run(tmp_path)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    _tamper(state, what)
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatchError, match="damaged"):
        run(tmp_path)


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_a_flipped_byte_in_the_file_is_refused(tmp_path):
    """Raw bytes: every single-byte flip in the pickled part is refused or loads the very
    same checkpoint (a flip in zip padding, say), never another one silently."""
    import zipfile

    run(tmp_path)
    good = (tmp_path / "m.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    silent = 0
    for pos in range(start, start + info.compress_size, 7):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        (tmp_path / "m.pt").write_bytes(bytes(bad))
        try:
            state = ck.read_checkpoint(tmp_path / "m.pt")
        except CheckpointMismatchError:
            continue
        silent += ck.digest(state) != ck.digest(torch.load(
            __import__("io").BytesIO(good), weights_only=True))
    assert silent == 0


# --- 7. configs compare as they round-trip ------------------------------------------------
def test_nan_in_config_resumes_its_own_checkpoint(tmp_path):
    run(tmp_path, config={"dropout": float("nan")})
    assert run(tmp_path, config={"dropout": float("nan")})[1].resumed_at == 4


def test_a_tuple_stored_by_an_earlier_commit_matches_the_list(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "old.pt")
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    state["identity"]["config"]["shape"] = (4, 2)  # what a commit before plain() stored
    torch.save(state, tmp_path / "old.pt")
    model, result = resume_fixture(tmp_path / "old.pt", config={"shape": (4, 2), "lr": 0.1})
    assert result.resumed_at == 7


# --- checkpoints of format 1 (written by a91e94b) -----------------------------------------
def resume_fixture(path, steps=12, config=None):
    x = torch.randn(23, 3, generator=torch.Generator().manual_seed(5))
    y = torch.randn(23, 1, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(1)

    def loss(m, b, step):
        return ((m(b[0] + 0.1 * torch.randn_like(b[0])) - b[1]) ** 2).mean()

    result = fit(model, loss, (x, y), steps=steps, batch_size=5, quiet=True, ema=0.9,
                 checkpoint=path, generator=gen,
                 config=config or {"shape": [4, 2], "lr": 0.1})
    return model, result


def test_a_checkpoint_of_format_1_resumes_exactly(tmp_path):
    """tests/data/fit-format1.pt: 7 of 12 steps, stopped inside an epoch, with an EMA and
    a generator, written by a91e94b's fit (no digest, no per-row fingerprint, no batch
    size in the identity). Resumed now, it ends where an uninterrupted run ends."""
    shutil.copy(FIXTURE, tmp_path / "old.pt")
    resumed, result = resume_fixture(tmp_path / "old.pt")
    assert result.resumed_at == 7
    whole, _ = resume_fixture(tmp_path / "new.pt")
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)
    again = torch.load(tmp_path / "old.pt", weights_only=True)
    assert again["format"] == ck.FORMAT and "digest" in again  # saved in today's format


def test_a_damaged_checkpoint_of_format_1_is_still_caught(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "old.pt")
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    state["model"]["weight"][0, 0] += 1.0
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointMismatchError, match="damaged"):
        resume_fixture(tmp_path / "old.pt")


# --- the notes: killed saves, the loaded-log, the cache folder ----------------------------
def test_a_killed_save_leaves_no_stale_tmp_for_long(tmp_path):
    dead = tmp_path / "m.pt.999999999.1.tmp"  # no such process
    dead.write_bytes(b"x" * 1000)
    alive = tmp_path / f"m.pt.{os.getppid()}.1.tmp"  # a running process's save: kept
    alive.write_bytes(b"y")
    run(tmp_path)
    assert not dead.exists() and alive.exists()


def test_a_loaded_log_that_is_a_directory_warns_and_loads(tmp_path, monkeypatch):
    run(tmp_path)
    monkeypatch.setenv("BOOK_LOADED_LOG", str(tmp_path))
    with pytest.warns(UserWarning, match="BOOK_LOADED_LOG"):
        assert run(tmp_path)[1].resumed_at == 4


@pytest.mark.parametrize("value", ["", "  ", "~/somewhere"])
def test_book_cache_empty_or_with_a_tilde(monkeypatch, value):
    monkeypatch.setenv("BOOK_CACHE", value)
    monkeypatch.delenv("BOOK_SMOKE", raising=False)
    d = ck.cache_dir()
    assert d.is_absolute() and "~" not in str(d)
    assert d == (Path.home() / "somewhere" if "~" in value
                 else Path.home() / ".cache" / "companion")


def test_the_checkpoint_module_never_imports_train():
    """Issue 33: train imports the checkpoint module, never the reverse (no cycle)."""
    import ast

    import companion.run.checkpoint
    import companion.run.distributed

    for module in (companion.run.checkpoint, companion.run.distributed):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.split(".")[-1] == "train"}, module


def test_a_float_setting_that_differs_only_in_its_last_digits_is_the_same():
    """Chapter 11's latent scale, computed from the data under AVX-512 and under
    ATEN_CPU_CAPABILITY=default: a checkpoint trained on one CPU loads on the other."""
    from companion.run.checkpoint import same_value

    assert same_value(0.7458972775917927, 0.7458972780326674)
    assert same_value([0.1, float("nan")], (0.1 + 1e-12, float("nan")))
    assert not same_value(1e-3, 2e-3) and not same_value(0.7459, 0.7460)
    assert not same_value(0.0, 1e-300) and same_value(0.0, 0.0)
