"""Silent wrong results made clear errors (issue 45, items 11-15): one parser for yes/no
environment variables, shapes that are checked rather than broadcast, values outside their
domain refused, and the recipes' command line and early-checkpoint copy made safe.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import companion.__main__ as cli
from companion import diffusion, flow, kl, metrics, plot, recipes, sde
from companion.models.autoencoder import Autoencoder, worst_perturbation
from companion.models.classifier import Classifier, accuracy
from companion.models.vae import VAE
from companion.run import checks, glue, profiles, results, runtime
from companion.run.checkpoint import CheckpointMismatchError


@pytest.fixture(autouse=True)
def _book_profile_put_back():
    """cli.main sets BOOK_PROFILE for its process; this worker's later notebooks must not
    run in the profile a test asked for (chapter 13 ran in gpu on a CPU)."""
    before = os.environ.get("BOOK_PROFILE")
    yield
    if before is None:
        os.environ.pop("BOOK_PROFILE", None)
    else:
        os.environ["BOOK_PROFILE"] = before


# --- 11. one parser for yes/no environment variables -------------------------------------------
@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("Yes", True),
                                       ("on", True), ("0", False), ("false", False),
                                       ("no", False), ("OFF", False), ("", False),
                                       (" ", False)])
def test_11_yes_no_variables_are_read_one_way(monkeypatch, value, on):
    for var, read in (("BOOK_SMOKE", profiles.smoke_mode), ("BOOK_T4", runtime.t4_emulated)):
        monkeypatch.setenv(var, value)
        assert read() is on, (var, value)


@pytest.mark.parametrize("var, read", [("BOOK_SMOKE", profiles.smoke_mode),
                                       ("BOOK_T4", runtime.t4_emulated)])
def test_11_a_value_that_is_neither_yes_nor_no_is_an_error(monkeypatch, var, read):
    monkeypatch.setenv(var, "maybe")
    with pytest.raises(ValueError, match=f"{var}='maybe'.*1/true/yes/on"):
        read()


def test_11_the_command_line_profile_wins_over_a_bad_environment(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "nonsense")
    assert profiles.get_profile("CI").name == "ci"
    called = {}

    def stub(d, p, dev):  # what fit's progress bar asks: the process's profile
        called.update(p=p.name, process=profiles.get_profile().name)
        raise SystemExit(0)

    monkeypatch.setitem(cli.COMMANDS, "classifier", ("stub", stub))
    monkeypatch.setattr("companion.data.load", lambda *a, **kw: None)
    with pytest.raises(SystemExit):
        cli.main(["classifier", "--profile", "CI", "--device", "cpu"])
    assert called == {"p": "ci", "process": "ci"}


# --- 12. the gpu profile on a CPU asks first ------------------------------------------------
def test_12_the_gpu_profile_on_a_cpu_is_refused_without_yes(monkeypatch, capsys):
    called = []
    monkeypatch.setitem(cli.COMMANDS, "ddpm", ("stub", lambda *a: called.append(a)))
    monkeypatch.setattr("companion.data.load", lambda *a, **kw: None)
    with pytest.raises(SystemExit) as stop:
        cli.main(["ddpm", "--profile", "gpu", "--device", "cpu"])
    assert stop.value.code == 2 and not called
    said = capsys.readouterr().err
    assert "6,000 steps" in said and "--yes" in said and "--profile cpu" in said


# --- 13. shapes are checked, not broadcast ---------------------------------------------------
def test_13_velocity_and_eps_refuse_batches_that_would_broadcast():
    x = torch.randn(1, 2)
    with pytest.raises(checks.ArgumentError, match="shape"):
        flow.velocity_from_eps(torch.randn(4, 2), x, 0.5)
    with pytest.raises(checks.ArgumentError, match="shape"):
        flow.eps_from_velocity(torch.randn(4, 2), x, 0.5)


def test_13_a_prior_that_returns_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"prior_log_p.*\(3,\)"):
        sde.ode_log_likelihood(lambda x, t: -x, torch.randn(3, 2),
                               prior_log_p=lambda z: -0.5 * z.pow(2).sum(1, keepdim=True))


# --- 14. values out of their domain ------------------------------------------------------------
def test_14_chain_clock_refuses_nan_and_a_prepended_alpha_bar_0():
    ab = torch.cumprod(1 - diffusion.linear_betas(10), 0)
    with pytest.raises(ValueError, match="NaN"):
        sde.ChainClock(torch.cat([ab[:3], torch.tensor([float("nan")], dtype=ab.dtype),
                                  ab[4:]]))
    with pytest.raises(ValueError, match="alpha_bar_0"):
        sde.ChainClock(torch.cat([torch.ones(1, dtype=ab.dtype), ab]))


@pytest.mark.parametrize("call", [
    lambda: sde.ode_log_likelihood(lambda x, t: -x, torch.randn(3, 2), rtol=True),
    lambda: sde.dequantize(torch.rand(2, 1, 4, 4) * 255),
    lambda: flow.flow_matching_loss(lambda x, t: x, torch.rand(2, 1, 4, 4) * 255, 4),
    lambda: flow.linear_path(torch.zeros(2, 3), torch.zeros(2, 3), float("nan")),
    lambda: flow.linear_path(torch.zeros(2, 3), torch.zeros(2, 3),
                             torch.tensor([0.5, float("nan")])),
    lambda: flow.vp_to_linear(float("inf"), 1.0),
    lambda: flow.vp_to_linear(float("nan"), 1.0),
], ids=["rtol=True", "dequantize 0..255", "flow matching 0..255", "linear_path nan",
        "linear_path nan in a tensor",
        "vp_to_linear inf", "vp_to_linear nan"])
def test_14_values_outside_their_domain_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_14_a_velocity_field_with_a_coarser_grid_than_the_model_is_refused():
    from companion.models.unet import UNet, preset

    model = UNet(preset("tiny", T=11))  # trained on K = 10
    with pytest.raises(ValueError, match="K"):
        flow.velocity_field(model, 4)


def test_14_results_refuse_what_they_cannot_quote_and_find_any_case(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    results.save("ch9", {"fd": 1.0}, "CI")
    assert results.load("ch9", "ci") == {"fd": 1.0}
    path = results.results_path("ch9", "ci")
    for text in ("[1, 2]", '{"fd": NaN}'):
        path.write_text(text)
        with pytest.raises(ValueError, match="results"):
            results.load("ch9", "ci")


# --- 15. left from the earlier probe ---------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: glue.glue("x", float("nan"), display=False),
    lambda: diffusion.cosine_betas(10, s=-1),
    lambda: diffusion.cosine_betas(10, max_beta=0),
    lambda: diffusion.cosine_betas(10, max_beta=1),  # beta = 1, which Diffusion refuses
    lambda: VAE(hidden=(0,)),
    lambda: Classifier(width=0),
    lambda: Autoencoder(latent_dim=2.7),
    lambda: VAE(4).elbo_terms(torch.rand(2, 1, 28, 28).round(), n_samples=0),
    lambda: accuracy(Classifier(width=2).eval(), torch.rand(3, 1, 28, 28), torch.tensor([1])),
    lambda: worst_perturbation(Autoencoder(2), torch.rand(2, 1, 28, 28), float("nan")),
    lambda: metrics.mean_top_probability(torch.zeros(0, 10)),
    lambda: kl.kl_quadrature(lambda g: -g ** 2, lambda g: -g ** 2, torch.linspace(3, -3, 50)),
    lambda: plot.image_grid(torch.rand(2, 1, 4, 4) * 255),
    lambda: plot.image_grid(torch.rand(2, 1, 4, 4) * 2 - 1),
], ids=["glue nan", "cosine s<0", "cosine max_beta 0", "cosine max_beta 1",
        "VAE hidden 0", "Classifier width 0",
        "Autoencoder latent 2.7", "elbo n_samples 0", "accuracy one label",
        "worst_perturbation nan", "top probability empty", "kl decreasing grid",
        "image_grid 0..255", "image_grid [-1, 1]"])
def test_15_silent_cases_of_the_earlier_probe_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_15_a_foreign_checkpoint_is_not_left_at_the_ddpm_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    p = profiles.get_profile("ci")
    model = nn.Linear(2, 1)
    from companion.train import fit

    foreign = tmp_path / "foreign.pt"
    fit(model, lambda m, b: m(b).pow(2).mean(), torch.randn(4, 2), steps=1, quiet=True,
        checkpoint=foreign)
    x = torch.rand(8, 1, 28, 28)
    with pytest.raises(CheckpointMismatchError):
        recipes.ddpm(x, p, "cpu", resume_from=foreign)
    assert not recipes.ddpm_checkpoint(p).exists()


@pytest.mark.slow
def test_15_ddpms_copy_of_the_early_checkpoint_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    p = profiles.get_profile("ci")
    x = torch.rand(8, 1, 28, 28)
    monkeypatch.setattr(recipes.pixel, "ddpm_settings",  # where ddpm looks it up
                        lambda prof: dict(preset="tiny", T=100, steps=4, batch_size=4,
                                          lr=1e-3, ema=0.9))
    recipes.ddpm(x, p, "cpu", steps=2)
    early = recipes.ddpm_checkpoint(p, 2)
    import shutil

    def interrupted_copy(src, dst, *a, **kw):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", interrupted_copy)
    monkeypatch.setattr(shutil, "copy2", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        recipes.ddpm(x, p, "cpu", resume_from=early)
    full = recipes.ddpm_checkpoint(p)
    assert not full.exists() or torch.load(full, weights_only=True)["step"] == 2
    assert not list(full.parent.glob("*.tmp"))


def test_14_json_results_written_by_hand_are_still_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    path = results.results_path("ch9", "ci")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fd": 2.5, "name": "x"}))
    assert results.load("ch9", "ci") == {"fd": 2.5, "name": "x"}
