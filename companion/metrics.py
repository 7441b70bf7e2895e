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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import distributions as D

from .kl import kl_diag_standard
from .run import checks
from .run.memory import map_chunks
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

    Book: :eq:`ch9-frechet`.
    """
    for name, v in (("a", a), ("b", b)):
        if v is None or isinstance(v, str):
            raise checks.ArgumentError(f"{name} must be a feature matrix (N, d), got {v!r}")
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two feature matrices (N, d) and (M, d) with the same d, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 rows in each set for a covariance, got {len(a)} "
                         f"and {len(b)}")
    if a.shape[1] == 0:
        raise ValueError(f"the features have d = 0 dimensions, shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}; pass the judge's features, not an empty slice")
    for name, f in (("a", a), ("b", b)):
        if f.is_complex() or f.dtype == torch.bool:
            raise TypeError(f"{name} must hold real features, got {f.dtype}")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    for name, f in (("a", a), ("b", b)):  # on the CPU copy: no further device sync
        _check_finite(f, name, "rows")
    with one_thread():
        mu_a, mu_b = a.mean(0), b.mean(0)
        cov_a = torch.cov(a.T).reshape(a.shape[1], -1)
        cov_b = torch.cov(b.T).reshape(b.shape[1], -1)
        return frechet_gaussian(mu_a, cov_a, mu_b, cov_b)


def frechet_gaussian(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                     cov_b: torch.Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    mu: (d,), cov: (d, d) symmetric PSD; float64 throughout (see frechet_distance).
    """
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
        d2 = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(d2.item(), 0.0)


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
    sizes = {len(f) for f in features.values()}
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
    """The jackknife standard error from left-out values l (N,): sqrt((N-1)/N sum (l - l̄)^2)."""
    v = torch.as_tensor(loo, dtype=torch.float64).flatten()
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
    sizes = {len(f) for f in features.values()}
    if len(sizes) != 1:
        raise ValueError(f"every feature set needs the same number of rows for paired "
                         f"bootstrap draws, got sizes {sorted(sizes)}")
    if draws < 2:
        raise ValueError(f"draws must be at least 2 (an SD needs two), got {draws}")
    n = sizes.pop()
    picks = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(seed))
    with one_thread():  # one switch for all the draws (each switch restarts the pool)
        fd = {k: frechet_distance(f, reference) for k, f in features.items()}
        boot = {k: torch.tensor([frechet_distance(f[i], reference) for i in picks],
                                dtype=torch.float64) for k, f in features.items()}
    return fd, boot


def label_histogram(probs: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """How many images a classifier assigns to each class: probs (N, K) -> (K,) int64."""
    probs = checks.tensor("probs", probs)
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
    probs = torch.as_tensor(probs)
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
