"""fit under torchrun: two gloo processes on the CPU train what one process trains.

Global batch 8 of 37 examples (so each epoch ends on a batch of 5, shared 3 : 2), a loss
that reaches the model through a method (DDP must still see it) and logs a metric. The
weights, EMA and history of two ranks equal one process's to float tolerance; a run whose
rank 1 is killed (SIGKILL) mid-run and then started again ends the same; a SIGTERM to one
rank stops both after a saved step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time, torch
    from torch import nn
    from companion.train import fit

    class Regressor(nn.Sequential):
        def error(self, x, y):
            return ((self(x) - y) ** 2).mean()

    out, ckpt, stop_at, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    x = torch.randn(37, 3, generator=torch.Generator().manual_seed(5))
    y = torch.randn(37, 1, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    model = Regressor(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))

    def loss(m, b, step):
        if step == stop_at and os.environ.get("RANK") == "1":
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGTERM)
        if how == "term":
            time.sleep(0.05)
        err = m.error(b[0], b[1])
        return err, {"half": err / 2}

    try:
        result = fit(model, loss, (x, y), steps=12, batch_size=8, lr=1e-2, ema=0.9,
                     quiet=True, checkpoint=None if ckpt == "-" else ckpt, save_every=1)
    except KeyboardInterrupt:
        sys.exit(3)
    if os.environ.get("RANK", "0") == "0":
        torch.save({"model": model.state_dict(), "ema": result.ema.model.state_dict(),
                    "history": result.history, "resumed_at": result.resumed_at}, out)
""")


def launch(tmp_path, out, ckpt="-", stop_at=-1, how="none", ranks=2):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", BOOK_PROFILE="ci")
    args = [str(script), str(out), str(ckpt), str(stop_at), how]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={ranks}", *args] if ranks > 1 else [sys.executable, *args])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def same(a: Path, b: Path):
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for part in ("model", "ema"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=1e-5, atol=1e-6)
    assert a["history"]["step"] == b["history"]["step"]
    for k in ("loss", "half"):
        assert b["history"][k] == pytest.approx(a["history"][k], rel=1e-5, abs=1e-7)
    return b


@pytest.mark.slow
def test_two_gloo_ranks_train_what_one_process_trains_even_when_killed(tmp_path):
    start = time.perf_counter()
    one = launch(tmp_path, tmp_path / "one.pt", ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(tmp_path, tmp_path / "two.pt", ckpt=tmp_path / "two-ckpt.pt")
    assert two.returncode == 0, two.stderr[-3000:]
    same(tmp_path / "one.pt", tmp_path / "two.pt")
    # the checkpoint two ranks wrote is the one a single process loads
    loaded = launch(tmp_path, tmp_path / "loaded.pt", ckpt=tmp_path / "two-ckpt.pt", ranks=1)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert same(tmp_path / "one.pt", tmp_path / "loaded.pt")["resumed_at"] == 12

    killed = launch(tmp_path, tmp_path / "k.pt", ckpt=tmp_path / "k-ckpt.pt", stop_at=7,
                    how="kill")
    assert killed.returncode != 0 and not (tmp_path / "k.pt").exists()
    assert not list(tmp_path.glob("*.tmp"))
    resumed = launch(tmp_path, tmp_path / "k.pt", ckpt=tmp_path / "k-ckpt.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 5 <= same(tmp_path / "one.pt", tmp_path / "k.pt")["resumed_at"] <= 7
    print(f"five torchrun/python launches in {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_after_a_saved_step(tmp_path):
    term = launch(tmp_path, tmp_path / "t.pt", ckpt=tmp_path / "t-ckpt.pt", stop_at=4,
                  how="term")
    assert term.returncode != 0 and not (tmp_path / "t.pt").exists(), term.stderr[-2000:]
    state = torch.load(tmp_path / "t-ckpt.pt", weights_only=True)
    assert state["step"] == 5 and len(state["rng_ranks"]) == 1  # rank 1's random state
    assert not (tmp_path / "t-ckpt.pt.lock").exists()
    again = launch(tmp_path, tmp_path / "t.pt", ckpt=tmp_path / "t-ckpt.pt")
    assert again.returncode == 0, again.stderr[-3000:]
    one = launch(tmp_path, tmp_path / "one.pt", ranks=1)
    assert one.returncode == 0
    assert same(tmp_path / "one.pt", tmp_path / "t.pt")["resumed_at"] == 5


def test_without_torchrun_fit_does_not_join_a_group(monkeypatch):
    from companion.run import distributed

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.join(torch.device("cpu")) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: trains alone
    assert distributed.join(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.join(torch.device("cpu"))


def test_shares_weight_the_ranks_to_the_global_mean():
    from companion.run.distributed import Ranks

    idx = torch.arange(5)
    shares = [Ranks(r, 2, torch.device("cpu")).share(idx) for r in range(2)]
    assert [len(s) for s, _ in shares] == [3, 2]
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ddp_mean = sum(values[s].mean() * w for s, w in shares) / 2
    assert float(ddp_mean) == pytest.approx(float(values.mean()))
    signal.getsignal(signal.SIGINT)  # (nothing installed by building Ranks)


@pytest.mark.slow
def test_a_recipe_trained_under_torchrun_is_the_checkpoint_the_chapters_load(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", BOOK_CACHE=str(tmp_path),
               BOOK_PROFILE="ci")
    cli = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "companion", "classifier"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.count("classifier (ci): 32 steps") == 1  # rank 0 alone reports
    check = ("from companion import recipes, data; from companion.run import profiles; "
             "p = profiles.get_profile('ci'); "
             "d = data.load('mnist', n_train=p.n_train, n_test=p.n_test); "
             "print('resumed at', recipes.classifier(d, p, 'cpu')[1].resumed_at)")
    again = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "resumed at 32" in again.stdout, again.stderr[-3000:]


def test_a_timeout_in_the_agreement_check_is_named_once(monkeypatch):
    from companion.run import distributed

    def timed_out(out, obj):
        raise RuntimeError("[gloo] Timed out waiting 4000ms for recv operation to complete")

    monkeypatch.setattr(distributed.dist, "all_gather_object", timed_out)
    ranks = distributed.Ranks(0, 2, torch.device("cpu"), 4.0)
    with pytest.raises(RuntimeError) as err:
        ranks.agree({"lr": 0.1})
    text = str(err.value)
    assert text.count("waited 4 s") == 1, text
    assert "at the check that the ranks agree" in text and "Timed out waiting 4000ms" in text
