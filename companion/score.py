"""Score matching and score-based guidance: learning grad log p without knowing it, and
steering a sampler with Bayes' rule on scores.

A score model is a callable s(x) -> like x, with x a batch (B, ...) and one score per
point; the losses average over the batch the per-point sum over its dimensions. Explicit
score matching needs the true score; the other three differ from it by a constant that does
not depend on the model, so they have the same minimizer:

    explicit   J_ESM(s) = 1/2 E_p |s(x) - grad log p(x)|^2
    implicit   J_ISM(s) = E_p [tr(ds/dx) + 1/2 |s(x)|^2]        = J_ESM - 1/2 E_p |grad log p|^2
    sliced     J_SSM(s) = E_v E_p [v^T (ds/dx) v + 1/2 (v^T s)^2]  = J_ISM  (E[v v^T] = I)
    denoising  J_DSM(s) = 1/2 E |s(a x + sigma e) + e / sigma|^2
                        = J_ESM on q(x~) = E_p N(x~; a x, sigma^2 I)  + D / (2 sigma^2)
                          - 1/2 E_q |grad log q|^2

(Hyvarinen 2005; Song, Garg, Shi and Ermon 2019; Vincent 2011). The implicit loss's trace
costs D backward passes, the sliced one one per projection, the denoising one none. With
a = sqrt(alpha_bar) and sigma = sqrt(1 - alpha_bar), the denoising loss is chapter 8's
epsilon loss divided by 2 (1 - alpha_bar): eps_hat = -sigma s.

Guidance (Dhariwal and Nichol 2021; Ho and Salimans 2022): Bayes' rule on scores,
    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),
weighted: s(x) + w grad log p_t(y | x) with a classifier, (1 + w) s(x | y) - w s(x) without
one. Guidance fields take (x, *args) (a time, a step) and pass the rest on unchanged.
The toy mixture's exact noisy classifier is `companion.toy.diffused_log_posterior_grad`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch

from .diffusion import predict_x0
from .run import checks
from .sde import _jacobian_trace

Score = Callable[..., torch.Tensor]


# --- the four losses -------------------------------------------------------------------------
def _score(score: Score, x: torch.Tensor, *args, who: str = "score(x)") -> torch.Tensor:
    """score(x, *args), refused unless shaped like x (a (B, 1) would broadcast)."""
    return checks.output(score(x, *args), x, who=who, what="the score of every point")


def _per_point(v: torch.Tensor) -> torch.Tensor:
    """The sum over every dimension but the first: (B, ...) -> (B,)."""
    return v.reshape(len(v), -1).sum(1)


def explicit_score_matching(score: Score, x: torch.Tensor, target: torch.Tensor
                            ) -> torch.Tensor:
    """J_ESM = 1/2 E_p |s(x) - grad log p(x)|^2, the loss that needs the true score.

    Args:
        score: the model s, (B, ...) -> (B, ...).
        x: (B, ...) draws of p.
        target: (B, ...) the true score grad log p at x.

    Returns:
        A scalar: the per-point squared error summed over dimensions, averaged over B.

    Book: :eq:`ch16-esm`.
    """
    checks.same_shape("x and target", checks.batch("x", x), target)
    return 0.5 * _per_point((_score(score, x) - target).pow(2)).mean()


def _with_input_grad(x: torch.Tensor) -> torch.Tensor:
    """x as a leaf that records gradients (the losses differentiate s with respect to it)."""
    return x.detach().requires_grad_(True)


def implicit_score_matching(score: Score, x: torch.Tensor) -> torch.Tensor:
    """J_ISM = E_p [tr(grad_x s(x)) + 1/2 |s(x)|^2] (Hyvarinen 2005), the trace exact.

    Integration by parts (p s -> 0 at infinity) turns J_ESM's cross term -E_p[s^T grad log p]
    into E_p[tr(grad_x s)], so J_ISM = J_ESM - 1/2 E_p |grad log p|^2: the constant depends
    on p only. The trace takes D backward passes (one per column of the Jacobian), each
    kept in the graph so that the loss can be differentiated in the model's parameters.
    The model must treat the points of a batch independently (no batch norm).

    Args:
        score: the model s, (B, D) -> (B, D).
        x: (B, D) draws of p (points: for images the trace would cost 784 passes; use
            `sliced_score_matching` or `denoising_score_matching`).

    Returns:
        A scalar, the average over the batch.

    Book: :eq:`ch16-ism`.
    """
    checks.points("x", x, "the exact trace is for points; for images use "
                  "sliced_score_matching or denoising_score_matching")
    with torch.enable_grad():
        x = _with_input_grad(x)
        s = _score(score, x)
        trace = _jacobian_trace(s, x, who="score(x)", what="the implicit loss's trace",
                                create_graph=True)
        return (trace + 0.5 * s.pow(2).sum(1)).mean()


def sliced_score_matching(score: Score, x: torch.Tensor, n_projections: int = 1, *,
                          variance_reduced: bool = False,
                          projections: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """J_SSM = E_v E_p [v^T (grad_x s) v + 1/2 (v^T s)^2] (Song, Garg, Shi and Ermon 2019).

    For random projections v with E[v v^T] = I, E_v[v^T J v] = tr J and
    E_v[(v^T s)^2] = |s|^2, so J_SSM = J_ISM = J_ESM - 1/2 E_p |grad log p|^2 in
    expectation. `variance_reduced` uses 1/2 |s|^2 in place of 1/2 (v^T s)^2 (their SSM-VR).
    Each projection costs one vector-Jacobian product (v^T J), whatever the dimension.

    Args:
        score: the model s, (B, ...) -> (B, ...).
        x: (B, ...) draws of p.
        n_projections: P, the projections per point when they are drawn here (default 1).
        variance_reduced: the SSM-VR form (default False).
        projections: (P, B, ...) the projections v; default None: standard normal draws.
        generator: for the draws (default None: torch's global generator).

    Returns:
        A scalar, the average over the P projections and the B points.

    Book: :eq:`ch16-ssm`.
    """
    checks.batch("x", x, min_dims=2)
    if projections is None:
        P = checks.count("n_projections", n_projections)
        projections = torch.randn((P, *x.shape), dtype=x.dtype, device=x.device,
                                  generator=generator)
    checks.stacked("projections", projections, x)
    with torch.enable_grad():
        x = _with_input_grad(x)
        s = _score(score, x)
        half_sq = 0.5 * _per_point(s.pow(2)) if variance_reduced else None
        terms = []
        for v in projections.to(s.dtype):
            vJ = checks.gradient("score(x)", (s * v).sum(), x, create_graph=True,
                                 what="the sliced loss's v^T J v")  # v^T J per point
            vs = _per_point(s * v)
            terms.append(_per_point(vJ * v) + (half_sq if variance_reduced else 0.5 * vs**2))
        return torch.stack(terms).mean()


def denoising_score_matching(score: Score, x: torch.Tensor, sigma: float, *,
                             alpha: float = 1.0, noise: torch.Tensor | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """J_DSM = 1/2 E |s(x~) - grad log q(x~ | x)|^2, x~ = alpha x + sigma e (Vincent 2011).

    The noise kernel's score is known: grad log q(x~ | x) = -(x~ - alpha x) / sigma^2
    = -e / sigma. Since E[-e / sigma | x~] = grad log q(x~) for the noised density
    q(x~) = E_p N(x~; alpha x, sigma^2 I), J_DSM = J_ESM(s; q) + C with
    C = D / (2 sigma^2) - 1/2 E_q |grad log q|^2 (the conditional variance of the target),
    which does not depend on s. alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar) is
    the diffusion's x_t; alpha = 1 the noise-conditional score networks' x + sigma e.

    Args:
        score: the model s at this noise level, (B, ...) -> (B, ...).
        x: (B, ...) clean draws of p.
        sigma: the noise's standard deviation, > 0.
        alpha: the scale of the clean point, > 0 (default 1.0).
        noise: (B, ...) the standard normal e; default None: drawn here.
        generator: for e (default None: torch's global generator).

    Returns:
        A scalar, the average over the batch.

    Book: :eq:`ch16-dsm`, :eq:`ch16-eps-dsm`.
    """
    checks.batch("x", x)
    sigma = checks.positive("sigma (the noise's standard deviation)", sigma)
    alpha = checks.positive("alpha (the clean point's scale)", alpha)
    if noise is None:
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    checks.same_shape("x and noise", x, noise)
    s = _score(score, alpha * x + sigma * noise, who="score(x~)")
    return 0.5 * _per_point((s + noise / sigma).pow(2)).mean()


# --- Tweedie ---------------------------------------------------------------------------------
def tweedie(x_t: torch.Tensor, score: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + (1 - alpha_bar) grad log p_t(x_t)) / sqrt(alpha_bar).

    Tweedie's formula for x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) e: chapter 8's
    x_0-prediction (`companion.diffusion.predict_x0`) from the noise eps_hat = -sqrt(1 -
    alpha_bar) s that the score implies.

    Args:
        x_t: (B, ...) noisy points.
        score: (B, ...) grad log p_t at x_t (exact, or a model's).
        alpha_bar: the noise level, in (0, 1].

    Returns:
        (B, ...) the posterior mean of x_0.

    Book: :eq:`ch16-tweedie`.
    """
    checks.same_shape("x_t and score", checks.batch("x_t", x_t), score)
    checks.finite("x_t", x_t)
    checks.finite("score", score)
    alpha_bar = checks.real("alpha_bar", alpha_bar, low=0.0, high=1.0, open_low=True)
    sigma = math.sqrt(1 - alpha_bar)
    return predict_x0(x_t, -sigma * score, alpha_bar, sigma)


# --- guidance --------------------------------------------------------------------------------
def _weight(w) -> float:
    return checks.real("w (the guidance weight, >= 0)", w, low=0.0)


def _field(name: str, f):
    if not callable(f):
        raise checks.ArgumentError(f"{name} must be a function of (x, ...) returning a score, "
                                   f"got {type(f).__name__}")
    return f


def classifier_guided_score(score: Score, classifier_grad: Score, w: float) -> Score:
    """The guided score s(x) + w grad_x log p_t(y | x) (Dhariwal and Nichol 2021), a field.

    Bayes' rule on scores, grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x):
    w = 1 gives the conditional score, w = 0 the unconditional one, w > 1 follows the score
    of p_t(x) p_t(y | x)^w at every noise level (which is not, in general, the noised
    version of p(x) p(y | x)^w). Dhariwal and Nichol call w the classifier scale s.

    Args:
        score: the unconditional score s(x, *args) -> like x.
        classifier_grad: grad_x log p_t(y | x) for the wanted y, (x, *args) -> like x.
        w: the guidance weight, >= 0.

    Returns:
        The field (x, *args) -> like x; both inputs are called with the same arguments.

    Book: :eq:`ch16-bayes-scores`, :eq:`ch16-guided`.
    """
    w = _weight(w)
    score, classifier_grad = _field("score", score), _field("classifier_grad", classifier_grad)

    def guided(x, *args):
        return _score(score, x, *args) + w * _score(
            classifier_grad, x, *args, who="classifier_grad(x)")
    return guided


def classifier_free_score(cond_score: Score, uncond_score: Score, w: float) -> Score:
    """(1 + w) s(x | y) - w s(x) = s(x | y) + w (s(x | y) - s(x)) (Ho and Salimans 2022).

    The difference s(x | y) - s(x) is the implicit classifier's grad log p_t(y | x), so
    this is `classifier_guided_score` with scale 1 + w: w = 0 is the conditional score.
    This is Ho and Salimans' convention, the book's (chapter 11's `guided_eps`); others
    (Imagen, diffusers' guidance_scale) write s(x) + gamma (s(x | y) - s(x)) with
    gamma = 1 + w, so that their gamma = 1 is the conditional score. The combination is
    linear, so noise predictions (eps_hat = -sigma s) combine the same way.

    Args:
        cond_score: s(x | y) for the wanted y, (x, *args) -> like x.
        uncond_score: s(x), (x, *args) -> like x.
        w: the guidance weight, >= 0.

    Returns:
        The field (x, *args) -> like x.

    Book: :eq:`ch16-cfg`.
    """
    w = _weight(w)
    cond_score = _field("cond_score", cond_score)
    uncond_score = _field("uncond_score", uncond_score)

    def guided(x, *args):
        cond = _score(cond_score, x, *args, who="cond_score(x)")
        return (1 + w) * cond - w * _score(uncond_score, x, *args, who="uncond_score(x)")
    return guided


# --- guidance on the digits ------------------------------------------------------------------
def _labels(labels, num_classes: int) -> torch.Tensor:
    """labels as int64 (B,) of classes 0..num_classes - 1, or a clear error."""
    from .latent_diffusion import check_labels

    return check_labels(labels, num_classes)


def classifier_log_prob_grad(classifier, labels, *, num_classes: int = 10) -> Score:
    """The field (x, t) -> grad_x log p_t(y | x) of a classifier's softmax, y = labels.

    classifier(x, t) -> logits (B, num_classes), e.g. `models.classifier.NoisyClassifier`
    (a clean classifier wrapped as lambda x, t: judge((x + 1) / 2) ignores t). The gradient
    is taken under torch.enable_grad() (samplers run without gradients), at most
    companion.run.memory.MAX_IMAGES_WITH_GRAD images a backward pass. A classifier module in
    training mode is refused (its dropout and batch norm would give another gradient at
    every call: call classifier.eval()), and so is one whose logits cannot be differentiated
    in x (torch.no_grad or .detach inside it). The field keeps the classifier's number of
    steps (config.T, or NoisyClassifier's T), for `classifier_guided_eps` to check against
    the chain.

    Args:
        classifier: (x (B, ...), t (B,)) -> logits (B, num_classes).
        labels: (B,) the wanted classes, in 0..num_classes - 1.
        num_classes: the classes the labels come from (default 10, the digits): a
            classifier with another number of logits is refused.

    Returns:
        The field (x (B, ...), t (B,)) -> (B, ...), in x's dtype.

    Book: :eq:`ch16-guided`.
    """
    from .run.memory import map_chunks

    n_cls = checks.count("num_classes", num_classes, minimum=2)
    y = _labels(labels, n_cls)
    out = getattr(getattr(classifier, "out", None), "out_features", None)
    if isinstance(out, int) and out != n_cls:
        raise checks.ArgumentError(f"the classifier has {out} classes but the labels are "
                                   f"{n_cls} classes (0..{n_cls - 1}): guide with a "
                                   f"classifier of the same {n_cls} classes")
    classifier = _field("classifier", classifier)
    if isinstance(classifier, torch.nn.Module) and classifier.training:
        raise checks.ArgumentError(
            "the classifier is in training mode (classifier.training is True): its dropout "
            "(and batch norm) would give another gradient at every call; call "
            "classifier.eval() before guiding with it")

    def grad_chunk(xb, tb, yb):
        with torch.enable_grad():
            xb = xb.detach().requires_grad_(True)
            logits = classifier(xb, tb)
            if logits.dim() != 2 or logits.shape != (len(xb), n_cls):
                raise checks.ArgumentError(
                    f"the classifier returned logits of shape {tuple(logits.shape)}; "
                    f"guidance needs ({len(xb)}, {n_cls}): one logit per class of the labels")
            log_p = logits.float().log_softmax(1).gather(1, yb[:, None]).sum()
            g = checks.gradient("the classifier", log_p, xb, what="classifier guidance")
        return g

    def grad(x, t):
        if len(x) != len(y):
            raise checks.ArgumentError(f"the field was built for {len(y)} labels but got "
                                       f"{len(x)} images: one label per image")
        return map_chunks(grad_chunk, x, t, y.to(x.device), grad=True)

    T = _steps_of(classifier)
    if T is not None:
        grad.config = SimpleNamespace(T=T)  # for classifier_guided_eps to check the chain
    return grad


def _steps_of(model) -> int | None:
    """The number of chain steps a model was built for: its config.T (the U-Net) or its T
    (NoisyClassifier), None when it says none (a lambda, a clean classifier)."""
    T = getattr(getattr(model, "config", None), "T", getattr(model, "T", None))
    return T if isinstance(T, int) and not isinstance(T, bool) else None


def classifier_guided_eps(diffusion, eps_model, classifier_grad: Score, w: float):
    """The noise prediction of the guided score, for Diffusion.sample and sample_ddim:

        eps_w(x_t, t) = eps(x_t, t) - w sqrt(1 - alpha_bar_t) grad_x log p_t(y | x_t),

    which is -sqrt(1 - alpha_bar_t) times `classifier_guided_score` of the score
    -eps / sqrt(1 - alpha_bar_t) (Dhariwal and Nichol's DDIM form; in the ancestral sampler
    it shifts the mean by w beta_t / sqrt(alpha_t) times the gradient, their s Sigma g).

    An eps_model or a classifier built for another number of steps than the diffusion's T
    (their config.T, or NoisyClassifier's T) is refused: it would read every t as another
    noise level. The returned function refuses steps t outside 1..T (one device sync a
    call on a GPU, small beside the classifier's backward pass).

    Args:
        diffusion: the `companion.diffusion.Diffusion` eps_model was trained with.
        eps_model: (x_t (B, ...), t (B,)) -> eps (B, ...).
        classifier_grad: (x_t, t) -> grad_x log p_t(y | x_t), like x_t
            (`classifier_log_prob_grad`).
        w: the guidance weight, >= 0 (0: the unguided model).

    Returns:
        The noise predictor (x_t, t) -> (B, ...), t an int or an integer tensor (B,) of
        steps in 1..T; it keeps eps_model's config (its T).

    Book: :eq:`ch16-guided`, :eq:`ch16-guided-eps`.
    """
    w = _weight(w)
    eps_model = _field("eps_model", eps_model)
    classifier_grad = _field("classifier_grad", classifier_grad)
    T = diffusion.T
    checks.model_steps(eps_model, T, what="the diffusion", who="eps_model",
                       fix="pass the Diffusion it was trained with")
    checks.model_steps(classifier_grad, T, what="the diffusion", who="the classifier",
                       fix=f"guide with a classifier trained on this chain, "
                       f"NoisyClassifier(T={T})")
    sigmas = (1 - diffusion.alphas_bar_).sqrt()

    def eps(x, t):
        t = checks.steps(t, len(checks.batch("x_t", x)), T, x.device)
        out = _score(eps_model, x, t, who="eps_model(x, t)")
        if w == 0:
            return out
        g = _score(classifier_grad, x, t, who="classifier_grad(x, t)")
        sigma = sigmas.to(x.device)[t].to(out.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return out - w * sigma * g.to(out.dtype)

    if hasattr(eps_model, "config"):
        eps.config = eps_model.config  # so Diffusion checks the chain length
    return eps
