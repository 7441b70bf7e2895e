"""Fault injection: nothing lost, nothing silent.

Each test injects one fault the issue lists (a config fit cannot store, NaN weights under a
finite loss, fractional steps, a read-only directory, a kill, empty data, out-of-range
images, non-finite metrics input, a checkpoint of another run or damaged) and checks that
companion refuses it clearly, or keeps the work. A run stopped anywhere (an exception inside
a step, Ctrl-C, SIGTERM, SIGHUP, SIGKILL after a periodic save) and resumed must end with the
uninterrupted run's weights, EMA and history. The slow cases start processes (a signal from
outside, two runs on one checkpoint path); tests/probes/probe_faults.py counts the outcomes of
the same kinds of misuse across companion.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
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
from companion.run.checkpoint import (
    CheckpointMismatchError,
    CheckpointSaveError,
    NonFiniteLossError,
    NonFiniteWeightsError,
)
from companion.run.profiles import get_profile
from companion.train import fit

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
    import companion.run.checkpoint as tr

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tr.tempfile, "NamedTemporaryFile", denied)
    with pytest.raises(CheckpointSaveError, match=str(tmp_path)):
        run(tmp_path)


def test_a_read_only_folder_holding_the_finished_run_is_read(tmp_path, monkeypatch):
    """Issue 96, case 12: a class's shared, read-only cache of trained models was refused,
    though loading a finished run writes nothing. The folder is made read-only (chmod) and,
    since root writes anywhere, every new file in it refused (the probe file and the lock
    file alike): a run complete there loads without either; one that must train is refused
    with what the checkpoint holds."""
    import companion.run.checkpoint as tr

    trained, first = run(tmp_path)  # 4 steps into m.pt
    saved = (tmp_path / "m.pt").read_bytes()

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    real_open = os.open

    def no_new_file(path, flags, *a, **k):
        if Path(path).parent == tmp_path and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(tr.tempfile, "NamedTemporaryFile", denied)
    monkeypatch.setattr(os, "open", no_new_file)
    tmp_path.chmod(0o555)
    try:
        model, again = run(tmp_path)  # the same run: complete
        with pytest.raises(CheckpointSaveError, match=rf"^cannot write checkpoints to "
                                                      rf"{tmp_path} .*The checkpoint there "
                                                      r"holds 4 of this run's 8 steps"):
            run(tmp_path, steps=8)  # the same run, longer: it must train
    finally:
        tmp_path.chmod(0o755)
    assert again.resumed_at == 4 and again.steps == 4 and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 trained.state_dict().values(), strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no lock, no probe
    assert (tmp_path / "m.pt").read_bytes() == saved


def test_failed_save_keeps_the_result_and_cleans_the_tmp(tmp_path, monkeypatch):
    import companion.run.checkpoint as tr

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
    import companion.run.checkpoint as tr

    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    ident = tr.identity(model, None)
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


# --- exact resume: a stopped and resumed run ends where an uninterrupted one does --------------
# 23 examples in batches of 5: every epoch ends on a partial batch, and a stop can fall
# anywhere inside an epoch. The loss draws from torch's global generator, the epoch order
# from fit's own generator, and the weights are averaged (EMA): all of it must resume.
XR, YR = torch.randn(23, 3, generator=torch.Generator().manual_seed(5)), \
    torch.randn(23, 1, generator=torch.Generator().manual_seed(6))
RESUME_STEPS = 20


def noisy_mse(model, batch, step):
    x, y = batch
    return ((model(x + 0.1 * torch.randn_like(x)) - y) ** 2).mean()


def resumable_run(path, fn=noisy_mse, optimizer=None, **kw):
    """One session of the run, as a fresh process would start it: same seeds."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = (optimizer or torch.optim.Adam)(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    result = fit(model, fn, (XR, YR), steps=RESUME_STEPS, batch_size=5, optimizer=opt,
                 ema=0.9, checkpoint=path, generator=gen, quiet=True, **kw)
    return model, result, gen


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, result, gen = resumable_run(tmp_path_factory.mktemp("ref") / "ref.pt")
    return model.state_dict(), result.ema.model.state_dict(), result.history, \
        gen.get_state(), torch.get_rng_state()


def assert_same_run(ref, model, result):
    weights, ema_weights, history, _, _ = ref
    for k in weights:
        torch.testing.assert_close(model.state_dict()[k], weights[k])
        torch.testing.assert_close(result.ema.model.state_dict()[k], ema_weights[k])
    assert result.history["step"] == history["step"]
    assert result.history["loss"] == pytest.approx(history["loss"], rel=1e-5)


def stopping_at(at: int, how: str):
    """A loss that stops the run at step `at` (0-based), after drawing its noise."""
    def fn(model, batch, step):
        loss = noisy_mse(model, batch, step)
        if step == at:
            if how == "raise":  # Ctrl-C landing inside the step, e.g. in the forward pass
                raise KeyboardInterrupt
            os.kill(os.getpid(), getattr(signal, how))
        return loss
    return fn


@pytest.mark.parametrize("how", ["raise", "SIGINT", "SIGTERM", "SIGHUP"])
def test_stopped_anywhere_then_resumed_gives_the_same_weights(tmp_path, uninterrupted, how):
    at = random.Random().randrange(1, RESUME_STEPS - 1)
    path = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        resumable_run(path, fn=stopping_at(at, how), save_every=1000, save_seconds=1e9)
    saved = torch.load(path, weights_only=True)
    # a signal lets the step finish; an exception inside the step leaves it undone
    assert saved["step"] == (at if how == "raise" else at + 1), f"stopped at step {at}"
    model, result, _ = resumable_run(path)
    assert result.resumed_at == saved["step"]
    assert_same_run(uninterrupted, model, result)
    if saved["step"] % 5:  # stopped inside an epoch (of 5 batches): its order was kept
        assert saved["data_order"] is not None and saved["data_start"] > 0


def test_periodic_checkpoints_resume_exactly_from_inside_an_epoch(tmp_path, uninterrupted):
    path = tmp_path / "m.pt"
    for steps_done in (3, 7, 12):  # 3 = 15 of 23 examples, 7 = 12 of the 2nd epoch, ...
        def fn(model, batch, step, stop=steps_done):
            if step == stop:  # as if killed (SIGKILL) right after that step's save
                raise RuntimeError("killed")
            return noisy_mse(model, batch, step)

        with pytest.raises(RuntimeError, match="killed"):
            resumable_run(path, fn=fn, save_every=1)
        assert torch.load(path, weights_only=True)["step"] == steps_done
    model, result, _ = resumable_run(path)
    assert_same_run(uninterrupted, model, result)


class FlakyAdam(torch.optim.Adam):
    """Adam whose update is interrupted once, after the weights have moved."""

    calls, interrupt_at = 0, None

    def step(self, closure=None):
        out = super().step(closure)
        FlakyAdam.calls += 1
        if FlakyAdam.calls == FlakyAdam.interrupt_at:
            raise KeyboardInterrupt  # a second Ctrl-C inside the update
        return out


def test_interrupt_while_updating_saves_nothing_half_done(tmp_path, capsys):
    path = tmp_path / "m.pt"
    FlakyAdam.calls, FlakyAdam.interrupt_at = 0, 9
    ref_model, ref, _ = resumable_run(tmp_path / "ref.pt", optimizer=FlakyAdam.__mro__[1])
    try:
        with pytest.raises(KeyboardInterrupt):
            resumable_run(path, optimizer=FlakyAdam, save_every=5)
    finally:
        FlakyAdam.interrupt_at = None
    assert "updating the weights" in capsys.readouterr().out
    assert torch.load(path, weights_only=True)["step"] == 5  # step 9's half update is not
    model, result, _ = resumable_run(path, optimizer=FlakyAdam)
    for k, v in ref_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_random_state_is_restored_when_a_finished_run_loads(tmp_path, uninterrupted):
    _, _, _, gen_state, rng_state = uninterrupted
    path = tmp_path / "m.pt"
    resumable_run(path)
    torch.manual_seed(123)
    _, result, gen = resumable_run(path)  # loads
    assert result.resumed_at == RESUME_STEPS
    assert torch.equal(gen.get_state(), gen_state)
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_gradient_scaler_state_round_trips(tmp_path):
    import companion.run.checkpoint as tr

    model = nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1234.0)
    ident = tr.identity(model, None)
    tr.save_checkpoint(tmp_path / "m.pt", model, opt, None, 1, {}, ident, scaler=scaler)
    again = torch.amp.GradScaler("cpu")
    tr.load_checkpoint(tmp_path / "m.pt", model, opt, None, ident, scaler=again)
    assert again.get_scale() == 1234.0


def test_checkpoints_of_the_previous_format_still_load(tmp_path):
    """What fit wrote before it kept the order and the CUDA and generator states (and
    before the whole-file checksum, the per-row data fingerprint and the batch size)."""
    run(tmp_path)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    for new_key in ("data_order", "data_start", "scaler", "rng_cuda", "rng_generator",
                    "digest", "format"):
        state.pop(new_key, None)
    state["identity"].pop("batch_size")
    for d in state["identity"]["data"]:
        d.pop("rows")
    torch.save(state, tmp_path / "m.pt")
    _, again = run(tmp_path)
    assert again.resumed_at == 4
    del state["checksum"]  # older still: no checksum
    torch.save(state, tmp_path / "m.pt")
    assert run(tmp_path)[1].resumed_at == 4


SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    from torch import nn
    from companion.train import fit
    x = torch.randn(23, 3, generator=torch.Generator().manual_seed(5))
    y = torch.randn(23, 1, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(1)
    slow = float(sys.argv[2])
    def loss(m, b, step):
        time.sleep(slow)
        if step == 0:
            print("training", flush=True)
        return ((m(b[0] + 0.1 * torch.randn_like(b[0])) - b[1]) ** 2).mean()
    try:
        fit(model, loss, (x, y), steps=60, batch_size=5, quiet=True, ema=0.9,
            checkpoint=sys.argv[1], generator=gen, save_every=int(sys.argv[3]))
    except KeyboardInterrupt:
        sys.exit(3)
    torch.save(model.state_dict(), sys.argv[1] + ".final")
""")


def run_script(tmp_path, path, slow="0", save_every="1000", **kw):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    if kw.pop("here", False):  # the uninterrupted reference, without a process to start
        import runpy

        argv = sys.argv
        sys.argv = [str(script), str(path), slow, save_every]
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = argv
        return None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, str(script), str(path), slow, save_every],
                            env=env, stdout=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])  # SIGHUP, SIGINT: in-process above
def test_killed_at_a_random_moment_then_resumed_gives_the_same_weights(tmp_path, sig):
    """A real signal from outside, at a random moment of a minibatch run with an EMA."""
    run_script(tmp_path, tmp_path / "a.pt", here=True)
    # SIGKILL cannot be caught: only the periodic checkpoints (every step here) remain
    child = run_script(tmp_path, tmp_path / "b.pt", slow="0.01",
                       save_every="1" if sig == "SIGKILL" else "1000")
    assert child.stdout.readline().strip() == "training"
    time.sleep(random.Random().uniform(0.0, 0.4))
    child.send_signal(getattr(signal, sig))
    code = child.wait(60)
    assert code == (-9 if sig == "SIGKILL" else 3), f"{sig} should stop fit with a save"
    if (tmp_path / "b.pt").exists():  # a SIGKILL in the first step leaves none
        assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] <= 60
    assert run_script(tmp_path, tmp_path / "b.pt").wait(60) == 0
    a = torch.load(str(tmp_path / "a.pt") + ".final")
    b = torch.load(str(tmp_path / "b.pt") + ".final")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


# --- two runs, one checkpoint path -----------------------------------------------------------
def test_a_second_fit_into_the_same_path_in_one_process_is_refused(tmp_path):
    path = tmp_path / "m.pt"

    def nested(model, batch):
        fit(nn.Linear(3, 1), mse, (X, Y), steps=2, quiet=True, checkpoint=path)
        return mse(model, batch)

    with pytest.raises(RuntimeError, match="already training into") as err:
        fit(nn.Linear(3, 1), nested, (X, Y), steps=2, quiet=True, checkpoint=path)
    assert err.type.__name__ == "CheckpointBusyError"
    assert not (tmp_path / "m.pt.lock").exists()  # released on the way out
    run(tmp_path)  # and the path is free again


@pytest.mark.slow
def test_a_second_run_waits_for_the_first_then_loads_its_model(tmp_path):
    path = tmp_path / "b.pt"
    first = run_script(tmp_path, path, slow="0.02")
    assert first.stdout.readline().strip() == "training"  # it holds the path now
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(23, 3, generator=torch.Generator().manual_seed(5))
    y = torch.randn(23, 1, generator=torch.Generator().manual_seed(6))
    result = fit(model, lambda m, b, step: mse(m, b), (x, y), steps=60, batch_size=5,
                 ema=0.9, checkpoint=path, quiet=True)
    assert first.wait(60) == 0
    assert result.resumed_at == 60  # it waited, then loaded what the first run trained
    final = torch.load(str(path) + ".final")
    for k, v in final.items():
        torch.testing.assert_close(model.state_dict()[k], v)


@pytest.mark.slow  # trains the ci U-Net
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


# --- the discretized decoders of the VAEs: 8-bit images on [-1, 1] only ----------------------
def discretized_models():
    from companion.models.hvae import HierarchicalVAE
    from companion.models.vae import VAE

    torch.manual_seed(0)
    return [HierarchicalVAE((4, 2), (16, 8), likelihood="discretized"),
            VAE(latent_dim=2, hidden=(16,), likelihood="discretized")]


@pytest.mark.parametrize("pixels, fix", [
    (lambda u: u, "to_8bit_range"),                     # [0, 1]: the plausible 433 nats
    (lambda u: u * 255, r"x / 127\.5 - 1"),             # 0..255 bytes
    (lambda u: u * 2 - 1, "quantize_8bit"),             # [-1, 1] but off the 256 levels
])
def test_discretized_likelihoods_refuse_data_off_the_8bit_levels(pixels, fix):
    u = torch.randint(0, 256, (3, 1, 28, 28)).float() / 255
    u[0, 0, 0, 0] = 0.5  # between two levels: (0.5 * 2 - 1 + 1) * 127.5 = 127.5
    for model in discretized_models():
        with pytest.raises(ValueError, match=fix):
            model.elbo_terms(pixels(u))
        with torch.no_grad():
            terms = model.elbo_terms(to_8bit_range(u[1:]))  # the right data pass
        assert torch.isfinite(terms.elbo).all()


# --- cryptic errors found by tests/probes/probe_faults.py, made clear ---------------------------
@functools.cache
def _probe_inputs():
    from companion import data
    from companion.models.hvae import HierarchicalVAE, MarkovianHVAE
    from companion.models.vae import VAE

    torch.manual_seed(0)
    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
    unet = UNet(preset("tiny", T=10))
    empty = torch.zeros(0, 1, 28, 28)
    grey = torch.rand(2, 1, 28, 28)
    nan = grey.round().index_put_((torch.tensor([0]),) * 4, torch.tensor(float("nan")))
    one = torch.ones(0, dtype=torch.long)
    return [
        (lambda: d.q_sample(empty, one, empty), "empty batch"),
        (lambda: d.prior_kl(empty), "empty batch"),
        (lambda: d.term_at(unet, empty, one), "empty batch"),
        (lambda: HierarchicalVAE((4, 2), (16, 8)).elbo_terms(empty), "empty batch"),
        (lambda: MarkovianHVAE(T=2, latent_dim=4).elbo_terms(empty), "empty batch"),
        (lambda: VAE(latent_dim=2).elbo_terms(empty), "empty batch"),
        (lambda: HierarchicalVAE((4, 2), (16, 8)).elbo_terms(nan), r"\[0, 1\]"),
        (lambda: VAE(latent_dim=2).elbo_terms(nan), r"\[0, 1\]"),
        (lambda: data.binarize(nan), "no NaN"),
        (lambda: data.binarize(grey.long()), "float tensor"),
        (lambda: data.binarize(grey.numpy()), "float tensor"),
        (lambda: to_8bit_range(grey.round().long()), "float tensor"),
        (lambda: to_8bit_range(grey.numpy()), "float tensor"),
        (lambda: Classifier()(grey.numpy()), "tensor of images"),
        (lambda: predict(Classifier(), grey.numpy()), "tensor of images"),
        (lambda: predict(Classifier(), empty), "no images"),
    ]


@pytest.mark.parametrize("i", range(16))
def test_probe_findings_give_clear_errors(i):
    call, message = _probe_inputs()[i]
    with pytest.raises((ValueError, TypeError), match=message):
        call()
