"""Fault injection: nothing lost, nothing silent.

Each test injects one fault the issue lists (a config fit cannot store, NaN weights under a
finite loss, fractional steps, a read-only directory, a kill, empty data, out-of-range
images, non-finite metrics input, a checkpoint of another run or damaged) and checks that
companion refuses it clearly, or keeps the work.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from companion import diffusion as dm
from companion import metrics
from companion.models.classifier import Classifier, predict
from companion.models.hvae import HierarchyLoss
from companion.models.unet import UNet, preset
from companion.models.vae import to_8bit_range
from companion.profiles import get_profile
from companion.train import (
    CheckpointMismatchError,
    CheckpointSaveError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    fit,
)

X, Y = torch.randn(16, 3), torch.randn(16, 1)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def run(tmp_path=None, model=None, d=(X, Y), fn=mse, name="m.pt", **kw):
    kw.setdefault("steps", 4)
    torch.manual_seed(0)
    model = model or nn.Linear(3, 1)
    ckpt = None if tmp_path is None else tmp_path / name
    return model, fit(model, fn, d, quiet=True, checkpoint=ckpt, **kw)


# --- lost work -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.float64(0.5), np.int64(3), Path("/x/y"), (1, 2),
                                   [np.float32(1.0)], {"a": np.int32(2)}, True, None, "s",
                                   get_profile("ci")])
def test_config_values_round_trip(tmp_path, value):
    run(tmp_path, config={"v": value})
    _, again = run(tmp_path, config={"v": value})  # loads, weights_only
    assert again.resumed_at == 4


def test_tensor_in_config_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"config\['lr'\] is a tensor"):
        run(tmp_path, config={"lr": torch.tensor(1e-3)})


def nan_grad_loss(model, batch, step):
    loss = mse(model, batch)
    if step == 7:  # the last step: a finite loss with a NaN gradient
        nan_branch = torch.sqrt(-model.weight.abs().sum() - 1)
        return loss + torch.where(torch.tensor(True), torch.zeros(()), nan_branch)
    return loss


def test_nan_weights_are_never_saved(tmp_path):
    with pytest.raises(NonFiniteWeightsError, match="step 4"):
        run(tmp_path, fn=nan_grad_loss, steps=8, save_every=4)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_weights_without_checkpoint_are_refused():
    with pytest.raises(NonFiniteWeightsError):
        run(None, fn=nan_grad_loss, steps=8)


@pytest.mark.parametrize("kw", [{"epochs": 0.5}, {"steps": 2.5}, {"check_every": 0},
                                {"save_every": 0}])
def test_fractional_or_zero_counts_are_refused(kw):
    kw = kw if "epochs" in kw or "steps" in kw else {"steps": 2, **kw}
    with pytest.raises(ValueError, match="whole number|>= 1"):
        fit(nn.Linear(3, 1), mse, (X, Y), quiet=True, **kw)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_found_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointSaveError, match=str(ro)):
            fit(nn.Linear(3, 1), mse, (X, Y), steps=2, quiet=True, checkpoint=ro / "m.pt")
    finally:
        ro.chmod(0o700)


def test_unwritable_directory_is_named(tmp_path, monkeypatch):
    import companion.train as tr

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tr.tempfile, "NamedTemporaryFile", denied)
    with pytest.raises(CheckpointSaveError, match=str(tmp_path)):
        run(tmp_path)


def test_failed_save_keeps_the_result_and_cleans_the_tmp(tmp_path, monkeypatch):
    import companion.train as tr

    def full_disk(state, f):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tr.torch, "save", full_disk)
    with pytest.warns(UserWarning, match=r"m\.pt"):
        model, result = run(tmp_path)
    assert result.steps == 4 and result.save_error
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_directory_or_tensor_at_path(tmp_path):
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(CheckpointSaveError, match="directory"):
        run(tmp_path, name="d.pt")
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(CheckpointMismatchError, match="not a checkpoint"):
        run(tmp_path, name="t.pt")


def test_two_runs_sharing_a_path_use_their_own_tmp(tmp_path):
    import companion.train as tr

    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    ident = tr._identity(model, None)
    tr.save_checkpoint(tmp_path / "m.pt", model, opt, None, 1, {}, ident)
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / "m.pt").exists()


def test_short_runs_save_by_time(tmp_path):
    def slow(model, batch, step):
        if step == 2:
            raise KeyboardInterrupt
        return mse(model, batch)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, fn=slow, steps=90, save_seconds=0.0)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["step"] == 2


SCRIPT = textwrap.dedent("""
    import os, sys, signal, torch
    from torch import nn
    from companion.train import fit
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    kill = int(sys.argv[2])
    def loss(m, b, step):
        if step == kill:
            os.kill(os.getpid(), signal.SIGTERM)
        return ((m(b[0]) - b[1]) ** 2).mean() + 0.01 * torch.randn(()).abs()
    try:
        fit(model, loss, (x, y), steps=40, batch_size=16, quiet=True, checkpoint=sys.argv[1],
            save_every=1000, save_seconds=1e9)
    except KeyboardInterrupt:
        sys.exit(3)
    torch.save(model.state_dict(), sys.argv[1] + ".final")
""")


def test_sigterm_at_a_random_step_then_resume_gives_the_same_weights(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    py = [sys.executable, str(script)]
    subprocess.run(py + [str(tmp_path / "a.pt"), "-1"], check=True, env=env)
    kill = random.Random().randrange(1, 39)
    r = subprocess.run(py + [str(tmp_path / "b.pt"), str(kill)], env=env)
    assert r.returncode == 3, "SIGTERM should stop fit with a save"
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == kill + 1
    subprocess.run(py + [str(tmp_path / "b.pt"), "-1"], check=True, env=env)
    a = torch.load(str(tmp_path / "a.pt") + ".final")
    b = torch.load(str(tmp_path / "b.pt") + ".final")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_resume_from_missing_or_longer_run_is_refused(tmp_path, monkeypatch):
    from companion import recipes

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    x = torch.rand(8, 1, 28, 28)
    p = get_profile("ci")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recipes.ddpm(x, p, "cpu", steps=2, resume_from=tmp_path / "nope.pt")
    recipes.ddpm(x, p, "cpu", steps=3)
    with pytest.raises(ValueError, match="holds 3 steps"):
        recipes.ddpm(x, p, "cpu", steps=2, resume_from=recipes.ddpm_checkpoint(p, 3))
    assert not recipes.ddpm_checkpoint(p, 2).exists()


# --- hangs -----------------------------------------------------------------------------------
def test_empty_data_is_an_error_not_a_hang(tmp_path):
    from companion import recipes

    with pytest.raises(ValueError, match="empty"):
        fit(nn.Linear(3, 1), mse, (X[:0], Y[:0]), steps=3, quiet=True)
    with pytest.raises(ValueError, match="non-empty|empty"):
        recipes.ddpm(torch.rand(0, 1, 28, 28), get_profile("ci"), "cpu", steps=2)


# --- silent wrong results --------------------------------------------------------------------
@pytest.mark.parametrize("scale", [255.0, -1.0])
def test_ddpm_refuses_images_outside_unit_range(scale):
    from companion import recipes

    x = torch.rand(4, 1, 28, 28) * scale if scale > 0 else torch.rand(4, 1, 28, 28) * 2 - 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        recipes.ddpm(x, get_profile("ci"), "cpu", steps=2)


def test_to_8bit_range_and_classifier_refuse_the_wrong_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_8bit_range(torch.rand(2, 1, 28, 28) * 2 - 1)
    with pytest.raises(ValueError, match="to_unit"):
        predict(Classifier(), torch.rand(2, 1, 28, 28) * 2 - 1)
    with pytest.raises(TypeError, match="float64"):
        Classifier()(torch.rand(2, 1, 28, 28, dtype=torch.float64))


def test_unet_built_for_another_T_is_caught():
    d = dm.Diffusion(dm.linear_betas(10, 0.01, 0.2))
    model = UNet(preset("tiny", T=100))
    with pytest.raises(ValueError, match="T = 100"):
        d.simple_loss(model, torch.rand(2, 1, 28, 28) * 2 - 1)
    with pytest.raises(ValueError, match="T = 100"):
        d.sample(model, (1, 1, 28, 28), quiet=True)


def nan_at(a, i=0):
    a = a.clone()
    a.view(-1)[i] = float("nan")
    return a


@pytest.mark.parametrize("call", [
    lambda: metrics.mean_top_probability(torch.randn(5, 10) * 5),
    lambda: metrics.label_histogram(nan_at(torch.full((4, 10), 0.1))),
    lambda: metrics.auroc(nan_at(torch.randn(6)), torch.tensor([0, 1, 0, 1, 0, 1])),
    lambda: metrics.active_units(nan_at(torch.randn(6, 3))),
    lambda: metrics.frechet_gaussian(torch.zeros(2), -torch.eye(2), torch.zeros(2),
                                     torch.eye(2)),
    lambda: HierarchyLoss(free_bits=float("nan")),
])
def test_metrics_and_losses_refuse_bad_input(call):
    with pytest.raises(ValueError):
        call()


def test_checkpoint_identity_data_optimizer_ema(tmp_path):
    run(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="data"):
        run(tmp_path, d=(X + 1, Y))
    with pytest.raises(CheckpointMismatchError, match="optimizer"):
        run(tmp_path, lr=1e-2)
    with pytest.raises(CheckpointMismatchError, match="optimizer"):
        m = nn.Linear(3, 1)
        run(tmp_path, model=m, optimizer=torch.optim.SGD(m.parameters(), lr=1e-3))
    with pytest.raises(CheckpointMismatchError, match="ema"):
        run(tmp_path, ema=0.9)


def test_flipped_bit_in_the_weights_is_caught(tmp_path):
    run(tmp_path)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    state["model"]["weight"].view(torch.int32)[0, 0] ^= 0x7F800000
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(CheckpointMismatchError, match="checksum"):
        run(tmp_path)


def test_longer_checkpoint_is_refused_by_a_shorter_fit(tmp_path):
    run(tmp_path, steps=6)
    with pytest.raises(CheckpointMismatchError, match="holds 6 steps"):
        run(tmp_path, steps=4)


def test_loss_without_gradient_is_clear():
    with pytest.raises(ValueError, match="no gradient"):
        fit(nn.Linear(3, 1), lambda m, b: mse(m, b).detach(), (X, Y), steps=1, quiet=True)


def test_nonfinite_loss_names_the_last_finite_step(tmp_path):
    def bad(model, batch, step):
        return mse(model, batch) * (float("nan") if step >= 6 else 1.0)

    with pytest.raises(NonFiniteLossError, match="step 4"):
        run(tmp_path, fn=bad, steps=10, save_every=4, check_every=1)
