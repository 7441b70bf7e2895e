"""How good is a latent-variable model? Bounds on log p(x) and how the latent space is used.

- `test_elbo`: the ELBO on a test set, split into its two terms (nats per example).
- `iw_estimate`: the importance-weighted estimate of log p(x) with k samples
  (Burda et al.): log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x). Its expectation is a
  lower bound on log p(x) that never decreases with k and reaches log p(x) as k grows;
  with q the exact posterior every weight equals p(x) and the estimate is exact.
  It takes "draw z ~ q(z|x) with its log q" and log p(x, z), so one function serves the
  toy models (`iw_log_likelihood`, q a torch distribution), the VAE
  (`vae_iw_log_likelihood`) and the hierarchies (`model_iw_log_likelihood`).
- `active_units`: Burda et al.'s count of latent dimensions the encoder uses:
  dimension u is active when Cov_x(E_q[z_u | x]) > 0.01.
- `kl_per_dimension`: the average KL(q(z_u|x) || p(z_u)) of each latent dimension.
- `refine_posterior`: optimize q per test point, from the encoder's output (for the
  amortization gap).
- `auroc`: area under the ROC curve of anomaly scores (chapter 1).
- `knn_labels`: the k-nearest-neighbour classifier on pixels (chapter 6).
- `frechet_distance` (chapters 9 and 10) and, for judging sample sets against real ones
  in a judge's features (chapter 20): `frechet_terms` (its mean and covariance terms),
  `frechet_infinity` (extrapolated to infinitely many samples), `precision_recall`,
  `density_coverage`, `mmd2_unbiased` and `kid`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import distributions as D

from .kl import kl_diag_standard
from .run import checks
from .run.memory import chunk_slices, map_chunks
from .run.runtime import one_thread


@dataclass
class ELBOReport:
    """Means over a test set, nats per example: elbo = reconstruction - kl."""

    elbo: float
    reconstruction: float
    kl: float
    n: int

    def __str__(self) -> str:
        return (f"ELBO {self.elbo:.2f} nats = reconstruction {self.reconstruction:.2f} "
                f"- KL {self.kl:.2f} (n={self.n})")


@torch.no_grad()
def test_elbo(model, x: torch.Tensor, *, n_samples: int = 1, batch_size: int = 500,
              x_encoder: torch.Tensor | None = None) -> ELBOReport:
    """The ELBO of `model` (a VAE) on images x, averaged over examples.

    x:          (N, 1, 28, 28) the images to score (binarize them once, with a fixed seed,
                so that every model is scored on the same binary images).
    n_samples:  z samples per image for the reconstruction term.
    x_encoder:  optional (N, 1, 28, 28) images the encoder sees instead of x. Any q gives
                a lower bound, so this is legal (a model trained on grey values can
                encode the grey image and be scored on its binarization).
    """
    checks.tensor("x", x)
    n_samples = checks.count("n_samples", n_samples)
    batch_size = checks.count("batch_size", batch_size)
    if x_encoder is not None and x_encoder.shape != x.shape:
        raise ValueError(f"x_encoder must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(x_encoder.shape)}")
    was_training = model.training
    model.eval()
    rec, kl = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        xe = None if x_encoder is None else x_encoder[start:start + batch_size]
        t = model.elbo_terms(xb, n_samples=n_samples, x_encoder=xe)
        rec.append(t.reconstruction.double())
        kl.append(t.kl.double())
    model.train(was_training)
    r, k = torch.cat(rec).mean().item(), torch.cat(kl).mean().item()
    return ELBOReport(r - k, r, k, len(x))


@dataclass
class IWEstimate:
    """Per-example estimates from the same k samples, in nats.

    log_px: (N,) importance-weighted estimate log (1/k) sum_i w_i
    elbo:   (N,) the ELBO estimated from the same samples, (1/k) sum_i log w_i
    k:      samples per example
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    k: int


@torch.no_grad()
def iw_estimate(sample_q: Callable, log_joint: Callable, x: torch.Tensor, k: int, *,
                batch_size: int = 500, max_rows: int = 2 ** 16) -> IWEstimate:
    """Importance-weighted estimate of log p(x) with k samples from q(z|x); the only copy.

        log p(x) >= E[ log (1/k) sum_i w_i ],   w_i = p(x, z_i) / q(z_i | x),  z_i ~ q(z|x)

    Seed torch for a repeatable estimate.

    Args:
        sample_q: (x, S) -> (z, log_q): S draws z ~ q(z|x) for a batch x (B, ...) and their
            log q(z|x), shape (S, B). z is whatever log_joint takes: a (S, B, D) tensor,
            or a list of them for a hierarchy, whose q is no single torch distribution.
        log_joint: (x, z) -> log p(x, z), (S, B).
        x: (N, ...) the data.
        k: importance samples per example.
        batch_size: examples processed at a time (default 500).
        max_rows: at most this many (sample, example) pairs at once (default 65536): the
            samples are drawn in chunks, which bounds memory whatever k is.

    Returns:
        IWEstimate: `log_px` (N,), the estimate of log p(x), and `elbo` (N,) from the
        same samples, in nats.

    Book: :eq:`ch6-iw`.
    """
    k = checks.count("k", k)  # importance samples per example
    max_rows = checks.count("max_rows", max_rows)
    batch_size = checks.count("batch_size", batch_size)
    checks.tensor("x", x)
    log_px, elbo = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        chunk = max(1, min(k, max_rows // len(xb)))
        log_w = []
        for done in range(0, k, chunk):
            s = min(chunk, k - done)
            z, log_q = sample_q(xb, s)
            if tuple(log_q.shape) != (s, len(xb)):
                raise ValueError(f"sample_q(x, {s}) must return log q of shape ({s}, "
                                 f"{len(xb)}), got {tuple(log_q.shape)}")
            log_w.append((log_joint(xb, z) - log_q).double())           # (S, B)
        log_w = torch.cat(log_w)                                         # (k, B)
        log_px.append(torch.logsumexp(log_w, 0) - math.log(k))
        elbo.append(log_w.mean(0))
    return IWEstimate(torch.cat(log_px), torch.cat(elbo), k)


def distribution_sampler(posterior: Callable) -> Callable:
    """Turn x -> q(z|x) (a torch distribution, batch shape (B,), event shape (D,)) into the
    (x, S) -> (z (S, B, D), log q (S, B)) that `iw_estimate` takes."""
    def sample_q(xb, s):
        q = posterior(xb)
        if tuple(q.batch_shape) != (len(xb),):
            raise ValueError(f"posterior(x) must have batch shape ({len(xb)},) for {len(xb)} "
                             f"examples, got {tuple(q.batch_shape)}; wrap a diagonal Normal "
                             "in torch.distributions.Independent(..., 1)")
        z = q.sample((s,))
        return z, q.log_prob(z)
    return sample_q


def iw_log_likelihood(log_joint: Callable, posterior: Callable, x: torch.Tensor, k: int, *,
                      batch_size: int = 500, max_rows: int = 2 ** 16) -> IWEstimate:
    """`iw_estimate` with q(z|x) given as a torch distribution.

    Args:
        log_joint: (x, z) -> log p(x, z), with x: (B, ...) and z: (S, B, D) -> (S, B).
        posterior: x -> q(z|x), a torch distribution with batch shape (B,) and event
            shape (D,).
        x: (N, ...) the data.
        k: importance samples per example.
        batch_size: examples processed at a time (default 500).
        max_rows: at most this many (sample, example) pairs at once (default 65536).

    Returns:
        IWEstimate: `log_px` (N,), the estimate of log p(x), and `elbo` (N,) from the
        same samples, in nats.

    Book: :eq:`ch6-iw`.
    """
    return iw_estimate(distribution_sampler(posterior), log_joint, x, k,
                       batch_size=batch_size, max_rows=max_rows)


def model_iw_log_likelihood(model, x: torch.Tensor, k: int, *, batch_size: int = 500,
                            max_rows: int = 2 ** 16) -> IWEstimate:
    """`iw_estimate` for a model with `sample_q(x, k)` and `log_joint(x, z)` (the
    hierarchies of chapter 7), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return iw_estimate(model.sample_q, model.log_joint, x, k, batch_size=batch_size,
                           max_rows=max_rows)
    finally:
        model.train(was_training)


def vae_iw_log_likelihood(model, x: torch.Tensor, k: int, *, batch_size: int = 500,
                          max_rows: int = 2 ** 16,
                          x_encoder: torch.Tensor | None = None) -> IWEstimate:
    """`iw_log_likelihood` for a VAE. x_encoder: optional images the encoder sees instead.

    The proposal q must depend on the example only: when the encoder sees x_encoder, it is
    paired with x by position, so both are sliced the same way.

    Args:
        model: a trained VAE (companion.models.vae.VAE).
        x: (N, 1, 28, 28) the images whose likelihood is estimated.
        k: importance samples per image.
        batch_size: images processed at a time (default 500).
        max_rows: at most this many (sample, image) pairs at once (default 65536).
        x_encoder: None (default) or (N, 1, 28, 28) images the encoder sees instead of x.

    Returns:
        IWEstimate: `log_px` (N,), the estimate of log p(x), and `elbo` (N,) from the
        same samples, in nats.
    """
    was_training = model.training
    model.eval()
    if x_encoder is None:
        est = iw_log_likelihood(model.log_joint, model.posterior, x, k,
                                batch_size=batch_size, max_rows=max_rows)
    else:
        if x_encoder.shape != x.shape:
            raise ValueError(f"x_encoder must have the shape of x {tuple(x.shape)}, "
                             f"got {tuple(x_encoder.shape)}")
        paired = torch.stack([x, x_encoder], 1)   # slice both together, split again below
        est = iw_log_likelihood(lambda xx, z: model.log_joint(xx[:, 0], z),
                                lambda xx: model.posterior(xx[:, 1]), paired, k,
                                batch_size=batch_size, max_rows=max_rows)
    model.train(was_training)
    return est


@torch.no_grad()
def encode_all(model, x: torch.Tensor, batch_size: int = 1000):
    """The encoder's (mu, logvar) for every image: x (N, 1, 28, 28) -> two (N, D) tensors."""
    batch_size = checks.count("batch_size", batch_size)
    checks.tensor("x", x)
    was_training = model.training
    model.eval()
    parts = [model.encode(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass
class ActiveUnits:
    """count: dimensions with variance > threshold; variance: (D,) Cov_x(E_q[z_u|x])."""

    count: int
    variance: torch.Tensor
    threshold: float

    @property
    def active(self) -> torch.Tensor:
        """(D,) bool mask of the active dimensions."""
        return self.variance > self.threshold


def active_units(mu: torch.Tensor, threshold: float = 1e-2) -> ActiveUnits:
    """Burda et al.'s activity: A_u = Var_x(E_{q(z|x)}[z_u]); active when A_u > threshold.

    mu: (N, D) the encoder means of N data points.
    A dimension whose posterior mean does not move with x carries no information about x:
    q(z_u|x) is the same for every x, and the KL term then pushes it onto the prior.

    Book: :eq:`ch6-au`.
    """
    checks.tensor("mu", mu)
    threshold = checks.real("threshold", threshold, low=0.0)
    if mu.dim() != 2 or len(mu) < 2:
        raise ValueError(f"mu must be (N, D) with N >= 2, got shape {tuple(mu.shape)}")
    _check_finite(torch.as_tensor(mu), "mu", "encoder means", "active_units",
                  "a diverged encoder gives NaN means; encode finite images with a finite "
                  "model")
    var = mu.double().var(0, unbiased=True).float()
    return ActiveUnits(int((var > threshold).sum()), var, threshold)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (D,): mean over examples of KL(q(z_u|x) || N(0, 1)), in nats."""
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both be (N, D), got {tuple(mu.shape)} and "
                         f"{tuple(logvar.shape)}")
    checks.finite("mu", mu, "an encoder that diverged? encode the images again")
    checks.finite("logvar", logvar, "an encoder that diverged? encode the images again")
    return kl_diag_standard(mu, logvar).mean(0)


def refine_posterior(model, x: torch.Tensor, *, steps: int = 100, lr: float = 1e-2,
                     n_samples: int = 4, q=None):
    """Optimize q(z|x) = N(mu, diag(exp(logvar))) for each image separately.

    Starts from the encoder's output (or `q` = (mu, logvar)) and takes `steps` Adam steps on
    the per-image ELBO (reparameterized, `n_samples` draws per step) with the model frozen.
    The ELBO of each image depends only on its own (mu, logvar), so one optimizer over the
    whole batch optimizes every image's q independently.
    x: (B, 1, 28, 28) -> (mu, logvar), each (B, D), detached.

    Book: :eq:`ch6-gaps`.
    """
    was_training = model.training
    model.eval()
    if q is None:
        with torch.no_grad():
            q = model.encode(x)
    mu = q[0].detach().clone().requires_grad_(True)
    logvar = q[1].detach().clone().requires_grad_(True)
    params = list(model.parameters())
    frozen = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    opt = torch.optim.Adam([mu, logvar], lr=lr)
    try:
        for _ in range(steps):
            # the sum over images keeps each image's gradient independent of the batch size
            loss = -model.elbo_terms(x, n_samples=n_samples, q=(mu, logvar)).elbo.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, f in zip(params, frozen, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    return mu.detach(), logvar.detach()


def diag_normal(mu: torch.Tensor, logvar: torch.Tensor) -> D.Distribution:
    """N(mu, diag(exp(logvar))) as a distribution with batch shape (B,), event shape (D,)."""
    return D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    scores: (N,) real; labels: (N,) 0/1 or bool, both classes present. Computed from the
    ranks (the Mann-Whitney U statistic), with tied scores sharing their average rank.
    """
    scores, labels = checks.tensor("scores", scores), checks.tensor("labels", labels)
    scores, labels = scores.flatten(), labels.flatten()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.numel()} and "
                         f"{labels.numel()}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0/1 (or bool)")
    _check_finite(scores, "scores", "scores", "auroc",
                  "drop those units from scores and labels, or fix what scored them")
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes, got {n_pos} positives and {n_neg} negatives")
    s = scores.double()
    values, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value: ranks before it plus (count + 1) / 2
    first = torch.cumsum(counts, 0) - counts
    avg_rank = first.double() + (counts.double() + 1) / 2
    rank_sum = avg_rank[inverse][pos].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# --- scoring generated images (chapters 9 and 10) -------------------------------------------
def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets, in float64.

    a: (N, d), b: (M, d) features (e.g. a classifier's penultimate layer), N, M >= 2.
        d^2 = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)
    with S the sample covariances (divisor N - 1). Both square roots are of symmetric
    positive semi-definite matrices, taken by eigendecomposition (eigenvalues clamped at 0),
    so the result is real; tr((S_a^1/2 S_b S_a^1/2)^1/2) = tr((S_a S_b)^1/2).
    The distance has a bias that grows as N shrinks: compare numbers only at equal counts.
    It is the sum of the two terms `frechet_terms` returns.

    Book: :eq:`ch9-frechet`.
    """
    a, b = _frechet_inputs(a, b)
    with one_thread():
        return frechet_gaussian(*_moments(a), *_moments(b))


def _frechet_inputs(a, b, names: tuple[str, str] = ("a", "b")):
    """Two feature matrices (N, d) and (M, d) of one d > 0, N, M >= 2, real and finite, as
    float64 CPU tensors (lists are taken too); the errors name the arguments `names`."""
    for name, v in zip(names, (a, b), strict=True):
        if v is None or isinstance(v, str):
            raise checks.ArgumentError(f"{name} must be a feature matrix (N, d), got {v!r}")
    a, b = (checks.numeric(name, v, fix=": pass real features (a judge's, not complex)")
            for name, v in zip(names, (a, b), strict=True))
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two feature matrices (N, d) and (M, d) with the same d, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)} ({names[0]} and {names[1]})")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 rows in each set for a covariance, got {len(a)} "
                         f"and {len(b)} ({names[0]} and {names[1]})")
    if a.shape[1] == 0:
        raise ValueError(f"the features have d = 0 dimensions, shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}; pass the judge's features, not an empty slice")
    for name, f in zip(names, (a, b), strict=True):
        if f.is_complex() or f.dtype == torch.bool:
            raise TypeError(f"{name} must hold real features, got {f.dtype}")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    for name, f in zip(names, (a, b), strict=True):  # on the CPU copy: no further device sync
        _check_finite(f, name, "rows")
    return a, b


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (d,) and sample covariance (d, d) (divisor N - 1) of features x (N, d)."""
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], -1)


def frechet_gaussian(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                     cov_b: torch.Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    mu: (d,), cov: (d, d) symmetric PSD; float64 throughout (see frechet_distance).
    """
    mean, cov = _gaussian_terms(mu_a, cov_a, mu_b, cov_b)
    return mean + cov


def _gaussian_terms(mu_a, cov_a, mu_b, cov_b) -> tuple[float, float]:
    """The two terms of frechet_gaussian, checked: |mu_a - mu_b|^2 and
    tr(cov_a + cov_b - 2 (cov_a^1/2 cov_b cov_a^1/2)^1/2), the second clamped at 0 (it is
    the squared distance between the centred Gaussians, >= 0 but for rounding)."""
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(v).double() for v in (mu_a, mu_b, cov_a, cov_b))
    d = mu_a.shape[-1] if mu_a.dim() == 1 else -1
    if mu_a.dim() != 1 or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"need means (d,) and covariances (d, d) of one d, got mu_a "
                         f"{tuple(mu_a.shape)}, cov_a {tuple(cov_a.shape)}, mu_b "
                         f"{tuple(mu_b.shape)}, cov_b {tuple(cov_b.shape)}")
    for name, v in (("mu_a", mu_a), ("cov_a", cov_a), ("mu_b", mu_b), ("cov_b", cov_b)):
        _check_finite(v, name, "entries")
    with one_thread():
        for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
            ev = torch.linalg.eigvalsh((c + c.T) / 2)
            if ev.min() < -1e-6 * max(ev.abs().max().item(), 1.0):
                raise ValueError(f"{name} is not a covariance (positive semi-definite): its "
                                 f"smallest eigenvalue is {ev.min().item():.3g}; pass the "
                                 "sample covariance of the features (torch.cov(f.T))")
        w, v = torch.linalg.eigh((cov_a + cov_a.T) / 2)
        root_a = (v * w.clamp(min=0).sqrt()) @ v.T
        middle = root_a @ cov_b @ root_a
        cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
        mean = (mu_a - mu_b).pow(2).sum()
        cov = cov_a.trace() + cov_b.trace() - 2 * cross
    return mean.item(), max(cov.item(), 0.0)


def _check_finite(x: torch.Tensor, name: str, what: str, who: str = "the Fréchet distance",
                  fix: str | None = None) -> None:
    """A clear error for NaN/inf in features or statistics (one reduction per call); `who`
    needs them finite, `fix` says how (the Fréchet distance's fixes unless given)."""
    if checks.all_finite(x):  # the cheap test first; the rows only for the message
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(len(x), -1).any(1).nonzero().flatten().tolist() if x.dim() else []
        where = f" in {what} {rows[:5]}{' ...' if len(rows) > 5 else ''}" if rows else ""
        if fix is None:
            fix = ("check the images fed to the judge (a diverged model samples NaN) and "
                   "drop or fix those rows" if what == "rows" else
                   "compute the means and covariances from finite features")
        raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf values{where}; {who} "
                         f"needs finite numbers: {fix}")


def frechet_floor(features: Callable, real: torch.Tensor, reference: torch.Tensor, n: int,
                  *, repeats: int = 5, seed: int = 0) -> torch.Tensor:
    """The Fréchet distance that real images reach: the floor beside which a sample score is read.

    features: images -> (N, d) features (the judge's); real: (M, ...) real images the model
    trained on, M >= n; reference: (R, d) features of the reference set (the test images).
    Draws n of the real images without replacement, `repeats` times (a CPU generator seeded
    with `seed`), and returns the distances to the reference, (repeats,) float64: a sample
    set of n images is read against their mean and spread, since the distance's bias depends
    on n.
    """
    if not 2 <= n <= len(real):
        raise ValueError(f"n must lie in 2..{len(real)} (the number of real images), got {n}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(real), generator=g)[:n] for _ in range(repeats)]
    return torch.tensor([frechet_distance(features(real[i.to(real.device)]), reference)
                         for i in picks], dtype=torch.float64)


ALIKE = 2.0  # a sample set within twice the floor of real digits looks like the data


def alike(distances: dict, floor: float, *, bar: float = ALIKE) -> dict[str, str]:
    """Which sample sets look like the data to the judge, for the sentence under a sample
    figure: a set whose Fréchet distance is within `bar` times the floor (real digits, the
    same N: `frechet_floor`'s mean) does. distances: {name: distance}, floor > 0.

    Returns phrases of at most 60 characters, to glue into

        "Within {bar}x the floor of real digits: {alike}. Beyond it: {unlike}."

    alike / unlike: the names joined ("the flow and EDM, Heun"), "none", or, when the names
    do not fit, a count ("4 of 7 sets"); nearest: the nearest set's name; ratio: its distance
    over the floor ("1.6x"); bar: "2x".
    """
    floor = checks.real("floor (the real digits' distance)", floor, low=0.0, open_low=True)
    bar = checks.real("bar", bar, low=1.0)
    if not distances:
        raise checks.ArgumentError("distances must name at least one sample set")
    d = {str(k): checks.real(f"the distance of {k!r}", v, low=0.0)
         for k, v in distances.items()}

    def listed(names):
        if not names:
            return "none"
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return text if len(text) <= 60 else f"{len(names)} of {len(d)} sets"

    nearest = min(d, key=d.get)
    return dict(alike=listed([k for k, v in d.items() if v <= bar * floor]),
                unlike=listed([k for k, v in d.items() if v > bar * floor]),
                nearest=nearest if len(nearest) <= 60 else "one set",
                ratio=f"{d[nearest] / floor:.1f}x", bar=f"{bar:g}x")


MAX_GROUPS = 400  # left-out sets a distance: the cpu profile's N, one row each


def frechet_jackknife(features: dict, reference: torch.Tensor, *,
                      max_groups: int = MAX_GROUPS) -> tuple[dict, dict]:
    """Each sample set's Fréchet distance to the reference, and the same with each group of
    rows left out.

    features: {key: (N, d)}, every set of the same N, row i of every set made from the same
    noise; reference: (M, d). N - 1 > d keeps every left-out covariance full-rank.
    Rows are left out one at a time when N <= max_groups; above it, in K equal groups of
    consecutive rows, K the largest divisor of N not above max_groups (the grouped, or
    delete-g, jackknife, for the gpu profile's thousands of samples: its cost is K
    eigenvalue problems a set, whatever N).
    Returns (fd, loo): {key: float} (frechet_distance) and {key: (K,) float64}, loo[k][j]
    the distance of set k without group j. The jackknife standard error (Quenouille 1956,
    Tukey 1958) of a set's distance is `jackknife_se(loo[k])`, of a difference between two
    sets on the same noise `jackknife_se(loo[a] - loo[b])` (compare.paired_jackknife):
        SE^2 = (K - 1) / K * sum_j (l_j - mean(l))^2.
    Left-out sets keep N - N / K distinct rows, where a bootstrap resample keeps about
    0.63 N and, near d, a rank-deficient covariance that inflates the spread
    (tests/test_frechet_error.py checks both against independent redraws at the book's N).
    With centred rows c_i, G = sum_i c_i c_i^T, and a group J of m rows with sum s, leaving
    J out gives the mean mu - s / (N - m) and the covariance
    (G - sum_J c_i c_i^T - s s^T / (N - m)) / (N - m - 1), and tr((S_a S_ref)^1/2) is the
    sum of the roots of the eigenvalues of R S_a R with R = S_ref^1/2, so each left-out
    distance costs one symmetric eigenvalue problem.
    """
    sizes = {len(f) for f in _feature_dict(features).values()}
    if len(sizes) != 1:
        raise ValueError(f"every feature set needs the same number of rows (the same noise, "
                         f"row by row), got sizes {sorted(sizes)}")
    groups = jackknife_groups(sizes.pop(), max_groups)
    fd = {k: frechet_distance(f, reference) for k, f in features.items()}
    ref = torch.as_tensor(reference).detach().double().cpu()
    with one_thread():
        mu_r, cov_r = ref.mean(0), torch.cov(ref.T).reshape(ref.shape[1], -1)
        w, v = torch.linalg.eigh((cov_r + cov_r.T) / 2)
        root_r = (v * w.clamp(min=0).sqrt()) @ v.T
        loo = {k: _left_out(torch.as_tensor(f).detach().double().cpu(), mu_r, cov_r, root_r,
                            groups=groups)
               for k, f in features.items()}
    return fd, loo


def _feature_dict(features) -> dict:
    """features, a dict {key: (N, d) features} of at least one set ("'list' object has no
    attribute 'values'" otherwise)."""
    if not isinstance(features, dict) or not features:
        raise checks.ArgumentError(f"features must be a dict {{name: (N, d) features}} of at "
                                   f"least one sample set, got {checks._got(features)}"
                                   + (" (empty)" if isinstance(features, dict) else ""))
    for k, f in features.items():
        if not (torch.is_tensor(f) or isinstance(f, (list, tuple))) or len(f) == 0:
            raise checks.ArgumentError(f"features[{k!r}] must be a feature matrix (N, d), "
                                       f"got {checks._got(f)}")
    return features


def jackknife_groups(n: int, max_groups: int = MAX_GROUPS) -> int:
    """How many equal groups of consecutive rows `frechet_jackknife` leaves out of n rows:
    n itself up to max_groups, else the largest divisor of n not above it."""
    n = checks.count("n (rows a set)", n)
    max_groups = checks.count("max_groups", max_groups)
    if n < 3:
        raise ValueError(f"the jackknife needs at least 3 rows a set (a left-out covariance "
                         f"of 2), got {n}")
    if max_groups < 3:
        raise ValueError(f"max_groups must be at least 3 (a standard error from 2 left-out "
                         f"values has 1 degree of freedom), got {max_groups}")
    k = next(k for k in range(min(n, max_groups), 0, -1) if n % k == 0)
    if k < 3:
        raise ValueError(f"{n} rows split into no more than {k} equal groups of at most "
                         f"{max_groups}: pass a number of samples with a divisor between "
                         f"3 and {max_groups} (an even number, say)")
    return k


def _left_out(x: torch.Tensor, mu_r, cov_r, root_r, chunk: int = 256,
              groups: int | None = None) -> torch.Tensor:
    """(K,) Fréchet distances of x (N, d) with each of K equal groups of consecutive rows
    left out (K = N: one row each), to N(mu_r, cov_r)."""
    n = len(x)
    groups = n if groups is None else groups
    if n < 3 or n % groups:
        raise ValueError(f"the jackknife needs at least 3 rows a set (a left-out covariance "
                         f"of 2), in equal groups; got {n} rows in {groups} groups")
    m = n // groups  # rows a group
    mu = x.mean(0)
    c = x - mu
    gram = c.T @ c
    cr = (c @ root_r).reshape(groups, m, -1)  # rows R c_i, by group
    sums = cr.sum(1)  # R s_J
    middle = root_r @ gram @ root_r
    sq = c.pow(2).sum(1).reshape(groups, m).sum(1)  # sum_J |c_i|^2
    s_raw = c.reshape(groups, m, -1).sum(1)  # s_J
    rest = n - m
    out = torch.empty(groups, dtype=torch.float64)
    for s in range(0, groups, chunk):
        ri, si = cr[s:s + chunk], sums[s:s + chunk]
        inner = ri.transpose(1, 2) @ ri + si[:, :, None] * si[:, None, :] / rest
        a = (middle - inner) / (rest - 1)
        cross = torch.linalg.eigvalsh((a + a.transpose(1, 2)) / 2).clamp(min=0).sqrt().sum(1)
        tr = (gram.trace() - sq[s:s + chunk]
              - s_raw[s:s + chunk].pow(2).sum(1) / rest) / (rest - 1)
        mean_term = (mu - s_raw[s:s + chunk] / rest - mu_r).pow(2).sum(1)
        out[s:s + chunk] = (mean_term + tr + cov_r.trace() - 2 * cross).clamp(min=0)
    return out


def jackknife_se(loo) -> float:
    """The jackknife standard error from left-out values l (N,): sqrt((N-1)/N sum (l - l̄)^2).
    A table of them, (N, k), is refused: flattened, its N k values were read as N k units."""
    v = checks.numeric("loo (the left-out values)", loo, dtype=torch.float64)
    if v.dim() != 1:
        raise checks.ArgumentError(
            f"loo (the left-out values) must be 1-D, one value per unit left out (N,), got "
            f"shape {tuple(v.shape)}: pass one statistic's values, e.g. loo[:, j] for "
            "column j, one call each")
    if len(v) < 2 or not bool(torch.isfinite(v).all()):
        raise ValueError(f"need at least 2 finite left-out values, got {len(v)} "
                         f"({int((~torch.isfinite(v)).sum())} not finite)")
    n = len(v)
    return math.sqrt((n - 1) / n * (v - v.mean()).pow(2).sum().item())


def frechet_bootstrap(features: dict, reference: torch.Tensor, draws: int, *,
                      seed: int) -> tuple[dict, dict]:
    """Each sample set's Fréchet distance to the reference, and over bootstrap resamples.

    features: {key: (N, d)}, every set of the same N (samples made from the same noise);
    reference: (M, d). Resamples N rows with replacement `draws` times (indices from a CPU
    generator seeded with `seed`) and uses the same indices for every set, so the draws of
    two sets are paired: the SD of their difference is the SE of FD(a) - FD(b)
    (compare.paired_bootstrap), the SD of one set's draws its own SE.
    At N near the judge's d this SE overstates the spread over independent redraws (at
    d = 128, N = 160 in tests/test_frechet_error.py: 1.4 to 2.3 times for one distance, 1.2
    to 1.4 for a difference, where the jackknife gives 1.0 to 1.2): a resample holds about
    0.63 N distinct rows, so its covariance is rank-deficient. The book's chapters use
    `frechet_jackknife`; this stays for comparison (tests/test_frechet_error.py, and
    chapter 17's check of both against redraws).
    Returns (fd, boot): {key: float} and {key: (draws,) float64}.
    """
    sizes = {len(f) for f in _feature_dict(features).values()}
    if len(sizes) != 1:
        raise ValueError(f"every feature set needs the same number of rows for paired "
                         f"bootstrap draws, got sizes {sorted(sizes)}")
    if not isinstance(checks.as_int(draws), int) or draws < 2:
        raise checks.ArgumentError(f"draws must be at least 2, a whole number (an SD needs "
                                   f"two), got {draws!r}")
    draws = checks.as_int(draws)
    n = sizes.pop()
    seed = checks.seed("seed", seed)
    picks = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(seed))
    with one_thread():  # one switch for all the draws (each switch restarts the pool)
        fd = {k: frechet_distance(f, reference) for k, f in features.items()}
        boot = {k: torch.tensor([frechet_distance(f[i], reference) for i in picks],
                                dtype=torch.float64) for k, f in features.items()}
    return fd, boot


def label_histogram(probs: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """How many images a classifier assigns to each class: probs (N, K) -> (K,) int64."""
    probs = checks.tensor("probs", probs)
    classes = checks.count("classes", classes)
    if probs.dim() != 2 or probs.shape[1] != classes:
        raise ValueError(f"probs must be (N, {classes}) class probabilities, got "
                         f"{tuple(probs.shape)}")
    _check_probabilities(probs)
    return torch.bincount(probs.argmax(1).cpu(), minlength=classes)


def _check_probabilities(probs: torch.Tensor) -> None:
    """Rows of class probabilities: finite, in [0, 1], summing to 1 (not logits)."""
    _check_finite(probs, "probs", "probabilities", "a classifier's probabilities",
                  "check the classifier's input images (a diverged model samples NaN)")
    p = probs.double()
    if len(p) and (p.min() < -1e-6 or p.max() > 1 + 1e-6
                   or (p.sum(1) - 1).abs().max() > 1e-3):
        raise ValueError("probs must hold class probabilities (rows in [0, 1] summing to 1), "
                         f"got values in [{p.min().item():.3g}, {p.max().item():.3g}]; "
                         "logits? apply .softmax(1) first (companion.models.classifier."
                         "predict returns probabilities)")


def mean_top_probability(probs: torch.Tensor) -> float:
    """The mean over images of the classifier's largest class probability: probs (N, K).

    Near 1 when every image looks like one clear digit, near 1/K for images that look like
    none (or like several).
    """
    probs = checks.numeric("probs", probs)
    if probs.dim() != 2 or len(probs) == 0:
        raise ValueError(f"probs must be (N, K) class probabilities of N >= 1 images, got "
                         f"{tuple(probs.shape)}")
    _check_probabilities(probs)
    return probs.max(1).values.double().mean().item()


def knn_labels(x: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor,
               k: int = 5) -> torch.Tensor:
    """The majority label of each image's k nearest reference images (Euclidean distance on
    pixels): x (N, ...), reference (M, ...), labels (M,) -> (N,) int64.

    The distances come in blocks of companion.run.memory.MAX_IMAGES rows, (rows, M) each, never
    the whole (N, M) matrix (10,000 x 60,000 floats is 2.4 GB).
    """
    k = checks.count("k", k)
    checks.batch("reference", reference)
    checks.tensor("labels", labels, dims=1)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise checks.ArgumentError(f"labels must be an integer tensor of class labels (M,), "
                                   f"got {labels.dtype}: convert whole numbers with .long()")
    if len(reference) != len(labels) or len(reference) < k:
        raise ValueError(f"need at least k = {k} reference images with one label each, got "
                         f"{len(reference)} images and {len(labels)} labels")
    checks.finite("x", checks.batch("x", x))  # a NaN image is nearest to nothing
    checks.finite("reference", checks.batch("reference", reference))
    if x.shape[1:] != reference.shape[1:]:
        raise checks.ArgumentError(
            f"x and reference must be images of one shape, got (N, ...) = {tuple(x.shape)} "
            f"and (M, ...) = {tuple(reference.shape)}: the distance is between pixels, so "
            "bring both to one size (and one range) first")
    ref = reference.flatten(1)

    def block(xb):
        nearest = torch.cdist(xb.flatten(1), ref).topk(k, largest=False).indices
        return labels[nearest].mode(1).values
    return map_chunks(block, x)


# --- judging samples (chapter 20) -----------------------------------------------------------
# Measures of a sample set against a real one, both as a judge's features real: (N, d) and
# fake: (M, d). The k-NN measures and the MMD compare every point with every other, so
# they take at most MAX_POINTS rows a set and compute their distances (and kernels) in
# blocks of at most DISTANCE_BLOCK entries, float64, on the device of `real`.

MAX_POINTS = 20_000
DISTANCE_BLOCK = 2 ** 22  # entries of one block of distances: 32 MB in float64
_POINTS_WHY = (f"the measure compares every point with every other (N x M distances, and "
               f"N x N within a set), so {MAX_POINTS:,} a set is already "
               f"{MAX_POINTS ** 2 // 10 ** 6:,} million distances, minutes on a CPU; draw a "
               "random subset of the rows")


def _feature_sets(real, fake, who: str, *, minimum: int = 1,
                  limit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """real (N, d) and fake (M, d) checked for `who` (the public function) and returned as
    float64 on real's device: tensors of points, one width d, one device, at least
    `minimum` rows each and (limit) at most MAX_POINTS, finite (the rows with NaN named)."""
    for name, x in (("real", real), ("fake", fake)):
        checks.tensor(name, x)
        if x.dim() != 2:
            one = (f"; one point is {name}.reshape(1, -1), one feature {name}.reshape(-1, 1)"
                   if x.dim() == 1 else "")
            raise checks.ArgumentError(
                f"{name} must be points (N, d), one row a point, got shape {tuple(x.shape)}: "
                f"flatten images with {name}.flatten(1), or pass the judge's features of "
                f"them{one}")
        checks.points(name, x, "")  # floating point, non-empty
        if x.shape[1] == 0:
            raise checks.ArgumentError(f"{name} has d = 0 features, shape {tuple(x.shape)}; "
                                       "pass the judge's features, not an empty slice")
        if len(x) < minimum:
            raise checks.ArgumentError(f"{who} needs at least {minimum} rows in {name}, got "
                                       f"{len(x)}")
        if limit:
            checks.size(f"the rows of {name}", len(x), MAX_POINTS, _POINTS_WHY)
    if real.shape[1] != fake.shape[1]:
        raise checks.ArgumentError(
            f"real and fake must have the same width d (features from one judge), got real "
            f"(N, d) = {tuple(real.shape)} and fake (M, d) = {tuple(fake.shape)}")
    if real.device != fake.device:
        raise checks.ArgumentError(f"real is on {real.device} and fake on {fake.device}: "
                                   "move fake to real.device first")
    for name, x in (("real", real), ("fake", fake)):
        _check_finite(x, name, "rows", who, "check the images fed to the judge (a diverged "
                      "model samples NaN) and drop or fix those rows")
    return real.detach().double(), fake.detach().double()


def _neighbours(name: str, k, x: torch.Tensor) -> int:
    """k as an int, 1 <= k < len(x): the k-th nearest neighbour of a point among the other
    rows of `name` needs k + 1 rows."""
    k = checks.count("k", k)
    if k >= len(x):
        raise checks.ArgumentError(
            f"k must be less than the rows of {name} (the k-th nearest neighbour of a point "
            f"among the others needs k + 1 points), got k = {k} with {len(x)} rows: pass a "
            f"smaller k or more points")
    return k


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(P, C) Euclidean distances, each from its own differences, not from |x|^2 + |y|^2 -
    2 x.y: exactly 0 between equal rows and exactly symmetric, so a point of one set that
    equals a point of the other lies inside that point's ball, and a point on a ball's
    edge is inside it whichever set it came from."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def _blocks(rows: int, columns: int) -> list[slice]:
    """Slices of `rows` such that a block of rows by `columns` holds at most DISTANCE_BLOCK
    entries (at least one row a block)."""
    return chunk_slices(rows, max(1, DISTANCE_BLOCK // max(columns, 1)))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) each row's distance to its k-th nearest other row of x (N, d): the (k + 1)-th
    smallest of its distances, the first being its own 0 (a duplicate row counts as a
    neighbour at distance 0)."""
    return torch.cat([_distances(x[s], x).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for s in _blocks(len(x), len(x))])


def _real_radii(real: torch.Tensor, k: int) -> torch.Tensor:
    """The real points' k-NN radii (`_knn_radii`), none 0: a real row with k or more
    copies has a ball of radius 0 that holds only its copies, and the measures read 0 for
    it without a word. (The samples' radii may be 0: a collapsed sampler's copies are what
    recall and coverage are there to show.)"""
    radii = _knn_radii(real, k)
    zero = int((radii == 0).sum())
    if zero:
        raise checks.ArgumentError(
            f"real has {zero} row(s) with k = {k} or more exact copies, whose k-NN ball has "
            f"radius 0 (it holds only the copies): drop duplicate rows first "
            f"(real.unique(dim=0)), or take a larger k")
    return radii


def _ball_counts(points: torch.Tensor, centres: torch.Tensor,
                 radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,) int64, how many closed balls B(centres_i, radii_i) hold each point, and (C,)
    each centre's distance to its nearest point; blocks of points against all centres."""
    counts, nearest = [], torch.full((len(centres),), math.inf, dtype=centres.dtype,
                                     device=centres.device)
    for s in _blocks(len(points), len(centres)):
        dist = _distances(points[s], centres)
        counts.append((dist <= radii).sum(1))
        nearest = torch.minimum(nearest, dist.amin(0))
    return torch.cat(counts), nearest


def real_balls(real: torch.Tensor, fake: torch.Tensor, k: int) -> torch.Tensor:
    """(M,) how many real k-NN balls hold each sample: c_j = sum_i 1[fake_j in B_i], with
    B_i = B(real_i, r_k(real_i)) closed, r_k the distance to real_i's k-th nearest other
    real point. The per-sample term of precision (1[c_j > 0], k = 3) and density (c_j / k,
    k = 5): a function of sample j alone once the real set is fixed, so two sample sets
    drawn from the same noise pair up sample by sample.

    Args:
        real: (N, d) the real points' features, k + 1 <= N <= MAX_POINTS.
        fake: (M, d) the samples' features, 1 <= M <= MAX_POINTS.
        k: the neighbour that sets each ball's radius.

    Returns:
        (M,) int64 counts on real's device.

    Book: :eq:`ch20-precision-recall`, :eq:`ch20-density-coverage`.
    """
    real, fake = _feature_sets(real, fake, "real_balls")
    k = _neighbours("real", k, real)
    return _ball_counts(fake, real, _real_radii(real, k))[0]


@dataclass(frozen=True)
class PrecisionRecall:
    """Kynkäänniemi et al.'s precision and recall (shares in [0, 1]) with k neighbours."""

    precision: float
    recall: float
    k: int

    def __str__(self) -> str:
        return f"precision {self.precision:.3f}, recall {self.recall:.3f} (k = {self.k})"


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen and Aila 2019):
    the share of samples that look real, and of real points that the samples reach.

    Each set is approximated by the union of its points' k-NN balls,
    B(x, r_k(x)) with r_k(x) the distance from x to its k-th nearest neighbour in its own
    set (itself left out); the balls are closed (a point on the edge is inside):

        precision = (1/M) sum_j 1[fake_j in some B(real_i, r_k(real_i))]
        recall    = (1/N) sum_i 1[real_i in some B(fake_j, r_k(fake_j))]

    A sample set that repeats a few good images has precision near 1 and recall near 0; one
    that spreads over everything real and more, the reverse. An outlier among the real
    points swells its ball and lifts precision; with N = M, a larger k fills more of the
    space and lifts both.

    Args:
        real: (N, d) the real points' features, 2 <= k + 1 <= N <= MAX_POINTS.
        fake: (M, d) the samples' features, k + 1 <= M <= MAX_POINTS.
        k: the neighbour that sets each ball's radius (the paper's 3).

    Returns:
        PrecisionRecall: `precision` and `recall`, floats in [0, 1], and `k`.

    Book: :eq:`ch20-precision-recall`.
    """
    real, fake = _feature_sets(real, fake, "precision_recall")
    k = _neighbours("real", k, real)
    k = _neighbours("fake", k, fake)
    in_real, _ = _ball_counts(fake, real, _real_radii(real, k))
    in_fake, _ = _ball_counts(real, fake, _knn_radii(fake, k))
    return PrecisionRecall((in_real > 0).double().mean().item(),
                           (in_fake > 0).double().mean().item(), k)


@dataclass(frozen=True)
class DensityCoverage:
    """Naeem et al.'s density (>= 0, 1 on average for samples of the real distribution) and
    coverage (a share in [0, 1]) with k neighbours."""

    density: float
    coverage: float
    k: int

    def __str__(self) -> str:
        return f"density {self.density:.3f}, coverage {self.coverage:.3f} (k = {self.k})"


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> DensityCoverage:
    """Density and coverage (Naeem, Oh, Uh, Choi and Yoo 2020): precision and recall with
    the real points' balls alone, so that outliers among the samples cannot swell them.

    With B_i = B(real_i, r_k(real_i)), the closed ball around real point i out to its k-th
    nearest real neighbour (itself left out):

        density  = 1/(k M) sum_j sum_i 1[fake_j in B_i]
        coverage = (1/N) sum_i 1[some fake_j in B_i]

    For samples drawn from the real distribution, independently of the real points, the
    expected density is exactly 1 (a new point is among a real point's k nearest with
    probability k / N); it exceeds 1 where the samples crowd into dense real regions. A
    copy of the real set scores density (k + 1) / k (every point also sits in its own
    ball; a tie at a ball's edge adds more) and coverage 1.

    Args:
        real: (N, d) the real points' features, k + 1 <= N <= MAX_POINTS.
        fake: (M, d) the samples' features, 1 <= M <= MAX_POINTS.
        k: the neighbour that sets each ball's radius (the paper's 5).

    Returns:
        DensityCoverage: `density` (a float >= 0) and `coverage` (in [0, 1]), and `k`.

    Book: :eq:`ch20-density-coverage`.
    """
    real, fake = _feature_sets(real, fake, "density_coverage")
    k = _neighbours("real", k, real)
    radii = _real_radii(real, k)
    counts, nearest = _ball_counts(fake, real, radii)
    return DensityCoverage(counts.sum().item() / (k * len(fake)),
                           (nearest <= radii).double().mean().item(), k)


def _kernel_sum(x: torch.Tensor, y: torch.Tensor, *, off_diagonal: bool = False) -> float:
    """sum_ij k(x_i, y_j) for the cubic kernel k(x, y) = (x.y / d + 1)^3, in blocks of rows
    of x; off_diagonal (y is x): the terms i = j left out."""
    d = x.shape[1]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in _blocks(len(x), len(y)):
        kern = (x[s] @ y.T / d + 1).pow(3)
        if off_diagonal:
            rows = torch.arange(s.stop - s.start, device=x.device)
            kern[rows, rows + s.start] = 0
        total += kern.sum()
    return total.item()


def _mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 of x (n, d) and y (m, d), n, m >= 2, with the cubic kernel."""
    n, m = len(x), len(y)
    return (_kernel_sum(x, x, off_diagonal=True) / (n * (n - 1))
            + _kernel_sum(y, y, off_diagonal=True) / (m * (m - 1))
            - 2 * _kernel_sum(x, y) / (n * m))


def mmd2_unbiased(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The unbiased estimate of the squared maximum mean discrepancy between the
    distributions of two feature sets, with the cubic polynomial kernel of the kernel
    inception distance (Bińkowski, Sutherland, Arbel and Gretton 2018):

        k(x, y) = (x.y / d + 1)^3
        MMD^2_u = 1/(N(N-1)) sum_{i != i'} k(r_i, r_i') + 1/(M(M-1)) sum_{j != j'} k(f_j, f_j')
                  - 2/(N M) sum_{i, j} k(r_i, f_j)

    Leaving out the terms i = i' (a point with itself) makes its expectation the population
    MMD^2, which is 0 when the two distributions are equal: the estimate is then as often
    below 0 as above. Keeping them (the V-statistic) adds about
    (E k(x, x) - E k(x, y)) (1/N + 1/M) > 0. A copy of the real set scores
    -(2/N) (mean_i k(r_i, r_i) - mean_{i != i'} k(r_i, r_i')) < 0.

    Args:
        real: (N, d) the real points' features, 2 <= N <= MAX_POINTS.
        fake: (M, d) the samples' features, 2 <= M <= MAX_POINTS.

    Returns:
        float: the estimate (it may be negative).

    Book: :eq:`ch20-kid`.
    """
    real, fake = _feature_sets(real, fake, "mmd2_unbiased", minimum=2)
    return _mmd2(real, fake)


def mmd2_left_out(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, torch.Tensor]:
    """`mmd2_unbiased(real, fake)` and its M values with each sample (row of fake) left out
    in turn: the inputs of the jackknife's standard error (`jackknife_se`) and of a paired
    comparison of two sample sets drawn from the same noise
    (`companion.compare.paired_jackknife(a - b, loo_a, loo_b)`).

    With row_j = sum_{j' != j} k(f_j, f_j'), col_j = sum_i k(r_i, f_j), FF = sum_j row_j and
    RF = sum_j col_j, leaving f_j out changes only the terms that hold it:

        MMD^2_(-j) = MMD^2 - FF / (M (M-1)) + 2 RF / (N M)
                     + (FF - 2 row_j) / ((M-1)(M-2)) - 2 (RF - col_j) / (N (M-1))

    in O(M^2 + N M) operations, not M times the statistic's own.

    Args:
        real: (N, d) the real points' features, 2 <= N <= MAX_POINTS.
        fake: (M, d) the samples' features, 3 <= M <= MAX_POINTS (two are left after one
            is left out).

    Returns:
        (the estimate, (M,) float64 tensor: the estimate without sample j).

    Book: :eq:`ch20-kid`.
    """
    real, fake = _feature_sets(real, fake, "mmd2_left_out", minimum=2)
    n, m, d = len(fake), len(real), fake.shape[1]
    if n < 3:
        raise checks.ArgumentError(f"mmd2_left_out needs at least 3 rows in fake (two left "
                                   f"when one is left out), got {n}")
    row = torch.zeros(n, dtype=torch.float64, device=fake.device)
    col = torch.zeros(n, dtype=torch.float64, device=fake.device)
    for s in _blocks(n, n):
        kern = (fake[s] @ fake.T / d + 1).pow(3)
        rows = torch.arange(s.stop - s.start, device=fake.device)
        kern[rows, rows + s.start] = 0  # a sample with itself is no term
        row[s] = kern.sum(1)
    for s in _blocks(m, n):
        col += (real[s] @ fake.T / d + 1).pow(3).sum(0)
    full = _mmd2(real, fake)
    ff, rf = row.sum(), col.sum()
    loo = (full - ff / (n * (n - 1)) + 2 * rf / (m * n)
           + (ff - 2 * row) / ((n - 1) * (n - 2)) - 2 * (rf - col) / (m * (n - 1)))
    return full, loo


@dataclass(frozen=True)
class KID:
    """The kernel inception distance: the mean of the unbiased MMD^2 over random subsets,
    the standard error of that mean (the subsets' SD / sqrt(subsets)), each subset's value
    (subsets,) and the subset size."""

    mean: float
    se: float
    values: torch.Tensor
    subset_size: int

    @property
    def std(self) -> float:
        """The SD of the subsets' values (what papers print as KID's +-)."""
        return self.values.std().item()

    def __str__(self) -> str:
        return (f"KID {self.mean:.4g} +- {self.se:.2g} (SE over {len(self.values)} subsets "
                f"of {self.subset_size})")


MAX_SUBSETS = 10_000


def kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100,
        subset_size: int = 1000, generator: torch.Generator | None = None) -> KID:
    """The kernel inception distance (Bińkowski, Sutherland, Arbel and Gretton 2018): the
    unbiased MMD^2 (`mmd2_unbiased`) averaged over random subsets, their recipe.

        KID = (1/S) sum_s MMD^2_u(real[I_s], fake[J_s]),   SE = SD_s / sqrt(S)

    with I_s, J_s subsets of subset_size rows each, drawn without replacement, afresh for
    each s. Each subset's value is unbiased, so their mean is too, at any subset size
    (unlike the Fréchet distance, whose bias grows as the sets shrink). The subsets share
    rows, so SE is the spread of the mean over subset draws, less than that over new sets
    of samples.

    Args:
        real: (N, d) the real points' features, N >= subset_size.
        fake: (M, d) the samples' features, M >= subset_size.
        subsets: S, the number of subsets (the paper's 100), at least 2.
        subset_size: rows a subset from each set (the paper's 1,000), 2..min(N, M).
        generator: the torch.Generator of the draws (on any device), or None for torch's
            global one; seed it for a repeatable value.

    Returns:
        KID: `mean`, `se`, `values` (S,) float64 and `subset_size`; `std` the SD.

    Book: :eq:`ch20-kid`.
    """
    real, fake = _feature_sets(real, fake, "kid", minimum=2, limit=False)
    subsets = checks.size("subsets", subsets, MAX_SUBSETS, "the paper's recipe draws 100",
                          minimum=2)
    most = min(len(real), len(fake), MAX_POINTS)
    subset_size = checks.count("subset_size", subset_size, minimum=2)
    if subset_size > most:
        raise checks.ArgumentError(
            f"subset_size must be at most the rows of each set (real {len(real)}, fake "
            f"{len(fake)}; and at most {MAX_POINTS:,}), got {subset_size}: pass "
            f"subset_size={most} or less (the paper's 1,000 needs 1,000 rows a set)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise checks.ArgumentError(f"generator must be a torch.Generator or None, got "
                                   f"{type(generator).__name__}")
    where = generator.device if generator is not None else torch.device("cpu")
    values = []
    for _ in range(subsets):
        i = torch.randperm(len(real), generator=generator, device=where)[:subset_size]
        j = torch.randperm(len(fake), generator=generator, device=where)[:subset_size]
        values.append(_mmd2(real[i.to(real.device)], fake[j.to(fake.device)]))
    v = torch.tensor(values, dtype=torch.float64)
    return KID(v.mean().item(), v.std().item() / math.sqrt(subsets), v, subset_size)


@dataclass(frozen=True)
class FrechetTerms:
    """The Fréchet distance's two terms: `mean` |mu_a - mu_b|^2 and `covariance`
    tr(S_a + S_b - 2 (S_a S_b)^1/2); `total` is their sum, frechet_distance(a, b)."""

    mean: float
    covariance: float

    @property
    def total(self) -> float:
        """mean + covariance: the Fréchet distance."""
        return self.mean + self.covariance


def frechet_terms(a: torch.Tensor, b: torch.Tensor) -> FrechetTerms:
    """The Fréchet distance of two feature sets split into the distance between their means
    and the one between their spreads:

        d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)

    with S the sample covariances (divisor N - 1), computed as `frechet_distance` does (the
    same code: their sum is its value). Shifting every feature of a set by one vector moves
    only the first term; the second is the distance between the centred Gaussians, >= 0
    (clamped at 0 against rounding).

    Args:
        a: (N, d) features, N >= 2.
        b: (M, d) features, M >= 2.

    Returns:
        FrechetTerms: `mean` and `covariance`, floats, and their sum `total`.

    Book: :eq:`ch20-frechet-terms`.
    """
    a, b = _frechet_inputs(a, b)
    with one_thread():
        return FrechetTerms(*_gaussian_terms(*_moments(a), *_moments(b)))


@dataclass(frozen=True)
class FrechetInfinity:
    """Chong and Forsyth's extrapolated Fréchet distance: `value` FD_inf and `slope` of the
    least-squares line FD_N = FD_inf + slope / N through the points (`sizes`, `distances`),
    `distances` (len(sizes), draws) float64, row i the draws at sizes[i]."""

    value: float
    slope: float
    sizes: tuple[int, ...]
    distances: torch.Tensor
    se: float = float("nan")  # of value, ordinary least squares (nan with 2 points)
    slope_se: float = float("nan")

    def __str__(self) -> str:
        return (f"FD_inf {self.value:.4g} ± {self.se:.2g} (slope {self.slope:.4g} ± "
                f"{self.slope_se:.2g} in 1/N, from N = {min(self.sizes)}..{max(self.sizes)})")


def _sizes(sizes) -> tuple[int, ...]:
    """sizes, a sequence (a list, a tuple, a 1-D tensor) of whole numbers >= 1, as ints: a
    string was read digit by digit ("12" as 1, 2) and 100.7 as 100."""
    if torch.is_tensor(sizes) and sizes.dim() == 1:
        sizes = sizes.tolist()
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise checks.ArgumentError(f"sizes must be a sequence of subset sizes (ints), e.g. "
                                   f"[100, 200, 400], got {sizes!r:.60}")
    return tuple(checks.count("every one of sizes (a subset size)", n) for n in sizes)


def frechet_line(sizes, distances: torch.Tensor) -> FrechetInfinity:
    """The least-squares line FD_N = FD_inf + slope / N through distances measured at
    several sizes, every draw a point, with the standard errors of ordinary least squares:
    with x = 1/N, residual variance s^2 over n - 2 df and S = sum (x - mean x)^2,

        SE(slope)^2 = s^2 / S,    SE(FD_inf)^2 = s^2 (1/n + mean(x)^2 / S).

    Draws at one size that share samples are not independent, which makes the errors
    somewhat optimistic.

    Args:
        sizes: the K subset sizes (ints, at least 2 different).
        distances: (K, draws) the distances measured at each size.

    Returns:
        FrechetInfinity with `se` and `slope_se`.

    Book: :eq:`ch20-frechet-infinity`.
    """
    sizes = _sizes(sizes)
    fd = checks.numeric("distances", distances, dtype=torch.float64)
    if fd.dim() == 1:
        fd = fd[:, None]
    if fd.dim() != 2 or fd.shape[0] != len(sizes) or fd.shape[1] == 0:
        raise checks.ArgumentError(
            f"distances must be (len(sizes), draws) = ({len(sizes)}, draws), draws >= 1, got "
            f"shape {tuple(fd.shape)}")
    if len(set(sizes)) < 2:
        raise checks.ArgumentError(f"sizes must hold at least 2 different positive sizes, "
                                   f"got {list(sizes)}")
    if not torch.isfinite(fd).all():
        raise checks.ArgumentError("distances must be finite; a NaN or inf came in")
    if bool((fd < 0).any()):
        raise checks.ArgumentError(
            f"distances must be >= 0 (squared Fréchet distances), got min {fd.min().item():.4g}:"
            " pass frechet_distance's values, not differences of them")
    x = (1.0 / torch.tensor(sizes, dtype=torch.float64))[:, None].expand_as(fd).flatten()
    y = fd.flatten()
    sxx = (x - x.mean()).pow(2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    value = y.mean() - slope * x.mean()
    n = len(y)
    se = slope_se = float("nan")
    if n > 2:
        s2 = (y - value - slope * x).pow(2).sum() / (n - 2)
        slope_se = (s2 / sxx).sqrt().item()
        se = (s2 * (1 / n + x.mean() ** 2 / sxx)).sqrt().item()
    return FrechetInfinity(value.item(), slope.item(), sizes, fd, se, slope_se)


MAX_FD_DRAWS = 1000
# draws x sizes x rows of fake: every draw permutes all the rows, and draws x sum(sizes) the
# rows whose covariance is taken; each within its bound, 1,000 draws of a million rows never
# answered. At the bound some tens of seconds on a 2-core CPU.
MAX_FD_PERMUTED = 200_000_000
MAX_FD_ROWS_DRAWN = 50_000_000


def frechet_infinity(real: torch.Tensor, fake: torch.Tensor, sizes, *, draws: int = 1,
                     generator: torch.Generator | None = None) -> FrechetInfinity:
    """The Fréchet distance extrapolated to infinitely many samples (Chong and Forsyth
    2020): to first order the distance of N samples is linear in 1/N,

        FD_N = FD_inf + slope / N,

    so the distances of subsets of several sizes N_i, drawn without replacement from the
    samples and each compared with the whole real set, fix FD_inf by least squares on the
    points (1 / N_i, FD_N_i), every draw a point. Only the samples' bias is removed: the
    real set enters whole, and its own finite size still biases FD_inf a little (use a
    large reference). The paper draws 15 sizes from 5,000 to 50,000 samples.

    Args:
        real: (R, d) the real reference set's features, R >= 2.
        fake: (M, d) the samples' features.
        sizes: at least 2 different subset sizes, each in 2..M (ints).
        draws: subsets drawn at each size (default 1); more steady the fit.
        generator: the torch.Generator of the draws, or None for torch's global one.

    Returns:
        FrechetInfinity: `value` FD_inf, `slope`, `sizes`, `distances`
        (len(sizes), draws) and the fit's standard errors (frechet_line).

    Book: :eq:`ch20-frechet-infinity`.
    """
    real, fake = _frechet_inputs(real, fake, ("real", "fake"))
    sizes = tuple(checks.count("every one of sizes", n, minimum=2, maximum=len(fake))
                  for n in _sizes(sizes))
    if len(set(sizes)) < 2 or len(set(sizes)) != len(sizes):
        raise checks.ArgumentError(
            f"sizes must hold at least 2 different subset sizes, none twice (a line through "
            f"FD against 1/N needs two; draws= repeats a size), got {list(sizes)}")
    draws = checks.size("draws", draws, MAX_FD_DRAWS, "a few draws a size steady the fit")
    permuted = draws * len(sizes) * len(fake)
    if permuted > MAX_FD_PERMUTED or draws * sum(sizes) > MAX_FD_ROWS_DRAWN:
        raise checks.ArgumentError(
            f"draws x len(sizes) x rows of fake = {permuted:,} (each draw permutes every row) "
            f"must be at most {MAX_FD_PERMUTED:,} and draws x sum(sizes) = "
            f"{draws * sum(sizes):,} at most {MAX_FD_ROWS_DRAWN:,}: the call would run for "
            "hours; take fewer draws, or a random subset of fake's rows")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise checks.ArgumentError(f"generator must be a torch.Generator or None, got "
                                   f"{type(generator).__name__}")
    where = generator.device if generator is not None else torch.device("cpu")
    with one_thread():
        ref = _moments(real)
        fd = torch.tensor([[frechet_gaussian(*_moments(
            fake[torch.randperm(len(fake), generator=generator, device=where)[:n].cpu()]),
            *ref) for _ in range(draws)] for n in sizes], dtype=torch.float64)
    return frechet_line(sizes, fd)
