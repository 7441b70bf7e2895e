"""Masked and code priors: chapter 14's masked diffusion on binarized digits, and
chapter 19's discrete latents (the VQ-VAEs and the priors over their codes)."""

from __future__ import annotations

import math

import torch

from ..run import checks
from ..train import checkpoint_path, fit
from .common import (
    DDPM_CLIP,
    _at_steps,
    _check_unit_images,
    _continue,
    _prefix,
    _profile,
    _unet_recipe,
)
from .latents import latent_settings
from .pixel import snapshots

# --- chapter 14: masked diffusion on binarized digits ----------------------------------------
MASKED_SCHEDULE = "linear"


def masked_settings(profile) -> dict:
    """Chapter 14's recipe per profile: chapter 9's U-Net presets with a mask state
    (companion.models.unet.MaskedUNet), trained with the continuous-time loss
    (companion.masked.loss, linear schedule) on digits binarized afresh every step.

    ci: the tiny U-Net, 150 steps of 32 (a pipeline check). cpu: the tiny U-Net, 1,000
    steps of 64 at lr 2e-3: its samples are drawn with up to 784 network calls, and on a
    2-core machine the cpu preset's calls cost several times as much. gpu: chapter 9's 15M
    U-Net, 6,000 steps of 128 at lr 5e-4, as chapter 9 (fits a T4: the network and batch
    of chapter 9). Adam with chapter 9's warm-up, clipping and EMA in all three.
    """
    return dict(
        preset=_profile(profile).pick(ci="tiny", cpu="tiny", gpu="gpu"),
        steps=_profile(profile).pick(ci=150, cpu=1000, gpu=6000),
        batch_size=_profile(profile).pick(ci=32, cpu=64, gpu=128),
        lr=_profile(profile).pick(ci=2e-3, cpu=2e-3, gpu=5e-4),
        ema=_profile(profile).pick(ci=0.99, cpu=0.995, gpu=0.999),
        schedule=MASKED_SCHEDULE,
    )


def masked_diffusion(x, profile, device, *, prefix: str = "ch14"):
    """Chapter 14's masked diffusion model (see `masked_settings`), load-or-train.

    x: (N, 1, 28, 28) grey training images in [0, 1] on `device`; every step binarizes its
    batch afresh (companion.data.binarize, chapter 6's dynamic binarization).
    Returns (EMA model in eval mode, FitResult).
    """
    from .. import masked
    from ..data import binarize
    from ..models.unet import MaskedUNet

    s = masked_settings(profile)
    _check_unit_images(x, "recipes.masked_diffusion")
    # the network's "time" is the number of masked pixels, 1..784
    model, optimizer, config, warm_up = _unet_recipe(
        s, profile, device, x, steps_of_net=28 * 28, network=MaskedUNet,
        schedule=s["schedule"], loss="masked diffusion, continuous time, dynamic binarization")

    def loss_fn(model, x0, step):
        warm_up(step)
        return masked.loss(model, binarize(x0), s["schedule"])

    result = fit(model, loss_fn, x, steps=s["steps"], batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"],
                 checkpoint=checkpoint_path(f"{prefix}-masked", profile), config=config,
                 compile="cuda", desc="masked diffusion")
    return result.ema.model, result


# --- chapter 19: discrete latents ---------------------------------------------------------------
VQ_K, VQ_D, VQ_LEVELS, VQ_RESTART_AFTER = 64, 16, (4, 4, 4), 20
# floating-point operations of a training step, per image, chapter 11's autoencoder over the
# VQ-VAE's (torch.utils.flop_counter, forward and backward: 30.65 and 23.38 MFLOP)
VQ_COST_RATIO = 1.31
VQ_VARIANTS = ("plain", "ema", "restart", "fsq")
PRIOR_KINDS = ("masked", "autoregressive")
# the priors' longer run on the cpu, in multiples of the budget matched to chapter 11's
PRIOR_LONGER = 32


def vq_settings(profile) -> dict:
    """Chapter 19's recipe per profile, sized against chapter 11's (`latent_settings`) so
    that the two pipelines train with the same floating-point operations, stage by stage.

    The autoencoders (`vqvae`): K = VQ_K codes of VQ_D numbers on the 7 x 7 grid (FSQ:
    levels VQ_LEVELS, prod = VQ_K), Bernoulli decoder on digits binarized afresh every
    step, chapter 11's batch (64) and Adam learning rate (2e-3). A step of the VQ-VAE costs
    23.4 MFLOP an image (forward and backward, torch.utils.flop_counter; FSQ 20.8), one of
    chapter 11's autoencoder 30.7 (its linear head), so the VQ-VAEs take VQ_COST_RATIO times
    chapter 11's updates (`vq_steps`: 4 / 20 / 30 of its epochs, ci / cpu / gpu), all four
    the same number. The restarts move a code unused for VQ_RESTART_AFTER steps.
    The priors (`code_prior`): a transformer of width 64, depth 2 and 4 heads over the 49
    positions, masked diffusion (`CodeDenoiser`, chapter 14's loss with categories=K,
    linear schedule) or autoregressive (`ARPrior`), each trained on the codes of the
    training digits with chapter 11's denoiser's optimizer (Adam 1e-3, gradients clipped
    at 1, the same EMA) for its number of updates (300 / 3,000 /
    20,000), each step encoding a fresh binarization of its batch. A step on 32 digits
    (encoding and training) costs about the 1.095 GFLOP of one of chapter 11's denoiser on
    256 codes: the batch of 32 matches the two (the chapter measures the ratio).
    At that budget chapter 11's denoiser is near the floor of real digits and the priors are
    not, so each prior also has a longer run (`code_prior(..., long=True)`, in files of its
    own, the same seed) of `long_steps` updates: ci / cpu / gpu 2 / PRIOR_LONGER / 8 times
    the matched budget (600 / 96,000 / 160,000), kept where the budget doubles
    (`long_stages`). A pilot on 2 cores: the autoregressive prior's decoded samples at
    3,000 / 6,000 / 12,000 / 24,000 updates were 5.50 / 4.62 / 3.56 / 2.81 times the floor of
    real digits (Frechet distance, 256 samples), still falling by about 0.9 a doubling.
    Carried on (tools/pilot.py prior-ar, another run of the same recipe): 3.56 / 2.69 /
    2.00 at 24,000 / 48,000 / 96,000 updates, the bar at 96,000 (43 minutes on 2 cores;
    benchmarks/README.md): so the cpu's longer run is 96,000 updates, trained once and
    shipped; the masked prior's too, though its trend on the page (the distance about 1.3
    times smaller a doubling) puts it short of the bar there.
    """
    s = latent_settings(profile)
    return dict(
        K=VQ_K, D=VQ_D, levels=VQ_LEVELS, beta=0.25, decay=0.99,
        restart_after=VQ_RESTART_AFTER, epochs_11=s["vae_epochs"],
        batch_size=s["vae_batch"], lr=s["vae_lr"],
        width=64, depth=2, heads=4, schedule=MASKED_SCHEDULE,
        steps=s["steps"], prior_batch=32, prior_lr=s["lr"], clip=s["clip"], ema=s["ema"],
        long_steps=_profile(profile).pick(ci=2, cpu=PRIOR_LONGER, gpu=8) * s["steps"],
    )


def long_stages(profile) -> list[float]:
    """The stages the priors' longer run is kept at, as fractions of its `long_steps`: the
    matched budget (`steps`), then each doubling of it short of the end (the cpu's: 1/32,
    1/16, 1/8, 1/4, 1/2)."""
    s = vq_settings(profile)
    stages, at = [], s["steps"]
    while at < s["long_steps"]:
        stages.append(at / s["long_steps"])
        at *= 2
    return stages


def vq_steps(profile, n_train: int) -> int:
    """The VQ-VAEs' updates on n_train digits: VQ_COST_RATIO times those of chapter 11's
    autoencoder (its epochs of batches of 64), so that the two train with the same
    floating-point operations."""
    s = vq_settings(profile)
    n_train = checks.count("n_train (the training digits)", n_train)
    return round(VQ_COST_RATIO * s["epochs_11"] * math.ceil(n_train / s["batch_size"]))


def _vq_model(s: dict, variant: str):
    """The untrained autoencoder of `variant` under the settings `s` (`vq_settings`)."""
    from ..models.vqvae import VQVAE

    if variant == "fsq":
        return VQVAE(quantizer="fsq", levels=s["levels"])
    return VQVAE(s["K"], s["D"], beta=s["beta"], ema=variant == "ema", decay=s["decay"])


def vqvae_start(profile, variant: str = "plain", seed: int = 0):
    """The untrained model `vqvae(x, profile, ..., variant=variant, seed=seed)` starts from:
    the same seed, then the same constructor, so its codebook is that run's first one. A
    code that never wins an assignment gets no gradient and stays where it began: comparing
    a trained codebook with this one measures which codes moved. The caller's random state
    is left as it was.

    Returns:
        VQVAE on the CPU, in training mode, as `vqvae` builds it before its first update.
    """
    if variant not in VQ_VARIANTS:
        raise ValueError(f"variant must be one of {VQ_VARIANTS}, got {variant!r}")
    seed = checks.count("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _vq_model(vq_settings(profile), variant)


def vqvae(x, profile, device, *, variant: str = "plain", prefix: str = "ch19",
          seed: int = 0):
    """Chapter 19's vector-quantized autoencoder (see `vq_settings`), load-or-train.

    variant: "plain" (codebook learned by its loss), "ema" (codebook by exponential moving
    averages), "restart" (plain, with dead codes restarted from the batch's encoder
    outputs) or "fsq" (finite scalar quantization): the remedies for codebook collapse, one
    at a time, on the same data, seed and budget. The history logs the batch's code usage
    and perplexity every step.

    Args:
        x: (N, 1, 28, 28) grey training images in [0, 1] on `device`; every step binarizes
            its batch afresh (`companion.models.vqvae.VQLoss`).
        profile: the Profile whose settings it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        variant: one of VQ_VARIANTS (default "plain").
        prefix: the checkpoint file's prefix (default "ch19").
        seed: the torch seed of the initialization and the batches (default 0, the run
            the priors model); another seed repeats the recipe in a file of its own
            (`<prefix>-vqvae-<variant>-seed<seed>`), so that a ranking of the variants can
            be checked across training runs.

    Returns:
        (model in eval mode, FitResult).
    """
    from ..models.vqvae import VQLoss

    if variant not in VQ_VARIANTS:
        raise ValueError(f"variant must be one of {VQ_VARIANTS}, got {variant!r}")
    seed = checks.count("seed", seed, minimum=0)
    s = vq_settings(profile)
    _check_unit_images(x, "recipes.vqvae")
    torch.manual_seed(seed)  # the initialization, then the batches
    model = _vq_model(s, variant)
    restart = s["restart_after"] if variant == "restart" else None
    config = dict(profile=profile.name, variant=variant, K=model.K, D=model.D,
                  levels=list(s["levels"]) if variant == "fsq" else None, beta=s["beta"],
                  decay=s["decay"] if variant == "ema" else None, restart_after=restart,
                  batch_size=s["batch_size"], lr=s["lr"], n_train=len(x),
                  binarize="dynamic")
    name = f"{_prefix(prefix)}-vqvae-{variant}"
    if seed:  # seed 0 keeps the chapter's run's file and config
        config["seed"], name = seed, f"{name}-seed{seed}"
    steps = vq_steps(profile, len(x))
    result = fit(model.to(device), VQLoss(restart_after=restart), x, steps=steps,
                 batch_size=s["batch_size"], lr=s["lr"], config=config,
                 checkpoint=checkpoint_path(name, profile),
                 desc=f"VQ-VAE ({variant})")
    return model.eval(), result


def chosen_variant(runs: dict) -> str:
    """The autoencoder the priors model: of {variant: FitResult} (`vqvae`'s runs), the one
    whose logged reconstruction term, log p(x | z_q) on the training batches, is highest on
    average over the last tenth of its updates. Nothing held out is looked at: the rule
    reads the loss each run minimized, before any test digit is scored."""
    def last_tenth(variant, result):
        history = getattr(result, "history", None)
        if not isinstance(history, dict):
            raise checks.ArgumentError(
                f"runs[{variant!r}] must be a FitResult (vqvae's second value), with its "
                f"history, got {checks._got(result)}")
        rec = list(history.get("reconstruction", []))
        tail = [checks.as_float(v) for v in rec[-max(len(rec) // 10, 1):]]
        if any(not isinstance(v, float) for v in tail):
            raise checks.ArgumentError(f"runs[{variant!r}]'s logged reconstruction terms must "
                                       f"be numbers, got {tail[:3]!r:.60}")
        if not rec or not all(math.isfinite(v) for v in tail):
            raise checks.ArgumentError(
                f"runs[{variant!r}] has {'no' if not rec else 'a NaN or infinite'} logged "
                "reconstruction term in the last tenth of its updates: the rule cannot rank "
                "it (a NaN is never the largest, nor the smallest); retrain that variant, or "
                "leave it out of runs")
        return sum(tail) / len(tail)

    if not isinstance(runs, dict) or not runs:
        raise checks.ArgumentError(f"runs must be a dict {{variant: FitResult}} of at least "
                                   f"one run (vqvae's), got {checks._got(runs)}")
    scores = {v: last_tenth(v, runs[v]) for v in runs}
    return max(runs, key=scores.__getitem__)


def vq_priors(x, profile, device, *, prefix: str = "ch19") -> tuple[str, dict]:
    """The calls of chapter 19's second stage: the four autoencoders (`vqvae`), the chosen
    one (`chosen_variant`), and both priors over its codes kept at a quarter, half and all
    of their updates (`snapshots` of `code_prior`), at the matched budget and in the longer
    run. Returns (the chosen variant, {kind or kind + "-long": {updates: (model,
    FitResult)}})."""
    trained = {v: vqvae(x, profile, device, variant=v, prefix=prefix) for v in VQ_VARIANTS}
    chosen = chosen_variant({v: run for v, (_, run) in trained.items()})
    s, vq, staged = vq_settings(profile), trained[chosen][0], {}
    for kind in PRIOR_KINDS:
        staged[kind] = snapshots(code_prior, code_prior_checkpoint, x, profile, device,
                                 total=s["steps"], vq=vq, variant=chosen, kind=kind,
                                 prefix=prefix)
        staged[kind + "-long"] = snapshots(
            code_prior, code_prior_checkpoint, x, profile, device, total=s["long_steps"],
            fractions=long_stages(profile), vq=vq, variant=chosen, kind=kind, prefix=prefix,
            long=True)
    return chosen, staged


def code_prior_checkpoint(profile, steps: int | None = None, prefix: str = "ch19", *,
                          variant: str = "fsq", kind: str = "masked", long: bool = False,
                          **_):
    """The checkpoint file of a prior over `variant`'s codes trained for `steps` (None: the
    full run), of the longer run if `long`; other keywords (those `snapshots` passes to
    `code_prior`) are ignored."""
    checks.one_of("variant", variant, VQ_VARIANTS, " (the autoencoder the prior models)")
    checks.one_of("kind", kind, PRIOR_KINDS)
    name = f"{_prefix(prefix)}-{kind}-prior-{variant}" + ("-long" if long else "")
    return checkpoint_path(_at_steps(name, steps), profile)


def code_prior(x, profile, device, *, vq, variant: str, kind: str = "masked",
               steps: int | None = None, resume_from=None, prefix: str = "ch19",
               long: bool = False):
    """A prior over the code grids of the autoencoder `vq`, `vqvae(x, ..., variant=variant)`
    (see `vq_settings`), load-or-train; the autoencoder stays frozen.

    Every step binarizes its batch of digits afresh and encodes it (float32, autocast off:
    the nearest codes of chapter 19's test grids are float32 too), as chapter 11's
    denoiser draws fresh codes every step. kind="masked": masked diffusion over K
    categories (`companion.models.code_prior.CodeDenoiser` on `companion.masked.loss` with
    categories=K, whose expectation is its negative ELBO in nats per grid);
    kind="autoregressive": `ARPrior` on its exact negative log-likelihood. The same network
    size, data, optimizer and budget for both. The autoencoder's weights are part of the
    run's identity (`latent_diffusion.codec_fingerprint`): a prior of another autoencoder's
    codes is refused.

    Args:
        x: (N, 1, 28, 28) grey training images in [0, 1] on `device`.
        profile: the Profile whose settings it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        vq: the trained autoencoder whose codes it models (`vqvae`'s model).
        variant: its variant, one of VQ_VARIANTS: it names the checkpoint file.
        kind: one of PRIOR_KINDS (default "masked").
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, as in `ddpm`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet; default None.
        prefix: the checkpoint file's prefix (default "ch19").
        long: False (default) for the budget matched to chapter 11's denoiser, True for
            the longer run of `vq_settings`' long_steps updates, in files of its own.

    Returns:
        (EMA model in eval mode, FitResult).
    """
    from .. import masked
    from ..data import binarize
    from ..latent_diffusion import codec_fingerprint
    from ..models.code_prior import ARPrior, CodeDenoiser
    from ..models.vqvae import VQVAE
    from ..run.precision import default_optimizer

    if kind not in PRIOR_KINDS:
        raise ValueError(f"kind must be one of {PRIOR_KINDS}, got {kind!r}")
    if variant not in VQ_VARIANTS:
        raise ValueError(f"variant must be one of {VQ_VARIANTS}, got {variant!r}")
    s = vq_settings(profile)
    if not isinstance(long, bool):
        raise checks.ArgumentError(f"long must be True (the longer run) or False (the budget "
                                   f"matched to chapter 11's), got {long!r}")
    total = checks.early_steps(steps, s["long_steps" if long else "steps"])
    _check_unit_images(x, "recipes.code_prior")
    if not isinstance(vq, VQVAE):
        raise checks.ArgumentError(f"vq must be the trained autoencoder whose codes the prior "
                                   f"models (a VQVAE, vqvae's first value), got "
                                   f"{checks._got(vq)}")
    torch.manual_seed(0)
    network = CodeDenoiser if kind == "masked" else ARPrior
    model = network(vq.K, width=s["width"], depth=s["depth"], heads=s["heads"]).to(device)
    optimizer = default_optimizer(model.parameters(), s["prior_lr"], device)
    config = dict(profile=profile.name, kind=kind, variant=variant, K=vq.K, width=s["width"],
                  depth=s["depth"], heads=s["heads"], codec=codec_fingerprint(vq),
                  n_train=len(x), lr=s["prior_lr"], batch_size=s["prior_batch"],
                  ema=s["ema"], clip=s["clip"],
                  schedule=s["schedule"] if kind == "masked" else None)
    device_type = torch.device(device).type

    def loss_fn(model, xb):
        with torch.autocast(device_type, enabled=False):
            k = vq.codes(binarize(xb.float()))
        if kind == "masked":
            return masked.loss(model, k, s["schedule"], categories=vq.K)
        return -model.log_prob(k).mean()

    path = code_prior_checkpoint(profile, steps, prefix, variant=variant, kind=kind,
                                 long=long)
    _continue(path, resume_from, model, config, x, optimizer,
              {"ema": s["ema"], "batch_size": s["prior_batch"]}, total)
    result = fit(model, loss_fn, x, steps=total, batch_size=s["prior_batch"],
                 optimizer=optimizer, clip=s["clip"], ema=s["ema"], checkpoint=path,
                 config=config, desc=f"{kind} prior"
                 + ("" if steps is None else f" ({steps} steps)"))
    return result.ema.model.eval(), result
