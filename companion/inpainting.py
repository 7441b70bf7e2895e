"""A trained generative model as a prior: in-painting and denoising (chapter 12).

Known pixels y = m * x with a mask m (1 where the pixel is known, 0 where it is missing);
the task is to draw from p(x | y) with a model of p(x) alone, one that never saw a mask.

With a diffusion model (`companion.diffusion.Diffusion` and its eps_theta), on images
scaled to [-1, 1]:

* replacement: at every reverse step x_t -> x_{t-1}, the unknown pixels come from the
  model, p(x_{t-1} | x_t), and the known ones from the forward process applied to y,
  q(x_{t-1} | x_0 = y) = N(sqrt(alpha_bar_{t-1}) y, (1 - alpha_bar_{t-1}) I):
      x_{t-1} = m * x_{t-1}^known + (1 - m) * x_{t-1}^unknown;
* resampling (RePaint, Lugmayr et al. 2022): after some steps, go back `jump` steps with
  the forward process, q(x_{t+j} | x_t) = N(sqrt(alpha_bar_{t+j} / alpha_bar_t) x_t,
  (1 - alpha_bar_{t+j} / alpha_bar_t) I), and denoise again, `resamples` times in all,
  so that the model sees the known pixels and harmonizes the unknown ones with them.
  Lugmayr et al.'s code draws the known pixels from q(x_k | x_0 = y) just before each
  network call; here they are drawn when a step lands on x_k and carried through a jump
  by q(x_{k+j} | x_k), which leaves them with the same distribution (a unit test checks
  every visited state against q(x_k | x_0) under an exact model);
* diffusion posterior sampling (DPS, Chung et al. 2023; chapter 16): after every ancestral
  step, move x_{k-1} against the gradient, taken through the network, of the error of
  the network's clean estimate on the known pixels, |m * (y - x0_hat(x_k))|: guidance by
  the measurement's log-likelihood instead of a classifier's;
* denoising: y = x + sigma eps is, after scaling by sqrt(alpha_bar_t), an x_t of the
  forward process for the t with (1 - alpha_bar_t) / alpha_bar_t = sigma^2: start the
  reverse chain there.

With a VAE (`companion.models.vae.VAE`, images in [0, 1]):

* MAP in z: z* = argmax_z log p(y_known | z) + log p(z), the completion f(z*);
* pseudo-Gibbs (Rezende et al. 2014): z ~ q(z | x), x_missing <- E[x_missing | z], repeat.

Every sampler runs on a reverse chain of `n_steps` of the model's T steps (improved-
diffusion's respacing, as `Diffusion.sample` does), so that a CPU can afford it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .diffusion import Diffusion, spaced_timesteps
from .run import checks
from .run.progress import progress

MASKS = {
    "left": "left half missing",
    "bottom": "bottom half missing",
    "centre": "centre 14 x 14 square missing",
    "keep50": "50% of pixels kept at random",
    "keep20": "20% of pixels kept at random",
}


# --- masks ----------------------------------------------------------------------------------
def make_mask(name: str, n: int = 1, *, size: int = 28, generator=None,
              device=None) -> torch.Tensor:
    """The book's masks, 1 where a pixel is known: (n, 1, size, size) float32 of 0s and 1s.

    name: one of MASKS. The random masks ("keep50", "keep20") draw each pixel independently
    (a different mask per image, from `generator`); the others are the same for every image.
    """
    if name not in MASKS:
        raise ValueError(f"unknown mask {name!r}; choose one of {sorted(MASKS)}")
    n = checks.count("n (the number of masks)", n)
    m = torch.ones(n, 1, size, size, device=device)
    half, q = size // 2, size // 4
    if name == "left":
        m[..., :half] = 0
    elif name == "bottom":
        m[..., half:, :] = 0
    elif name == "centre":
        m[..., q:q + half, q:q + half] = 0
    else:
        keep = int(name[4:]) / 100
        u = torch.rand(m.shape, generator=generator,
                       device=generator.device if generator is not None else device)
        m = (u < keep).float().to(m.device)
    return m


def check_mask(mask, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """The mask as a bool tensor that broadcasts against x (B, ...): True where known.

    mask: a tensor of 0s and 1s (bool, int or float) of shape x.shape, (1, *x.shape[1:]) or
    x.shape[1:] (one mask for the whole batch).
    """
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"{name} must be a floating-point batch (B, ...), got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    if not torch.is_tensor(mask):
        raise TypeError(f"mask must be a torch tensor of 0s and 1s, got {type(mask).__name__}; "
                        "make one with make_mask(name, n)")
    ok = (tuple(x.shape), (1, *x.shape[1:]), tuple(x.shape[1:]))
    if tuple(mask.shape) not in ok:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but {name} has shape "
                         f"{tuple(x.shape)}: give one mask per image {ok[0]} or one for all "
                         f"{ok[1]}")
    if mask.dtype != torch.bool:
        bad = ~((mask == 0) | (mask == 1))
        if bad.any():
            raise ValueError(f"mask must hold only 0 (missing) and 1 (known), found "
                             f"{mask[bad].flatten()[0].item()!r}; threshold it, e.g. "
                             "mask > 0.5")
        mask = mask == 1
    return mask.to(x.device)


# --- the reverse chain with known pixels ---------------------------------------------------
def repaint_schedule(n_steps: int, jump: int = 1, resamples: int = 1) -> list[int]:
    """The states k = n_steps .. 0 of the reverse chain that RePaint visits, in order.

    A move k -> k - 1 is a denoising step (one network call), k -> k + jump a jump back
    with the forward process. As in Lugmayr et al.'s code, after arriving at a state
    k = 1 + i * jump (i = 0, 1, ...; k <= n_steps - jump) the chain jumps back `jump` states
    and denoises them again, `resamples - 1` times. resamples = 1 is plain replacement:
    n_steps, n_steps - 1, ..., 0. The number of network calls is
    n_steps + (resamples - 1) * jump * len(range(0, n_steps - jump, jump)).

    Book: :eq:`ch12-jump`.
    """
    n_steps, jump, resamples = (checks.count(what, value) for value, what in (
        (n_steps, "n_steps"), (jump, "jump"), (resamples, "resamples")))
    if resamples > 1 and jump >= n_steps:
        raise ValueError(f"jump ({jump}) must be shorter than the chain (n_steps = "
                         f"{n_steps}) to resample")
    left = {j + 1: resamples - 1 for j in range(0, n_steps - jump, jump)}
    k, states = n_steps, [n_steps]
    while k > 0:
        k -= 1
        states.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            for _ in range(jump):
                k += 1
                states.append(k)
    return states


def network_calls(states: list[int]) -> int:
    """The denoising moves (one network call each) of a schedule from repaint_schedule."""
    return sum(b < a for a, b in zip(states[:-1], states[1:], strict=True))


def _chain(diffusion: Diffusion, steps: list[int]) -> Diffusion:
    """The diffusion over the kept steps: the original one when none is skipped."""
    if steps == list(range(1, len(steps) + 1)):
        if len(steps) == diffusion.T:
            return diffusion
        return Diffusion(diffusion.betas[:len(steps)], device=diffusion.device)
    return diffusion.respaced(steps)


def _randn(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


def _reverse(diffusion, eps_model, x, steps, y, known, states, variance, clip, generator,
             callback, quiet, desc):
    """Walk `states` on the chain over `steps` from x at states[0]; the known pixels (where
    `known` is True) come from q(x_k | x_0 = y). Shared by inpaint and denoise."""
    sub = _chain(diffusion, steps)
    abar = [1.0] + sub.alphas_bar.tolist()  # abar[k] on the sub-chain, abar[0] = 1
    model_t = torch.tensor([0] + list(steps), dtype=torch.long, device=x.device)
    for a, b in progress(list(zip(states[:-1], states[1:], strict=True)), desc=desc,
                         quiet=quiet):
        if b > a:  # jump back: q(x_b | x_a) of the forward process
            r = abar[b] / abar[a]
            x = math.sqrt(r) * x + math.sqrt(1 - r) * _randn(x, generator)
            continue
        eps = eps_model(x, model_t[a].expand(len(x)))
        out = sub.p_mean_variance(lambda *_, e=eps: e, x, a, variance, clip)
        if callback is not None:
            callback(a, int(model_t[a]), x, out["x0"])
        x = out["mean"]
        # one draw serves both regions (each pixel uses its entry once): with nothing known
        # the chain consumes the generator exactly as Diffusion.sample does
        z = _randn(x, generator) if b > 0 else None
        if b > 0:
            x = x + out["variance"].sqrt() * z
        if known is not None:
            y_b = y if b == 0 else math.sqrt(abar[b]) * y + math.sqrt(1 - abar[b]) * z
            x = torch.where(known, y_b, x)
    return x


@torch.no_grad()
def inpaint(diffusion: Diffusion, eps_model, y: torch.Tensor, mask, *,
            n_steps: int | None = None, jump: int = 1, resamples: int = 1,
            variance: str = "beta", clip: bool = False, x_T: torch.Tensor | None = None,
            generator: torch.Generator | None = None, callback=None,
            quiet: bool | None = None) -> torch.Tensor:
    """Complete y (B, ...) on [-1, 1] where mask is 0, with the diffusion model as the prior.

    resamples = 1: replacement, at each reverse step k -> k - 1
        x_{k-1} = m * (sqrt(abar_{k-1}) y + sqrt(1 - abar_{k-1}) z)
                  + (1 - m) * (mu_theta(x_k, k) + sigma_k z),
    and x_0 = m * y + (1 - m) * mu_theta(x_1, 1): the known pixels come back exactly.
    resamples > 1: RePaint, the states of repaint_schedule(n_steps, jump, resamples).
    With an all-zeros mask this is Diffusion.sample with the same random numbers.

    Args:
        diffusion: the Diffusion (schedule) eps_model was trained with.
        eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...).
        y: (B, ...) the images on [-1, 1]; only the known pixels are read.
        mask: 1 where a pixel is known, 0 where it is to be completed, shaped y.shape,
            (1, *y.shape[1:]) or y.shape[1:] (see `check_mask`).
        n_steps: the reverse chain over spaced_timesteps(T, n_steps) (default None: all T
            steps).
        jump: RePaint's jump length j (default 1).
        resamples: RePaint's resamplings u (default 1: replacement).
        variance: "beta" (default) or "posterior", as in Diffusion.sample.
        clip: clip each predicted x_0 to [-1, 1] (default False).
        x_T: the starting noise (B, ...); None (default) draws it.
        generator: for the noise (default None: torch's global generator).
        callback: callback(k, t, x_k, x0_pred) before each denoising step (k on the
            chain, t the model's); default None.
        quiet: no progress bar (default: the profile decides).

    Returns:
        (B, ...) the completed images, equal to y where mask is 1.

    Book: :eq:`ch12-replacement`, :eq:`ch12-jump`.
    """
    if not torch.is_tensor(y) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor (B, ...) on [-1, 1], got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    known = check_mask(mask, y, "y")
    _check_known_pixels(y, known, -1.0)
    steps = spaced_timesteps(diffusion.T, n_steps if n_steps is not None else diffusion.T)
    states = repaint_schedule(len(steps), jump, resamples)
    if x_T is None:
        x_T = torch.randn(y.shape, device=y.device, generator=generator)
    elif x_T.shape != y.shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected y's {tuple(y.shape)}")
    return _reverse(diffusion, eps_model, x_T.clone(), steps, y, known, states, variance,
                    clip, generator, callback, quiet,
                    "replacement" if resamples == 1 else "RePaint")


def dps_gradient(diffusion: Diffusion, eps_model, x_t: torch.Tensor, t: int,
                 y: torch.Tensor, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor]:
    """DPS's correction at step t: the gradient through the network of the measurement error,

        g = grad_{x_t} |m * (y - x0_hat(x_t))|,  x0_hat = (x_t - sqrt(1 - abar_t) eps) /
        sqrt(abar_t),

    per image (the norm over its known pixels), at most
    companion.run.memory.MAX_IMAGES_WITH_GRAD images a backward pass. With Gaussian
    measurement noise of variance s^2, -|r|^2 / (2 s^2) is the log-likelihood of y given
    x0_hat; Chung et al. step along grad |r|^2 with a step zeta' / |r|, which is this g
    times 2 zeta'.

    Args:
        diffusion: the Diffusion eps_model was trained with.
        eps_model: (x_t (B, ...), t (B,)) -> eps (B, ...).
        x_t: (B, ...) the chain's state at step t.
        t: the model's step, an int in 1..T.
        y: (B, ...) the measured images on [-1, 1]; only the known pixels are read.
        mask: 1 where a pixel is known, shaped as `check_mask` accepts.

    Returns:
        (g (B, ...), x0_hat (B, ...), eps (B, ...), |r| (B,)), all without gradients.

    An eps_model whose output does not depend on x_t (run under torch.no_grad, or
    detached) is refused: g would hold only x0_hat's direct term, without the network's.

    Book: :eq:`ch16-dps`.
    """
    from .diffusion import predict_x0
    from .run.memory import map_chunks

    t = checks.count(f"t (a step of the chain, 1..T = 1..{diffusion.T})", t,
                     maximum=diffusion.T)
    if not torch.is_tensor(y) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor (B, ...) on [-1, 1], got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    known = check_mask(mask, y, "y").expand_as(y)
    checks.same_shape("x_t and y", checks.batch("x_t", x_t), y)
    y = _known_only(y, known)
    abar = diffusion._alphas_bar_list[t]  # the host copy: no device sync

    def chunk(xb, yb, mb):
        with torch.enable_grad():
            # two leaves for one x_t: the network's input apart, to see that eps depends on it
            xn = xb.detach().requires_grad_(True)
            xb = xb.detach().requires_grad_(True)
            eps = eps_model(xn, torch.full((len(xb),), t, dtype=torch.long,
                                           device=xb.device)).to(xb.dtype)
            x0 = predict_x0(xb, eps, abar)
            norm = (mb * (yb - x0)).flatten(1).norm(dim=1)
            g, g_net = torch.autograd.grad(norm.sum(), (xb, xn), allow_unused=True)
        if g_net is None:  # the network's term is gone: no_grad or detach in eps_model
            raise checks.not_differentiable("eps_model", "DPS's correction",
                                            "its output does not depend on x_t")
        return g + g_net, x0.detach(), eps.detach(), norm.detach()

    return map_chunks(chunk, x_t, y, known.to(x_t.dtype), grad=True)


def _known_only(y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """y with its missing pixels set to 0: they are never read, and a NaN there would
    still make 0 * NaN = NaN of every product with the mask."""
    return torch.where(known, y, torch.zeros((), dtype=y.dtype, device=y.device))


def dps(diffusion: Diffusion, eps_model, y: torch.Tensor, mask, *, zeta: float = 1.0,
        n_steps: int | None = None, variance: str = "beta",
        x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
        quiet: bool | None = None) -> torch.Tensor:
    """Diffusion posterior sampling (Chung et al. 2023) for in-painting: complete y where
    mask is 0.

    At each reverse step k -> k - 1 of the chain over spaced_timesteps(T, n_steps):
        x'_{k-1} = mu_theta(x_k, k) + sigma_k z           (the ancestral step, Algorithm 2)
        x_{k-1}  = x'_{k-1} - zeta grad_{x_k} |m * (y - x0_hat(x_k))|   (`dps_gradient`)
    no noise at the last step. The known pixels are never replaced: they come back only as
    well as the guidance pulls them (the measured error on them says how well). Each step
    costs a forward and a backward pass through the network, about three forward passes.

    Args:
        diffusion: the Diffusion (schedule) eps_model was trained with.
        eps_model: (x_t (B, ...), t int64 (B,)) -> eps (B, ...), differentiable in x_t.
        y: (B, ...) the images on [-1, 1]; only the known pixels are read.
        mask: 1 where a pixel is known, 0 where it is to be completed (`check_mask`).
        zeta: the step size zeta, >= 0 (default 1.0; 0: the unguided sampler).
        n_steps: the reverse chain over spaced_timesteps(T, n_steps) (default None: all
            T steps).
        variance: "beta" (default) or "posterior", as in Diffusion.sample.
        x_T: the starting noise (B, ...); None (default) draws it.
        generator: for the noise (default None: torch's global generator).
        quiet: no progress bar (default: the profile decides).

    Returns:
        (B, ...) the completed images (not clipped).

    Book: :eq:`ch16-dps`.
    """
    if not torch.is_tensor(y) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor (B, ...) on [-1, 1], got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    known = check_mask(mask, y, "y")
    _check_known_pixels(y, known, -1.0)
    y = _known_only(y, known)
    zeta = checks.real("zeta (DPS's step size, >= 0)", zeta, low=0.0)
    steps = spaced_timesteps(diffusion.T, n_steps if n_steps is not None else diffusion.T)
    sub = _chain(diffusion, steps)
    if x_T is None:
        x_T = torch.randn(y.shape, device=y.device, generator=generator)
    elif x_T.shape != y.shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected y's {tuple(y.shape)}")
    x = x_T.clone()
    for k in progress(range(len(steps), 0, -1), desc="DPS", quiet=quiet):
        g, _, eps, _ = dps_gradient(sub, lambda xb, _t, k=k: eps_model(
            xb, torch.full((len(xb),), steps[k - 1], dtype=torch.long, device=xb.device)),
            x, k, y, known)
        with torch.no_grad():
            out = sub.p_mean_variance(lambda *_, e=eps: e, x, k, variance, False)
            x = out["mean"]
            if k > 1:
                x = x + out["variance"].sqrt() * _randn(x, generator)
            x = x - zeta * g
    return x


def sigma_range(diffusion: Diffusion) -> tuple[float, float]:
    """The noise levels sigma_t = sqrt((1 - abar_t) / abar_t) at t = 1 and t = T."""
    abar = diffusion.alphas_bar
    s = ((1 - abar) / abar).sqrt()
    return float(s[0]), float(s[-1])


def matching_step(diffusion: Diffusion, sigma: float) -> int:
    """The t in 1..T whose noise level sqrt((1 - abar_t) / abar_t) is closest to sigma
    (in ratio: the smallest |log(sigma_t / sigma)|).

    A digit x plus N(0, sigma^2) noise, scaled by sqrt(abar_t), is distributed as x_t when
    (1 - abar_t) / abar_t = sigma^2, i.e. abar_t = 1 / (1 + sigma^2).

    Book: :eq:`ch12-denoise`.
    """
    lo, hi = sigma_range(diffusion)
    sigma = checks.as_float(sigma)  # NumPy and one-element tensors too
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) \
            or not lo <= sigma <= hi:
        raise ValueError(f"sigma must be a noise level in the schedule's range "
                         f"[{lo:.4g}, {hi:.4g}] (images on [-1, 1]), got {sigma!r}")
    abar = diffusion.alphas_bar
    gap = (0.5 * ((1 - abar) / abar).log() - math.log(sigma)).abs()  # on a log scale
    return int(gap.argmin()) + 1


@torch.no_grad()
def denoise(diffusion: Diffusion, eps_model, y: torch.Tensor, sigma: float, *,
            n_steps: int | None = None, variance: str = "beta", clip: bool = False,
            generator: torch.Generator | None = None, quiet: bool | None = None
            ) -> torch.Tensor:
    """Denoise y = x + sigma eps (B, ...) on [-1, 1]: the reverse chain from x_t = sqrt(abar_t) y.

    t = matching_step(diffusion, sigma); the chain runs over spaced_timesteps(t, n_steps)
    (None: every step t, t - 1, ..., 1). The output is a draw from the model's p(x_0 | x_t),
    not the posterior mean.

    Book: :eq:`ch12-denoise`.
    """
    if not torch.is_tensor(y) or not y.is_floating_point() or y.dim() < 2:
        raise TypeError(f"y must be a floating-point batch (B, ...) on [-1, 1], got "
                        f"{getattr(y, 'shape', type(y).__name__)}")
    t = matching_step(diffusion, sigma)
    _check_noisy_images(y, float(sigma))
    steps = spaced_timesteps(t, min(n_steps, t) if n_steps is not None else t)
    x = math.sqrt(float(diffusion.alphas_bar[t - 1])) * y
    states = list(range(len(steps), -1, -1))
    return _reverse(diffusion, eps_model, x, steps, y, None, states, variance, clip,
                    generator, None, quiet, "denoise")


# --- a VAE as the prior ---------------------------------------------------------------------
def _masked_log_likelihood(vae, y, out, known) -> torch.Tensor:
    """log p(y_known | z) summed over the known pixels: (B,)."""
    w = known.to(y.dtype).expand_as(y)
    if vae.likelihood == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(out, y.expand_as(out), reduction="none")
    elif vae.likelihood == "gaussian":
        s = vae.sigma
        ll = -0.5 * (((y - out) / s) ** 2 + 2 * s.log() + math.log(2 * math.pi))
    else:
        raise ValueError(f"in-painting with a VAE needs a Bernoulli or Gaussian decoder, got "
                         f"{vae.likelihood!r}")
    return (ll * w).flatten(1).sum(1)


def vae_map(vae, y: torch.Tensor, mask, *, steps: int = 300, lr: float = 0.05,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP in z: maximize log p(y_known | z) + log p(z) by Adam from z ~ N(0, I).

    y: (B, 1, 28, 28) in [0, 1] (the missing pixels are ignored). Returns (E[x | z*],
    z*): the decoder's image (B, 1, 28, 28), which need not reproduce the known pixels,
    and z* (B, latent). Several random starts give several local optima: the spread of the
    completions is that of the optimizer's starts, not a posterior.

    Book: :eq:`ch12-map`.
    """
    known = check_mask(mask, y, "y")
    _check_known_pixels(y, known, 0.0)
    y = _known_only(y, known)
    steps = checks.count("steps", steps)
    lr = checks.positive("lr", lr)
    z = torch.randn(len(y), vae.latent_dim, device=y.device, generator=generator)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    was = vae.training
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            loss = -(_masked_log_likelihood(vae, y, vae.decode(z), known)
                     - 0.5 * (z**2).sum(1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in vae.parameters():
            p.requires_grad_(True)
        vae.train(was)
    z = z.detach()
    with torch.no_grad():
        return vae.mean_image(z), z


@torch.no_grad()
def vae_pseudo_gibbs(vae, y: torch.Tensor, mask, *, iterations: int = 100,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Rezende et al.'s imputation: the missing pixels start as uniform noise, then
    z ~ q(z | x), x <- m * y + (1 - m) * E[x | z], `iterations` times.

    y: (B, 1, 28, 28) in [0, 1]. Returns the completion (B, 1, 28, 28); the known pixels
    are y's exactly.
    """
    known = check_mask(mask, y, "y")
    _check_known_pixels(y, known, 0.0)
    iterations = checks.count("iterations", iterations)
    was = vae.training
    vae.eval()
    x = torch.where(known, y, torch.rand(y.shape, device=y.device, generator=generator))
    for _ in range(iterations):
        mu, logvar = vae.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, device=mu.device,
                                                    generator=generator)
        x = torch.where(known, y, vae.mean_image(z))
    vae.train(was)
    return x


def _check_known_pixels(y: torch.Tensor, known: torch.Tensor, low: float) -> None:
    """y's known pixels must lie in [low, 1] (the missing ones are ignored): 0..255 bytes,
    or images on the other of [0, 1] and [-1, 1], would complete nonsense silently."""
    checks.images("y (its known pixels)", y.detach()[known.expand_as(y)], low=low, high=1.0)


def _check_noisy_images(y: torch.Tensor, sigma: float) -> None:
    """y = x + sigma eps with x on [-1, 1]: each image's mean lies in [-1, 1] up to the
    noise's, sigma / sqrt(D) per unit (6 of them allowed), which 0..255 bytes do not."""
    means = y.detach().float().flatten(1).mean(1)
    slack = 1.0 + 6.0 * sigma / math.sqrt(max(y[0].numel(), 1))
    if len(means) and not bool((means.abs() <= slack).all()):
        raise checks.ArgumentError(
            f"y must be images on [-1, 1] plus noise of level sigma = {sigma:g}, but an image "
            f"has mean {float(means.abs().max()):.3g} (more than {slack:.3g}): 0..255 "
            "bytes? divide by 127.5 and subtract 1; [0, 1]? map with x * 2 - 1")


# --- measuring completions ------------------------------------------------------------------
def region_rmse(x: torch.Tensor, truth: torch.Tensor, region) -> torch.Tensor:
    """Root mean squared error per image over the pixels where `region` is 1: (B,).

    x, truth: (B, ...); region: a 0/1 mask as check_mask takes it. NaN for an image whose
    region is empty.
    """
    r = check_mask(region, x).to(x.dtype).expand_as(x)
    se = ((x - truth) ** 2 * r).flatten(1).sum(1)
    return (se / r.flatten(1).sum(1)).sqrt()


def spread(x: torch.Tensor, k: int, region) -> torch.Tensor:
    """How much k completions of one input disagree: the per-pixel standard deviation over
    the k draws, averaged over `region` (the missing pixels). -> (B,)

    x: (k * B, ...), draw j of input i at row j * B + i; region: (B, ...) or one for all.
    """
    if not isinstance(k, int) or k < 2 or len(x) % k:
        raise ValueError(f"need k >= 2 completions per input and k * B rows, got k={k!r} "
                         f"for {len(x)} rows")
    xs = x.reshape(k, len(x) // k, *x.shape[1:])
    sd = xs.std(0)
    r = check_mask(region, sd).to(x.dtype).expand_as(sd)
    return (sd * r).flatten(1).sum(1) / r.flatten(1).sum(1)
