"""A misuse sample of companion's public functions (issue 34): how each bad input ends.

    python -m tests.probes.probe_inputs          # a few seconds
    python -m tests.probes.probe_inputs -v       # one line per case

Each case calls one public function with one misuse (or, marked "valid", with an input it
must take: NumPy and tensor scalars, whole floats) and is classed automatically:
  clear    a ValueError / TypeError / LookupError / OSError / FloatingPointError (or one of
           companion's errors) whose message names what the case names (the argument);
  cryptic  any other exception, or one whose message does not name it, or a valid input
           refused;
  silent   a misuse that returns (a wrong result, or NaN passed on);
  ok       a valid input that returns what it should.
Measurements, not tests: each finding's test is in tests/.
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections import Counter

import numpy as np
import torch
from torch import nn

CLEAR = (ValueError, TypeError, LookupError, OSError, FloatingPointError)


def cases():
    from companion import data, kl, metrics, plot, toy
    from companion import diffusion as dm
    from companion import inpainting as ip
    from companion import latent_diffusion as ld
    from companion.models import autoencoder as ae
    from companion.models.classifier import Classifier, predict
    from companion.models.hvae import HierarchicalVAE
    from companion.models.latent_denoiser import LatentDenoiser
    from companion.models.unet import UNet, preset
    from companion.models.vae import VAE, ELBOLoss, to_8bit_range
    from companion.run import runtime
    from companion.train import EMA, fit

    torch.manual_seed(0)
    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    wrong_eps = lambda x, t: torch.zeros(x.shape[0], 1, 1, 1)  # noqa: E731 (broadcasts)
    img01 = torch.rand(2, 1, 28, 28)
    img255 = img01 * 255
    mask = ip.make_mask("left", 2)
    vae = VAE(latent_dim=2, hidden=(16,))
    vae8 = VAE(latent_dim=2, hidden=(16,), likelihood="discretized")
    hv = HierarchicalVAE((4, 2), (32, 16))
    den = LatentDenoiser(dim=4, width=16, depth=1, T=10)
    unet = UNet(preset("tiny", T=10))
    lin = nn.Linear(3, 1)
    X, Y = torch.randn(16, 3), torch.randn(16, 1)
    mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    i64 = np.int64
    z4 = torch.randn(2, 4)
    gm = toy.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[0.0], [1.0]]),
                             torch.tensor([1.0, 1.0]))
    lg = toy.LinearGaussian(torch.randn(3, 2), torch.zeros(3), 0.5)
    fake_q = lambda xb, s: (torch.randn(s, len(xb), 2), torch.zeros(s, len(xb)))  # noqa

    E, V = "error", "valid"
    return [
        # --- issue 34's own findings --------------------------------------------------------
        ("inpainting", "inpaint 0..255", lambda: ip.inpaint(d, zero_eps, img255, mask,
                                                             quiet=True), E, "y|range|255"),
        ("inpainting", "denoise 0..255", lambda: ip.denoise(d, zero_eps, img255 + 0.1, 0.1,
                                                             quiet=True), E, "y|range|255"),
        ("inpainting", "vae_map 0..255", lambda: ip.vae_map(vae, img255, mask, steps=1), E,
         "y|range|255"),
        ("inpainting", "vae_pseudo_gibbs 0..255", lambda: ip.vae_pseudo_gibbs(
            vae, img255, mask, iterations=1), E, "y|range|255"),
        ("latent_diffusion", "encode 0..255", lambda: ld.encode(vae8, img255, 1.0), E,
         "x|range|255"),
        ("diffusion", "sample_ddim wrong eps shape", lambda: d.sample_ddim(
            wrong_eps, (2, 1, 4, 4), n_steps=3), E, "shape"),
        ("diffusion", "annealed_langevin wrong score shape", lambda: dm.annealed_langevin(
            lambda x, s: torch.zeros(x.shape[0], 1, 1, 1), torch.zeros(2, 1, 4, 4), [1.0, 0.5],
            [0.1, 0.05], 2, quiet=True), E, "shape"),
        ("diffusion", "sample wrong eps shape", lambda: d.sample(wrong_eps, (2, 1, 4, 4),
                                                                 quiet=True), E, "shape"),
        ("models", "LatentDenoiser t=0", lambda: den(z4, torch.zeros(2, dtype=torch.long)), E,
         "t|1..10"),
        ("models", "LatentDenoiser t=T+1", lambda: den(z4, torch.full((2,), 11)), E,
         "t|1..10"),
        ("models", "UNet t=0", lambda: unet(torch.zeros(2, 1, 28, 28),
                                            torch.zeros(2, dtype=torch.long)), E, "t|1..10"),
        ("data", "read_idx of a valid file named like MNIST", lambda: _valid_idx(data), V,
         None),
        ("data", "cached MNIST 100 images, 60 labels", lambda: _mismatched_idx(data, 100, 60),
         E, "label|images|100|60"),
        ("data", "cached MNIST label 254", lambda: _mismatched_idx(data, 10, 10, 254), E,
         "label|254"),
        ("models", "bf16 images on the 8-bit grid check",
         lambda: _bf16_grid(VAE(latent_dim=2, hidden=(16,), likelihood="discretized")), E,
         "level"),
        ("kl", "binomial p=0, k=0", lambda: kl.binomial_log_prob_of_frequency(3, 0, 0.0), V,
         lambda r: float(r) == 0.0),
        ("kl", "binomial p=0, k=1", lambda: kl.binomial_log_prob_of_frequency(3, 1, 0.0), V,
         lambda r: float(r) == -math.inf),
        ("kl", "binomial p=1.5", lambda: kl.binomial_log_prob_of_frequency(3, 1, 1.5), E, "p"),
        ("models", "HierarchicalVAE.sample(0)", lambda: hv.sample(0), V,
         lambda r: r.shape[0] == 0),
        ("models", "VAE.sample(0)", lambda: vae.sample(0), V, lambda r: r.shape[0] == 0),
        ("runtime", "seed_everything(2**70)", lambda: runtime.seed_everything(2**70), E,
         "seed"),
        ("runtime", "seed_everything(np.int64(3))", lambda: runtime.seed_everything(i64(3)), V,
         None),
        ("runtime", "seed_everything(-1)", lambda: runtime.seed_everything(-1), E, "seed"),
        ("runtime", "seed_everything('3')", lambda: runtime.seed_everything("3"), E, "seed"),
        ("models", "fit_linear_als iters=0", lambda: _als(ae, 0), E, "iters"),
        # --- comparisons as checks: strings, None, NaN --------------------------------------
        ("models", "add_noise(nan)", lambda: ae.add_noise(img01, float("nan")), E,
         "noise_std"),
        ("models", "add_noise('a')", lambda: ae.add_noise(img01, "a"), E, "noise_std"),
        ("models", "add_noise(None)", lambda: ae.add_noise(img01, None), E, "noise_std"),
        ("models", "add_noise(np.float32(0.1))", lambda: ae.add_noise(img01, np.float32(0.1)),
         V, None),
        ("models", "add_noise(tensor 0.1)", lambda: ae.add_noise(img01, torch.tensor(0.1)), V,
         None),
        ("models", "ELBOLoss(beta=nan)", lambda: ELBOLoss(beta=float("nan")), E, "beta"),
        ("models", "ELBOLoss(beta='1')", lambda: ELBOLoss(beta="1"), E, "beta"),
        ("models", "ELBOLoss(beta=None)", lambda: ELBOLoss(beta=None), E, "beta"),
        ("models", "ELBOLoss(warmup_steps=2.5)", lambda: ELBOLoss(warmup_steps=2.5), E,
         "warmup"),
        ("models", "ELBOLoss(beta=np.float64(0.5))", lambda: ELBOLoss(beta=np.float64(0.5)),
         V, None),
        ("models", "VAE(sigma=inf)", lambda: VAE(likelihood="gaussian", sigma=float("inf")), E,
         "sigma"),
        ("models", "VAE(sigma=nan)", lambda: VAE(likelihood="gaussian", sigma=float("nan")), E,
         "sigma"),
        ("models", "VAE(sigma=-1)", lambda: VAE(likelihood="gaussian", sigma=-1.0), E,
         "sigma"),
        ("models", "VAE(latent_dim=2.5)", lambda: VAE(latent_dim=2.5), E, "latent_dim"),
        ("models", "VAE(latent_dim=0)", lambda: VAE(latent_dim=0), E, "latent_dim"),
        ("models", "VAE(latent_dim=np.int64(2))", lambda: VAE(latent_dim=i64(2)), V, None),
        ("models", "VAE.sample(-1)", lambda: vae.sample(-1), E, "n"),
        ("models", "VAE.sample(2.5)", lambda: vae.sample(2.5), E, "n"),
        ("models", "VAE.sample(np.int64(2))", lambda: vae.sample(i64(2)), V,
         lambda r: r.shape[0] == 2),
        ("models", "HierarchicalVAE.sample(-1)", lambda: hv.sample(-1), E, "n"),
        ("kl", "kl_normal(var_p=nan)", lambda: kl.kl_normal(0.0, float("nan"), 0.0, 1.0), E,
         "var|nan"),
        ("kl", "kl_normal(var_q=None)", lambda: kl.kl_normal(0.0, 1.0, 0.0, None), E,
         "var_q"),
        ("kl", "kl_normal(mu_p='a')", lambda: kl.kl_normal("a", 1.0, 0.0, 1.0), E, "mu_p"),
        ("kl", "kl_normal(var_p=0)", lambda: kl.kl_normal(0.0, 0.0, 0.0, 1.0), E, "var"),
        ("kl", "kl_normal valid floats", lambda: kl.kl_normal(0.0, 1.0, 0.0, 1.0), V,
         lambda r: float(r) == 0.0),
        ("kl", "kl_discrete p not summing to 1", lambda: kl.kl_discrete(
            torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5])), E, "sum|p"),
        ("kl", "kl_discrete None", lambda: kl.kl_discrete(None, torch.tensor([0.5, 0.5])), E,
         "p"),
        ("kl", "kl_diag_standard None", lambda: kl.kl_diag_standard(None, None), E,
         "mu|logvar"),
        ("kl", "kl_monte_carlo n=2.5", lambda: kl.kl_monte_carlo(
            torch.distributions.Normal(0., 1.), torch.distributions.Normal(0., 1.), 2.5), E,
         "n"),
        ("kl", "kl_monte_carlo n=0", lambda: kl.kl_monte_carlo(
            torch.distributions.Normal(0., 1.), torch.distributions.Normal(0., 1.), 0), E, "n"),
        ("kl", "binomial k > n", lambda: kl.binomial_log_prob_of_frequency(3, 4, 0.5), E, "k"),
        ("kl", "binomial n=None", lambda: kl.binomial_log_prob_of_frequency(None, 1, 0.5), E,
         "n"),
        ("kl", "bernoulli_kl a=1.5", lambda: kl.bernoulli_kl(1.5, 0.5), E, "a"),
        ("kl", "bernoulli_kl b=nan", lambda: kl.bernoulli_kl(0.5, float("nan")), E, "b"),
        # --- float sizes, zero batches, None ------------------------------------------------
        ("data", "load(n_train=2.5)", lambda: data.load(n_train=2.5, verbose=False), E,
         "n_train"),
        ("data", "load(n_train=0)", lambda: data.load(n_train=0, verbose=False), E, "n_train"),
        ("data", "load(n_train=-5)", lambda: data.load(n_train=-5, verbose=False), E,
         "n_train"),
        ("data", "load(n_train='100')", lambda: data.load(n_train="100", verbose=False), E,
         "n_train"),
        ("data", "load(n_train=np.int64(50))", lambda: data.load(n_train=i64(50),
                                                                  verbose=False), V,
         lambda r: len(r.x_train) == 50),
        ("data", "load(name='cifar')", lambda: data.load("cifar", verbose=False), E, "cifar"),
        ("data", "batches(batch_size=0)", lambda: list(data.batches(X, batch_size=0)), E,
         "batch_size"),
        ("data", "batches(batch_size=2.5)", lambda: list(data.batches(X, batch_size=2.5)), E,
         "batch_size"),
        ("data", "batches(None)", lambda: list(data.batches(None, batch_size=2)), E,
         "tensor"),
        ("data", "binarize(None)", lambda: data.binarize(None), E, "x|tensor"),
        ("data", "binarize 0..255", lambda: data.binarize(img255), E, "range|255|\\[0, 1\\]"),
        ("data", "check_images wrong shape", lambda: data.check_images(torch.rand(2, 784)), E,
         "shape"),
        ("metrics", "iw_estimate(k=2.5)", lambda: metrics.iw_estimate(
            fake_q, lambda x, z: torch.zeros(z.shape[:2]), torch.zeros(3, 2), 2.5), E, "k"),
        ("metrics", "iw_estimate(k=0)", lambda: metrics.iw_estimate(
            fake_q, lambda x, z: torch.zeros(z.shape[:2]), torch.zeros(3, 2), 0), E, "k"),
        ("metrics", "iw_estimate(batch_size=0)", lambda: metrics.iw_estimate(
            fake_q, lambda x, z: torch.zeros(z.shape[:2]), torch.zeros(3, 2), 2,
            batch_size=0), E, "batch_size"),
        ("metrics", "test_elbo(batch_size=0)", lambda: metrics.test_elbo(
            vae, img01, batch_size=0), E, "batch_size"),
        ("metrics", "encode_all(batch_size=0)", lambda: metrics.encode_all(
            vae, img01, batch_size=0), E, "batch_size"),
        ("metrics", "auroc(None)", lambda: metrics.auroc(None, torch.tensor([0, 1])), E,
         "scores"),
        ("metrics", "auroc one class", lambda: metrics.auroc(torch.tensor([0.1, 0.2]),
                                                             torch.tensor([1, 1])), E,
         "class|label"),
        ("metrics", "frechet_distance 1 sample", lambda: metrics.frechet_distance(
            torch.randn(1, 3), torch.randn(5, 3)), E, "sample|a"),
        ("metrics", "frechet_distance dims differ", lambda: metrics.frechet_distance(
            torch.randn(5, 3), torch.randn(5, 4)), E, "dim|shape|feature"),
        ("metrics", "frechet_distance(None, ...)", lambda: metrics.frechet_distance(
            None, torch.randn(5, 3)), E, "a"),
        ("models", "classifier predict batch_size=0", lambda: predict(
            Classifier(), img01, batch_size=0), E, "batch_size"),
        ("models", "autoencoder encode_all batch_size=0", lambda: ae.encode_all(
            ae.Autoencoder(2, hidden=(8,)), img01, batch_size=0), E, "batch_size"),
        ("latent_diffusion", "check_labels(None)", lambda: ld.check_labels(None), E, "labels"),
        ("metrics", "active_units(threshold=nan)", lambda: metrics.active_units(
            torch.randn(5, 2), float("nan")), E, "threshold"),
        ("metrics", "label_histogram(None)", lambda: metrics.label_histogram(None), E,
         "probs"),
        # --- numpy integers and whole floats where ints are asked ---------------------------
        ("diffusion", "linear_betas(np.int64(10))", lambda: dm.linear_betas(i64(10)), V,
         lambda r: len(r) == 10),
        ("diffusion", "linear_betas(10.5)", lambda: dm.linear_betas(10.5), E, "T"),
        ("diffusion", "linear_betas(0)", lambda: dm.linear_betas(0), E, "T"),
        ("diffusion", "linear_betas(None)", lambda: dm.linear_betas(None), E, "T"),
        ("diffusion", "linear_betas(start=nan)", lambda: dm.linear_betas(10, float("nan")), E,
         "start|beta"),
        ("diffusion", "cosine_betas(np.int64(10))", lambda: dm.cosine_betas(i64(10)), V,
         lambda r: len(r) == 10),
        ("diffusion", "cosine_betas(T=-1)", lambda: dm.cosine_betas(-1), E, "T"),
        ("diffusion", "spaced_timesteps(10, np.int64(3))",
         lambda: dm.spaced_timesteps(10, i64(3)), V, lambda r: len(r) == 3),
        ("diffusion", "spaced_timesteps(10, 2.5)", lambda: dm.spaced_timesteps(10, 2.5), E,
         "n_steps"),
        ("diffusion", "spaced_timesteps(10, 0)", lambda: dm.spaced_timesteps(10, 0), E,
         "n_steps"),
        ("diffusion", "q_sample t=np.int64(3)", lambda: d.q_sample(img01, i64(3),
                                                                    torch.randn_like(img01)),
         V, None),
        ("diffusion", "q_sample t=0", lambda: d.q_sample(img01, 0, torch.randn_like(img01)), E,
         "t"),
        ("diffusion", "q_sample t=2.5", lambda: d.q_sample(img01, 2.5, torch.randn_like(img01)),
         E, "t"),
        ("diffusion", "q_sample noise None", lambda: d.q_sample(img01, 3, None), E, "noise"),
        ("diffusion", "sample_ddim n_steps=np.int64(3)", lambda: d.sample_ddim(
            zero_eps, (2, 1, 4, 4), n_steps=i64(3)), V, None),
        ("diffusion", "sample_ddim eta=nan", lambda: d.sample_ddim(
            zero_eps, (2, 1, 4, 4), n_steps=3, eta=float("nan")), E, "eta"),
        ("diffusion", "sample_ddim eta=-1", lambda: d.sample_ddim(
            zero_eps, (2, 1, 4, 4), n_steps=3, eta=-1.0), E, "eta"),
        ("diffusion", "sample_ddim n_steps=0", lambda: d.sample_ddim(
            zero_eps, (2, 1, 4, 4), n_steps=0), E, "n_steps"),
        ("diffusion", "Diffusion(betas with nan)", lambda: dm.Diffusion(
            torch.tensor([0.1, float("nan")])), E, "beta"),
        ("diffusion", "Diffusion(betas=None)", lambda: dm.Diffusion(None), E, "beta"),
        ("diffusion", "Diffusion(betas=[0.1, 1.5])", lambda: dm.Diffusion(
            torch.tensor([0.1, 1.5])), E, "beta"),
        ("diffusion", "annealed_langevin n_steps=2.5", lambda: dm.annealed_langevin(
            lambda x, s: torch.zeros_like(x), torch.zeros(2, 3), [1.0], [0.1], 2.5,
            quiet=True), E, "n_steps"),
        ("diffusion", "annealed_langevin levels/steps lengths",
         lambda: dm.annealed_langevin(lambda x, s: torch.zeros_like(x), torch.zeros(2, 3),
                                      [1.0, 0.5], [0.1], 2, quiet=True), E, "step.size"),
        ("inpainting", "make_mask n=2.5", lambda: ip.make_mask("left", 2.5), E, "n"),
        ("inpainting", "repaint_schedule jump=0", lambda: ip.repaint_schedule(10, 0), E,
         "jump"),
        ("inpainting", "repaint_schedule n_steps=np.int64(10)",
         lambda: ip.repaint_schedule(i64(10)), V, None),
        ("inpainting", "denoise sigma=np.float64(0.1)", lambda: ip.denoise(
            d, zero_eps, img01 * 2 - 1, np.float64(0.1), quiet=True), V, None),
        ("inpainting", "denoise sigma=tensor(0.1)", lambda: ip.denoise(
            d, zero_eps, img01 * 2 - 1, torch.tensor(0.1), quiet=True), V, None),
        ("inpainting", "vae_map steps=np.int64(1)", lambda: ip.vae_map(
            vae, img01, mask, steps=i64(1)), V, None),
        ("inpainting", "vae_map lr=nan", lambda: ip.vae_map(vae, img01, mask, steps=1,
                                                          lr=float("nan")), E, "lr"),
        ("latent_diffusion", "encode scale=nan", lambda: ld.encode(vae8, img01 * 2 - 1,
                                                                   float("nan")), E, "scale"),
        ("latent_diffusion", "encode scale=np.float32(1)", lambda: ld.encode(
            vae8, img01 * 2 - 1, np.float32(1.0)), V, None),
        ("latent_diffusion", "drop_labels p=nan", lambda: ld.drop_labels(
            torch.tensor([1, 2]), float("nan")), E, "p|probability"),
        ("latent_diffusion", "drop_labels p='a'", lambda: ld.drop_labels(
            torch.tensor([1, 2]), "a"), E, "p|probability"),
        ("latent_diffusion", "latent_scale None", lambda: ld.latent_scale(None), E, "codes"),
        # --- plot ---------------------------------------------------------------------------
        ("plot", "image_grid nrow=0", lambda: plot.image_grid(img01, nrow=0), E, "nrow"),
        ("plot", "image_grid nrow=2.5", lambda: plot.image_grid(img01, nrow=2.5), E, "nrow"),
        ("plot", "image_grid None", lambda: plot.image_grid(None), E, "x|tensor"),
        ("plot", "image_grid nrow=np.int64(2)", lambda: plot.image_grid(img01, nrow=i64(2)),
         V, None),
        ("plot", "smooth window=0", lambda: plot.smooth([1.0, 2.0, 3.0], 0), E, "window"),
        ("plot", "smooth window=2.5", lambda: plot.smooth([1.0, 2.0, 3.0], 2.5), E, "window"),
        ("plot", "smooth values=None", lambda: plot.smooth(None, 2), E, "values"),
        ("plot", "loss_curves missing key", lambda: plot.loss_curves({"loss": [1.0]},
                                                                     keys=("kl",)), E, "kl"),
        ("plot", "subplots nrows=0", lambda: plot.subplots(0), E, "nrows"),
        # --- toy -----------------------------------------------------------------------------
        ("toy", "LinearGaussian sigma=nan", lambda: toy.LinearGaussian(
            torch.randn(3, 2), torch.zeros(3), float("nan")), E, "sigma"),
        ("toy", "LinearGaussian sigma=-1", lambda: toy.LinearGaussian(
            torch.randn(3, 2), torch.zeros(3), -1.0), E, "sigma"),
        ("toy", "LinearGaussian.sample(2.5)", lambda: lg.sample(2.5), E, "n"),
        ("toy", "LinearGaussian.sample(np.int64(2))", lambda: lg.sample(i64(2)), V, None),
        ("toy", "GaussianMixture.sample(0.5)", lambda: gm.sample(0.5), E, "n"),
        ("toy", "GaussianMixture weights not summing to 1", lambda: toy.GaussianMixture(
            torch.tensor([0.5, 0.6]), torch.tensor([[0.0], [1.0]]),
            torch.tensor([1.0, 1.0])), E, "weights"),
        ("toy", "NoisePredictorMLP(T=0)", lambda: toy.NoisePredictorMLP(T=0), E, "T"),
        # --- train ---------------------------------------------------------------------------
        ("train", "fit batch_size=np.int64(4)", lambda: fit(
            lin, mse, (X, Y), steps=2, batch_size=i64(4), quiet=True), V, None),
        ("train", "fit batch_size=0", lambda: fit(lin, mse, (X, Y), steps=2, batch_size=0,
                                                  quiet=True), E, "batch_size"),
        ("train", "fit batch_size=2.5", lambda: fit(lin, mse, (X, Y), steps=2,
                                                    batch_size=2.5, quiet=True), E,
         "batch_size"),
        ("train", "fit lr=nan", lambda: fit(lin, mse, (X, Y), steps=2, lr=float("nan"),
                                            quiet=True), E, "lr"),
        ("train", "fit clip='a'", lambda: fit(lin, mse, (X, Y), steps=2, clip="a",
                                              quiet=True), E, "clip"),
        ("train", "fit clip=nan", lambda: fit(lin, mse, (X, Y), steps=2, clip=float("nan"),
                                              quiet=True), E, "clip"),
        ("train", "fit ema=nan", lambda: fit(lin, mse, (X, Y), steps=2, ema=float("nan"),
                                             quiet=True), E, "ema|decay"),
        ("train", "fit ema='a'", lambda: fit(lin, mse, (X, Y), steps=2, ema="a", quiet=True),
         E, "ema|decay"),
        ("train", "fit optimizer of another model", lambda: fit(
            lin, mse, (X, Y), steps=2, quiet=True,
            optimizer=torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.1)), E,
         "optimizer"),
        ("train", "fit metric a string", lambda: fit(
            lin, lambda m, b: (mse(m, b), {"a": "x"}), (X, Y), steps=2, quiet=True), E, "'a'"),
        ("train", "fit metric a vector", lambda: fit(
            lin, lambda m, b: (mse(m, b), {"a": torch.ones(3)}), (X, Y), steps=2,
            quiet=True), E, "'a'"),
        ("train", "fit metric None", lambda: fit(
            lin, lambda m, b: (mse(m, b), {"a": None}), (X, Y), steps=2, quiet=True), E,
         "'a'"),
        ("train", "fit data None", lambda: fit(lin, mse, None, steps=2, quiet=True), E,
         "data"),
        ("train", "fit steps=np.int64(2)", lambda: fit(lin, mse, (X, Y), steps=i64(2),
                                                       quiet=True), V, None),
        ("train", "fit save_seconds=nan", lambda: fit(lin, mse, (X, Y), steps=2,
                                                      save_seconds=float("nan"), quiet=True),
         E, "save_seconds"),
        ("train", "EMA(decay=1)", lambda: EMA(lin, 1.0), E, "decay"),
        ("runtime", "setup(threads=0)", lambda: runtime.setup(threads=0), E, "threads"),
        ("runtime", "setup(threads=2.5)", lambda: runtime.setup(threads=2.5), E, "threads"),
        ("runtime", "get_device('gpu0')", lambda: runtime.get_device("gpu0"), E, "gpu0|device"),
        ("models", "to_8bit_range None", lambda: to_8bit_range(None), E, "tensor|x"),
        ("models", "ELBOLoss(warmup_steps=np.int64(3))",
         lambda: ELBOLoss(warmup_steps=i64(3)), V, None),
    ]


def _valid_idx(data):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t10k-labels-idx1-ubyte"
        path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))
        return data.read_idx(path)


def _mismatched_idx(data, n_images, n_labels, label=1):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return _load_mismatched(data, d, n_images, n_labels, label)


def _load_mismatched(data, d, n_images, n_labels, label):
    from pathlib import Path

    root = Path(d)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.zeros((n_images, 28, 28), np.uint8)
    labs = np.full(n_labels, label, np.uint8)
    for split, n in (("train", n_images), ("t10k", n_images)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            + imgs.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n_labels.to_bytes(4, "big") + labs.tobytes())
    return data.load("mnist", root=root, download=False, verbose=False)


def _bf16_grid(vae8):
    from companion.models.vae import to_8bit_range

    x = to_8bit_range(torch.rand(2, 1, 28, 28)).bfloat16()  # bf16 cannot hold the levels
    return vae8.to(torch.bfloat16).elbo_terms(x)


def _als(ae, iters):
    model = ae.linear_autoencoder(2)
    return ae.fit_linear_als(model, torch.rand(8, 1, 28, 28), iters=iters)


def classify(fn, expect, want):
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except Exception as err:  # noqa: BLE001 - the probe classes every outcome
        if expect == "valid":
            return "cryptic", f"{type(err).__name__}: {err}"
        msg = str(err)
        named = want is None or re.search(want, msg, re.I) is not None
        ours = type(err).__module__.startswith("companion")  # CorruptDataError, say
        return ("clear" if (isinstance(err, CLEAR) or ours) and named else "cryptic"), \
            f"{type(err).__name__}: {msg}"
    finally:
        plt.close("all")  # the plot cases draw figures
    if expect == "error":
        return "silent", f"returned {type(out).__name__}"
    if callable(want) and not want(out):
        return "silent", f"wrong result {out!r}"[:200]
    return "ok", ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    counts, by_module = Counter(), {}
    all_cases = cases()
    for module, name, fn, expect, want in all_cases:
        verdict, why = classify(fn, expect, want)
        counts[verdict] += 1
        by_module.setdefault(module, Counter())[verdict] += 1
        if args.v:
            print(f"{verdict:8s} {module:17s} {name:45s} {why[:140]}".rstrip())
    print(f"{len(all_cases)} cases ({sum(c[3] == 'error' for c in all_cases)} misuses, "
          f"{sum(c[3] == 'valid' for c in all_cases)} valid inputs): " +
          ", ".join(f"{k} {counts[k]}" for k in ("clear", "cryptic", "silent", "ok")))
    for module, c in sorted(by_module.items()):
        print(f"  {module:17s} " + ", ".join(f"{k} {c[k]}" for k in
                                             ("clear", "cryptic", "silent", "ok")))


if __name__ == "__main__":
    main()
