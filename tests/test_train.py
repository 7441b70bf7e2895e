import time

import pytest
import torch
from torch import nn

from companion.run.checkpoint import CheckpointMismatchError, NonFiniteLossError
from companion.train import EMA, checkpoint_path, fit


def regression_data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return x, x @ w + 0.7


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def interrupted_at(call: int):
    """mse, but Ctrl-C (KeyboardInterrupt) at its `call`-th call."""
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return mse(model, batch)

    return loss


def test_fit_reduces_loss_and_records_history():
    model = nn.Linear(4, 1)
    result = fit(model, mse, regression_data(), epochs=30, batch_size=64, lr=3e-2, quiet=True)
    h = result.history
    assert result.steps == 30 * 8 and h["step"] == list(range(1, 241))
    assert len(h["loss"]) == 240
    assert h["loss"][-1] < 1e-2 * h["loss"][0]
    assert not model.training


def test_extra_metrics_are_logged():
    def loss_fn(model, batch):
        loss = mse(model, batch)
        return loss, {"half": loss / 2}

    result = fit(nn.Linear(4, 1), loss_fn, regression_data(), steps=10, quiet=True)
    assert result.history["half"] == pytest.approx([v / 2 for v in result.history["loss"]])


def test_steps_or_epochs_exactly_one():
    with pytest.raises(ValueError, match="exactly one"):
        fit(nn.Linear(4, 1), mse, regression_data(), quiet=True)
    with pytest.raises(ValueError, match="exactly one"):
        fit(nn.Linear(4, 1), mse, regression_data(), epochs=1, steps=1, quiet=True)


def test_nan_loss_names_the_step():
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = mse(model, batch)
        return loss * float("nan") if calls["n"] == 7 else loss

    with pytest.raises(NonFiniteLossError, match="at step 7 of 20") as err:
        fit(nn.Linear(4, 1), loss_fn, regression_data(), steps=20, quiet=True)
    assert "learning rate" in str(err.value) and "clip" in str(err.value)


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = regression_data()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(model, mse, (x, y * 1e6), steps=1, batch_size=512, optimizer=opt, clip=0.01,
        quiet=True)
    moved = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert moved.norm() <= 0.01 + 1e-6


def test_checkpoint_resume_continues_to_more_steps(tmp_path):
    ck = tmp_path / "model.pt"
    cfg = {"lr": 1e-2}
    model = nn.Linear(4, 1)
    first = fit(model, mse, regression_data(), steps=20, checkpoint=ck, config=cfg, quiet=True)
    assert ck.exists() and first.resumed_at == 0
    weights = model.weight.detach().clone()

    # load-or-train: a finished run only loads
    again = nn.Linear(4, 1)
    done = fit(again, mse, regression_data(), steps=20, checkpoint=ck, config=cfg, quiet=True)
    assert done.resumed_at == 20 and torch.equal(again.weight, weights)
    assert done.history["step"] == list(range(1, 21))

    # asking for more steps resumes from the saved step
    more = fit(nn.Linear(4, 1), mse, regression_data(), steps=35, checkpoint=ck, config=cfg,
               quiet=True)
    assert more.resumed_at == 20 and more.history["step"] == list(range(1, 36))


def test_training_time_accumulates_across_sessions(tmp_path):
    """A loaded model reports the training time that made it, not the time to load it."""
    ck = tmp_path / "model.pt"
    slow = lambda m, b: (time.sleep(0.01), mse(m, b))[1]  # noqa: E731
    first = fit(nn.Linear(4, 1), slow, regression_data(), steps=10, checkpoint=ck,
                quiet=True)
    assert first.train_seconds == first.seconds >= 0.1
    done = fit(nn.Linear(4, 1), slow, regression_data(), steps=10, checkpoint=ck, quiet=True)
    assert done.seconds < 0.1 and abs(done.train_seconds - first.train_seconds) < 0.05
    more = fit(nn.Linear(4, 1), slow, regression_data(), steps=20, checkpoint=ck, quiet=True)
    assert more.train_seconds >= first.train_seconds + 0.1


def test_interrupted_run_saves_and_resumes(tmp_path):
    ck = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(nn.Linear(4, 1), interrupted_at(13), regression_data(), steps=30, checkpoint=ck,
            quiet=True)
    resumed = fit(nn.Linear(4, 1), mse, regression_data(), steps=30, checkpoint=ck, quiet=True)
    assert resumed.resumed_at == 12 and resumed.steps == 30


def test_checkpoint_of_another_model_is_refused(tmp_path):
    ck = tmp_path / "model.pt"
    fit(nn.Linear(4, 1), mse, regression_data(), steps=5, checkpoint=ck, config={"k": 1},
        quiet=True)
    expected = r"(?s)config\['k'\]: checkpoint has 1, this run 2.*Delete it"
    with pytest.raises(CheckpointMismatchError, match=expected):
        fit(nn.Linear(4, 1), mse, regression_data(), steps=5, checkpoint=ck, config={"k": 2},
            quiet=True)
    with pytest.raises(CheckpointMismatchError, match="model: checkpoint has 'Linear'"):
        fit(nn.Sequential(nn.Linear(4, 1)), mse, regression_data(), steps=5, checkpoint=ck,
            config={"k": 1}, quiet=True)


def test_damaged_checkpoint_is_named(tmp_path):
    ck = tmp_path / "model.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="damaged"):
        fit(nn.Linear(4, 1), mse, regression_data(), steps=5, checkpoint=ck, quiet=True)


def test_checkpoint_loads_with_weights_only(tmp_path, monkeypatch):
    ck = tmp_path / "model.pt"
    fit(nn.Linear(4, 1), mse, regression_data(), steps=5, checkpoint=ck, ema=0.9, quiet=True)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    fit(nn.Linear(4, 1), mse, regression_data(), steps=5, checkpoint=ck, ema=0.9, quiet=True)
    assert seen.get("weights_only") is True


def test_ema_warmup_and_average():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.model.weight.item() == pytest.approx(0.9)  # lerp by 1 - 0.1
    for _ in range(5000):
        ema.update(model)
    assert ema.current_decay() == 0.99
    assert ema.model.weight.item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        EMA(model, decay=1.0)


def test_fit_with_ema_returns_averaged_model():
    model = nn.Linear(4, 1)
    x, y = regression_data()
    untrained = mse(model, (x, y)).item()
    result = fit(model, mse, (x, y), epochs=20, batch_size=64, lr=3e-2, ema=0.9, quiet=True)
    assert result.ema is not None and result.ema.updates == result.steps
    averaged = result.ema.model
    assert mse(averaged, (x, y)) < 0.05 * untrained
    assert not torch.equal(averaged.weight, model.weight)  # an average, not a copy


def test_checkpoint_path_names_model_and_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    assert checkpoint_path("vae", "ci") == tmp_path / "checkpoints" / "vae-ci.pt"


def test_fit_hands_the_global_step_to_a_loss_that_takes_one(tmp_path):
    seen = []

    def loss_fn(model, batch, step):
        seen.append(step)
        return model(batch[0] if isinstance(batch, (tuple, list)) else batch).pow(2).mean()

    x = torch.randn(32, 3)
    path = tmp_path / "m.pt"
    fit(nn.Linear(3, 1), loss_fn, x, steps=3, batch_size=8, checkpoint=path, quiet=True)
    fit(nn.Linear(3, 1), loss_fn, x, steps=5, batch_size=8, checkpoint=path, quiet=True)
    assert seen == [0, 1, 2, 3, 4]


def test_smoke_mode_stops_early_and_keeps_the_cache_untouched(tmp_path, monkeypatch):
    import os

    from companion.run import checkpoint as ck
    from companion.run import profiles

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "real-cache"))
    monkeypatch.setenv("BOOK_SMOKE", "1")
    path = checkpoint_path("smoke", "gpu")
    assert not str(path).startswith(str(tmp_path)) and path.parent.parent.exists()
    result = fit(nn.Linear(4, 1), mse, regression_data(), steps=50, checkpoint=path,
                 quiet=True)
    assert result.steps == profiles.SMOKE_STEPS and path.exists()
    # per call: a second call resumes and takes SMOKE_STEPS more
    assert fit(nn.Linear(4, 1), mse, regression_data(), steps=50, checkpoint=path,
               quiet=True).steps == 2 * profiles.SMOKE_STEPS
    assert not (tmp_path / "real-cache").exists()
    monkeypatch.setenv("BOOK_SMOKE", "0")
    assert ck.cache_dir() == tmp_path / "real-cache"
    assert fit(nn.Linear(4, 1), mse, regression_data(), steps=5, quiet=True).steps == 5
    assert ck._smoke_dir() == ck._SMOKE_DIRS[os.getpid()]  # one folder per process


@pytest.mark.slow
def test_smoke_cache_folder_is_removed_at_exit(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("from companion.run.checkpoint import cache_dir; d = cache_dir(); "
            "(d / 'checkpoints').mkdir(); print(d)")
    env = {**os.environ, "BOOK_SMOKE": "1", "BOOK_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out and not out.startswith(str(tmp_path)) and not Path(out).exists()


def test_an_optimizer_of_another_model_is_refused():
    """Issue 34, 4: it trained nothing, silently."""
    other = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="holds none of the model's 2 trainable"):
        fit(nn.Linear(4, 1), mse, regression_data(), steps=3, quiet=True,
            optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        fit(nn.Linear(4, 1), mse, regression_data(), steps=3, quiet=True, optimizer="adam")
    # an optimizer over part of the model (fine-tuning a head) is fine
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    head = torch.optim.SGD(model[1].parameters(), lr=0.1)
    first = model[0].weight.detach().clone()
    fit(model, mse, regression_data(), steps=3, quiet=True, optimizer=head)
    assert torch.equal(model[0].weight, first)


@pytest.mark.parametrize("metrics, match", [
    ({"a": "x"}, "'a' must be one number"), ({"a": torch.ones(3)}, r"shape \(3,\)"),
    ({"a": None}, "'a' must be one number"), ({1: 2.0}, "names must be str"),
    ([1.0], "must be a dict")])
def test_logged_metrics_are_checked_by_name(metrics, match):
    """Issue 34's patterns: a string, a vector or None failed deep inside the flush."""
    def loss_fn(model, batch):
        return mse(model, batch), metrics

    with pytest.raises(TypeError, match=match):
        fit(nn.Linear(4, 1), loss_fn, regression_data(), steps=3, quiet=True)


def test_train_log_names_each_run_its_steps_and_an_interrupted_one(tmp_path, monkeypatch):
    """$BOOK_TRAIN_LOG (tools/outputs_device.sh): a start and an end line per fit, with the
    steps it resumed at and reached, also when the run was interrupted."""
    log, ck = tmp_path / "train-log.txt", tmp_path / "model.pt"
    fit(nn.Linear(4, 1), mse, regression_data(), steps=5, quiet=True, desc="plain")
    assert not log.exists()  # unset: nothing written
    monkeypatch.setenv("BOOK_TRAIN_LOG", str(log))
    fit(nn.Linear(4, 1), mse, regression_data(), steps=10, checkpoint=ck, quiet=True,
        desc="first")
    with pytest.raises(KeyboardInterrupt):
        fit(nn.Linear(4, 1), interrupted_at(4), regression_data(), steps=25, checkpoint=ck,
            quiet=True, desc="more")
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert [r[1:5] for r in rows] == [["start", "first", "model.pt", "0/10"],
                                      ["end", "first", "model.pt", "10/10"],
                                      ["start", "more", "model.pt", "10/25"],
                                      ["end", "more", "model.pt", "13/25"]]
    assert all(r[5].endswith(" s") and float(r[5][:-2]) >= 0 for r in rows[1::2])
