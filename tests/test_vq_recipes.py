"""Chapter 19's recipes (companion.recipes): the four VQ-VAEs, the rule that picks the one
the priors model, the priors kept at stages of one run, chapter 11's denoiser followed the
same way, and clear errors for bad settings."""

from types import SimpleNamespace

import pytest
import torch

from companion import recipes
from companion.models.code_prior import ARPrior, CodeDenoiser
from companion.models.quantizer import FSQ
from companion.run.checkpoint import CheckpointMismatchError
from companion.run.profiles import get_profile

CI = get_profile("ci")


@pytest.fixture
def short(monkeypatch, tmp_path):
    """The ci recipes cut to a few updates, in a cache of their own; 40 grey digits."""
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(recipes.discrete, "vq_steps", lambda profile, n: 4)
    vq, lat = recipes.vq_settings, recipes.latent_settings
    monkeypatch.setattr(recipes.discrete, "vq_settings", lambda p: {**vq(p), "steps": 8})
    for family in (recipes.latents, recipes.discrete):  # chapter 11's, and vq_settings' own
        monkeypatch.setattr(family, "latent_settings", lambda p: {**lat(p), "steps": 8,
                                                                  "vae_epochs": 1})
    torch.set_default_dtype(torch.float32)
    return torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(19))


def test_the_settings_match_chapter_11s_compute():
    for name in ("ci", "cpu", "gpu"):
        p = get_profile(name)
        s, s11 = recipes.vq_settings(p), recipes.latent_settings(p)
        assert s["steps"] == s11["steps"] and s["batch_size"] == s11["vae_batch"]
        assert s["K"] == 64 and FSQ(s["levels"]).K == s["K"]
    # 2,000 digits in batches of 64: 32 updates an epoch, 4 epochs in ci, times 1.31
    assert recipes.vq_steps(CI, 2000) == round(1.31 * 4 * 32) == 168


def test_the_longer_run_of_a_prior_starts_with_the_matched_budget_in_files_of_its_own():
    cpu = get_profile("cpu")
    s = recipes.vq_settings(cpu)
    assert s["long_steps"] == recipes.PRIOR_LONGER * s["steps"] == 96_000
    assert [round(f * s["long_steps"]) for f in recipes.long_stages(cpu)] == [
        3_000, 6_000, 12_000, 24_000, 48_000]
    for p in (CI, get_profile("gpu")):
        s = recipes.vq_settings(p)
        assert round(recipes.long_stages(p)[0] * s["long_steps"]) == s["steps"]
    # a GPU trains at least as long as 2 cores do
    assert recipes.vq_settings(get_profile("gpu"))["long_steps"] >= 96_000
    long = recipes.code_prior_checkpoint(CI, 150, variant="fsq", kind="autoregressive",
                                         long=True)
    assert long.name == "ch19-autoregressive-prior-fsq-long-step150-ci.pt"
    assert recipes.code_prior_checkpoint(CI, long=True) != recipes.code_prior_checkpoint(CI)
    with pytest.raises(ValueError, match="long must be True"):
        recipes.code_prior(torch.rand(2, 1, 28, 28), CI, "cpu", vq=None, variant="fsq",
                           long="yes")


@pytest.mark.slow  # trains four small autoencoders for a few steps
def test_four_variants_one_remedy_each(short):
    models = {v: recipes.vqvae(short, CI, "cpu", variant=v) for v in recipes.VQ_VARIANTS}
    plain, ema, restart, fsq = (models[v][0] for v in recipes.VQ_VARIANTS)
    assert not plain.training and plain.quantizer.codebook.requires_grad
    assert ema.quantizer.ema  # the codebook a buffer, moved by the averages
    assert "codebook" in dict(ema.quantizer.named_buffers())
    assert isinstance(fsq.quantizer, FSQ) and fsq.K == plain.K == 64
    runs = {v: r for v, (_, r) in models.items()}
    assert all(r.steps == 4 for r in runs.values())
    assert "restarted" in runs["restart"].history and "restarted" not in runs["plain"].history
    assert set(runs["plain"].history) >= {"reconstruction", "usage", "perplexity"}
    again, run = recipes.vqvae(short, CI, "cpu", variant="ema")  # load, not train
    assert run.resumed_at == run.steps == 4
    assert torch.equal(again.quantizer.codebook, ema.quantizer.codebook)
    with pytest.raises(ValueError, match="variant must be one of"):
        recipes.vqvae(short, CI, "cpu", variant="gumbel")


@pytest.mark.slow  # over a second: make test, not check-fast
def test_another_seed_is_another_run_in_a_file_of_its_own(short, tmp_path):
    first, _ = recipes.vqvae(short, CI, "cpu", variant="plain")
    second, run = recipes.vqvae(short, CI, "cpu", variant="plain", seed=1)
    assert run.resumed_at is None or run.resumed_at < run.steps  # trained, not loaded
    assert not torch.equal(first.quantizer.codebook, second.quantizer.codebook)
    files = sorted(p.name for p in tmp_path.rglob("ch19-vqvae-plain*.pt"))
    assert files == ["ch19-vqvae-plain-ci.pt", "ch19-vqvae-plain-seed1-ci.pt"]
    again, run = recipes.vqvae(short, CI, "cpu", variant="plain", seed=1)
    assert run.resumed_at == run.steps
    assert torch.equal(again.quantizer.codebook, second.quantizer.codebook)
    with pytest.raises(ValueError, match="seed"):
        recipes.vqvae(short, CI, "cpu", variant="plain", seed=-1)


def test_the_chosen_run_has_the_highest_late_reconstruction():
    def run(values):
        return SimpleNamespace(history={"reconstruction": values})

    runs = {"a": run([-90.0] * 18 + [-80.0, -80.0]),   # best at the end
            "b": run([-70.0] * 18 + [-85.0, -85.0]),   # best early, worse at the end
            "c": run([-100.0] * 20)}
    assert recipes.chosen_variant(runs) == "a"
    with pytest.raises(ValueError, match="at least one run"):
        recipes.chosen_variant({})


@pytest.mark.slow  # trains two small transformers three times for a few steps
def test_the_priors_are_stages_of_one_run(short, monkeypatch, tmp_path):
    vq, _ = recipes.vqvae(short, CI, "cpu", variant="fsq")
    for kind, network in (("masked", CodeDenoiser), ("autoregressive", ARPrior)):
        kept = recipes.snapshots(recipes.code_prior, recipes.code_prior_checkpoint, short,
                                 CI, "cpu", total=8, vq=vq, variant="fsq", kind=kind)
        assert sorted(kept) == [2, 4, 8]
        assert [kept[k][1].steps for k in (2, 4, 8)] == [2, 4, 8]
        assert isinstance(kept[8][0], network) and not kept[8][0].training
        for cut in (2, 4, None):
            assert recipes.code_prior_checkpoint(CI, cut, variant="fsq", kind=kind).exists()
        monkeypatch.setenv("BOOK_CACHE", str(tmp_path / f"straight-{kind}"))
        straight, _ = recipes.code_prior(short, CI, "cpu", vq=vq, variant="fsq", kind=kind)
        for a, b in zip(kept[8][0].parameters(), straight.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    assert recipes.code_prior_checkpoint(CI).name == "ch19-masked-prior-fsq-ci.pt"


@pytest.mark.slow  # over 0.7 s: make test, not check-fast
def test_a_prior_of_another_autoencoders_codes_is_refused(short):
    vq, _ = recipes.vqvae(short, CI, "cpu", variant="fsq")
    recipes.code_prior(short, CI, "cpu", vq=vq, variant="fsq")
    with torch.no_grad():
        vq.encoder[0].weight.add_(0.01)  # another autoencoder under the same name
    with pytest.raises(CheckpointMismatchError, match="codec"):
        recipes.code_prior(short, CI, "cpu", vq=vq, variant="fsq")
    with pytest.raises(ValueError, match="kind must be one of"):
        recipes.code_prior(short, CI, "cpu", vq=vq, variant="fsq", kind="pixelcnn")
    with pytest.raises(ValueError, match="variant must be one of"):
        recipes.code_prior(short, CI, "cpu", vq=vq, variant="vq")


@pytest.mark.slow  # trains chapter 11's autoencoder and its denoiser twice
def test_chapter_11s_denoiser_can_be_followed_along_its_budget(short, monkeypatch, tmp_path):
    vae, _ = recipes.latent_vae(short, CI, "cpu", source="test")
    kept = recipes.snapshots(lambda x, *a, **kw: recipes.latent_denoiser(vae, x, *a, **kw),
                             recipes.latent_checkpoint, short, CI, "cpu", total=8, scale=1.0)
    assert sorted(kept) == [2, 4, 8] and kept[8][1].steps == 8
    assert recipes.latent_checkpoint(CI).name == "ch11-latent-ddpm-ci.pt"  # chapter 11's
    assert recipes.latent_checkpoint(CI, 2).name == "ch11-latent-ddpm-step2-ci.pt"
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "straight"))
    vae2, _ = recipes.latent_vae(short, CI, "cpu", source="test")
    straight, _ = recipes.latent_denoiser(vae2, short, CI, "cpu", scale=1.0)
    for a, b in zip(kept[8][0].parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["plain", "ema", "fsq"])
def test_the_start_is_the_model_the_run_trains_from(short, monkeypatch, variant):
    seen = {}

    def no_training(model, *args, **kw):  # what vqvae hands to fit, before any update
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        return SimpleNamespace(steps=0)

    monkeypatch.setattr(recipes.discrete, "fit", no_training)  # where vqvae calls it
    state = torch.get_rng_state()
    start = recipes.vqvae_start(CI, variant, seed=2)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's draws untouched
    recipes.vqvae(short, CI, "cpu", variant=variant, seed=2)
    assert seen.keys() == start.state_dict().keys()
    assert all(torch.equal(seen[k], v) for k, v in start.state_dict().items())
    other = recipes.vqvae_start(CI, variant, seed=3).state_dict()
    assert any(not torch.equal(other[k], v) for k, v in start.state_dict().items())
    with pytest.raises(ValueError, match="variant must be one of"):
        recipes.vqvae_start(CI, "gumbel")
