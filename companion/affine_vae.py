"""The affine Gaussian VAE of the Gaussian-toy chapter: data x ~ N(mu, sigma^2 I_d).

    prior    p(z)   = N(0, I_d)
    encoder  q(z|x) = N(a x + b, t^2 I_d)       a, t scalars, b in R^d
    decoder  p(x|z) = N(c z + v, s^2 I_d)       c, s scalars, v in R^d

The decoder is a `LinearGaussian` with W = c I, so its own log p(x) and posterior are exact,
and every expectation in the ELBO is a Gaussian moment: the ELBO has a closed form, per x and
averaged over the data distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .run import checks
from .toy import LOG_2PI, LinearGaussian

PARAMS = ("a", "b", "t", "c", "v", "s")


def pinned_gap(d: int, sigma: float, t, s) -> torch.Tensor:
    """log p(x) - ELBO(x) with the means pinned at the ideal maps of Example 1.3.

    Encoder N((x - mu)/sigma, t^2 I), decoder N(sigma z + mu, s^2 I), p(x) = N(mu, sigma^2 I).
    With r = sigma^2 t^2 / s^2 the gap is  d/2 (r - 1 - log r) + d t^2 / 2,  the same for
    every x. Both terms are >= 0: the first vanishes on s = sigma t, the second at t = 0.

    Book: :eq:`ch5-pinned-gap`.
    """
    t, s = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
    r = (sigma * t / s) ** 2
    return 0.5 * d * (r - 1 - torch.log(r)) + 0.5 * d * t**2


def optimum(mu: torch.Tensor, sigma: float, s: float) -> dict[str, torch.Tensor]:
    """The maximizer of the data-averaged ELBO over (a, b, t, c, v) for a FIXED decoder std s.

    s < sigma:  c = sqrt(sigma^2 - s^2), a = c / sigma^2, t = s / sigma, v = mu, b = -a mu
                (c can be negated together with a and b: the same model, mirrored latent);
    s >= sigma: c = 0, a = 0, b = 0, t = 1, v = mu  (posterior collapse: q(z|x) = p(z)).
    """
    mu = torch.as_tensor(mu, dtype=torch.float64)
    if s <= 0 or sigma <= 0:
        raise ValueError(f"sigma and s must be > 0, got sigma={sigma}, s={s}")
    c = math.sqrt(max(sigma**2 - s**2, 0.0))
    a = c / sigma**2
    t = s / sigma if s < sigma else 1.0
    f = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {"a": f(a), "b": -a * mu, "t": f(t), "c": f(c), "v": mu.clone(), "s": f(s)}


def best_expected_elbo(d: int, sigma: float, s: float | None = None) -> float:
    """max of E_x[ELBO(x)] over the affine family; s = None: decoder std learned too.

    s <= sigma (or learned): E_x[log p(x)] = -d/2 log(2 pi e sigma^2), the bound is tight;
    s > sigma: -d/2 log(2 pi s^2) - d sigma^2 / (2 s^2).
    """
    if s is None or s <= sigma:
        return -0.5 * d * (LOG_2PI + 1 + 2 * math.log(sigma))
    return -0.5 * d * (LOG_2PI + 2 * math.log(s)) - 0.5 * d * sigma**2 / s**2


class AffineVAE(nn.Module):
    """Affine encoder N(a x + b, t^2 I) and decoder N(c z + v, s^2 I) on R^d (float64).

    d: dimension of x and z. learn: names in ("a", "b", "t", "c", "v", "s") to train; the
    others are frozen at their initial values. init: dict of initial values (scalars for a,
    t, c, s; (d,) tensors for b, v); missing ones are drawn at random from `generator`.
    """

    def __init__(self, d: int, init: dict | None = None, learn=PARAMS,
                 generator: torch.Generator | None = None):
        super().__init__()
        d = checks.count("d (a positive int)", d)
        unknown = set(learn) - set(PARAMS) | set(init or {}) - set(PARAMS)
        if unknown:
            raise ValueError(f"unknown parameter names {sorted(unknown)}; use {PARAMS}")
        self.d = d
        init = dict(init or {})

        def rnd(*shape):
            return torch.randn(*shape, dtype=torch.float64, generator=generator)

        start = {  # a random start: slopes and offsets ~ N(0, 1), stds in [0.5, 2]
            "a": rnd(()), "b": rnd(d), "c": rnd(()), "v": rnd(d),
            "t": torch.exp(rnd(()).clamp(-1, 1) * 0.7), "s": torch.exp(rnd(()).clamp(-1, 1) * 0.7),
        }
        for k, val in init.items():
            start[k] = torch.as_tensor(val, dtype=torch.float64).clone()
        for k in ("t", "s"):
            if (start[k] <= 0).any():
                raise ValueError(f"{k} is a standard deviation and must be > 0")
        values = {"a": start["a"], "b": start["b"], "c": start["c"], "v": start["v"],
                  "log_t": start["t"].log(), "log_s": start["s"].log()}
        for name, val in values.items():
            key = name.removeprefix("log_")
            if key in learn:
                setattr(self, name, nn.Parameter(val.reshape(() if key not in "bv" else (d,))))
            else:
                self.register_buffer(name, val.reshape(() if key not in "bv" else (d,)))

    @classmethod
    def pinned(cls, mu, sigma: float, t: float, s: float) -> AffineVAE:
        """Example 1.6's model: means pinned at the ideal maps, only t and s learned.

        Book: :eq:`ch5-ideal`, :eq:`ch5-pinned`.
        """
        mu = torch.as_tensor(mu, dtype=torch.float64)
        init = {"a": 1 / sigma, "b": -mu / sigma, "c": sigma, "v": mu, "t": t, "s": s}
        return cls(len(mu), init=init, learn=("t", "s"))

    # --- the two networks ----------------------------------------------------------------
    @property
    def t(self) -> torch.Tensor:
        return self.log_t.exp()

    @property
    def s(self) -> torch.Tensor:
        return self.log_s.exp()

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (B, d) with d = {self.d}, got {tuple(x.shape)}")
        return x

    def encode(self, x: torch.Tensor):
        """q(z|x): mean (B, d) = a x + b and the scalar std t."""
        return self.a * self._check_x(x) + self.b, self.t

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) = c z + v: (..., d) -> (..., d)."""
        return self.c * z + self.v

    def decoder(self) -> LinearGaussian:
        """The generative model alone, p(z) p(x|z), with exact log p(x) and posterior."""
        W = self.c.detach() * torch.eye(self.d, dtype=torch.float64)
        return LinearGaussian(W, self.v.detach(), float(self.s.detach()))

    # --- the ELBO -------------------------------------------------------------------------
    def kl(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) = 1/2 (d t^2 + |m|^2 - d - 2 d log t): (B,)."""
        m, t = self.encode(x)
        return 0.5 * (self.d * t**2 + m.pow(2).sum(-1) - self.d - 2 * self.d * self.log_t)

    def reconstruction_mc(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x|z)] by reparameterized samples z = m + t eps.  eps: (S, B, d) -> (B,)."""
        m, t = self.encode(x)
        z = m + t * eps
        r = x - self.decode_mean(z)
        logp = -0.5 * (r.pow(2).sum(-1) / self.s**2 + self.d * (LOG_2PI + 2 * self.log_s))
        return logp.mean(0)

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        """E_q[log p(x|z)] exactly: -(|x - c m - v|^2 + d c^2 t^2) / (2 s^2) - d/2 log(2 pi s^2).

        Book: :eq:`ch5-pinned-recon`.
        """
        m, t = self.encode(x)
        sq = (x - self.decode_mean(m)).pow(2).sum(-1) + self.d * self.c**2 * t**2
        return -0.5 * (sq / self.s**2 + self.d * (LOG_2PI + 2 * self.log_s))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The exact ELBO(x) = reconstruction - KL: (B,)."""
        return self.reconstruction(x) - self.kl(x)

    def elbo_mc(self, x: torch.Tensor, n_samples: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The reparameterized one-batch estimate a VAE trains on: (B,), unbiased."""
        eps = torch.randn(n_samples, *x.shape, dtype=x.dtype, generator=generator)
        return self.reconstruction_mc(x, eps) - self.kl(x)

    def expected_elbo(self, mu, sigma: float) -> torch.Tensor:
        """E_{x ~ N(mu, sigma^2 I)}[ELBO(x)] in closed form (a scalar, differentiable)."""
        mu = torch.as_tensor(mu, dtype=torch.float64)
        a, b, c, v, d = self.a, self.b, self.c, self.v, self.d
        t2, s2 = self.t**2, self.s**2
        g = 1 - c * a  # x - c (a x + b) - v = g x - c b - v
        sq = (g * mu - c * b - v).pow(2).sum() + d * sigma**2 * g**2 + d * c**2 * t2
        recon = -0.5 * (sq / s2 + d * (LOG_2PI + torch.log(s2)))
        kl = 0.5 * (d * t2 + (a * mu + b).pow(2).sum() + d * a**2 * sigma**2 - d
                    - d * torch.log(t2))
        return recon - kl

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x = c z + v + s eps with z ~ N(0, I): (n, d) draws from the model."""
        kw = dict(dtype=torch.float64, generator=generator)
        z = torch.randn(n, self.d, **kw)
        with torch.no_grad():
            return self.decode_mean(z) + self.s * torch.randn(n, self.d, **kw)

    def values(self) -> dict[str, torch.Tensor]:
        """Current (a, b, t, c, v, s), detached."""
        return {"a": self.a.detach().clone(), "b": self.b.detach().clone(),
                "t": self.t.detach().clone(), "c": self.c.detach().clone(),
                "v": self.v.detach().clone(), "s": self.s.detach().clone()}


@dataclass
class TrainResult:
    """step: the steps where values were recorded; elbo: E_x[ELBO] there (closed form);
    params: the parameter values there (dicts)."""

    step: list[int] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)


def train(model: AffineVAE, mu, sigma: float, *, steps: int, batch_size: int = 256,
          lr: float = 0.02, record_every: int = 10, generator: torch.Generator | None = None,
          ) -> TrainResult:
    """Maximize the ELBO by SGD (Adam) on fresh batches x ~ N(mu, sigma^2 I).

    Each step uses the reparameterized one-sample estimate `elbo_mc` (what a VAE does);
    the learning rate decays linearly to lr/100 so the noise of the estimate averages out.
    """
    mu = torch.as_tensor(mu, dtype=torch.float64)
    if mu.shape != (model.d,):
        raise ValueError(f"mu must have shape ({model.d},), got {tuple(mu.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has nothing to learn (learn=() froze every parameter)")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - 0.99 * k / steps)
    res = TrainResult()

    def record(k):
        with torch.no_grad():
            res.step.append(k)
            res.elbo.append(model.expected_elbo(mu, sigma).item())
            res.params.append(model.values())

    for k in range(steps):
        if k % record_every == 0:
            record(k)
        x = mu + sigma * torch.randn(batch_size, model.d, dtype=torch.float64,
                                     generator=generator)
        loss = -model.elbo_mc(x, generator=generator).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    record(steps)
    return res
