"""DDPM and its classifier: chapter 8's noise predictor for the toy mixture, chapter
9's DDPM (settings, diffusion, early checkpoints and snapshots of a run, the network as
the samplers call it) and the classifier that scores its samples, and chapter 16's
class-conditional DDPM, its guidance and the noise-aware classifier."""

from __future__ import annotations

import torch

from ..run import checks
from ..run.memory import map_chunks
from ..train import checkpoint_path, fit
from .common import (
    DDPM_CLIP,
    _at_steps,
    _check_unit_images,
    _continue,
    _labelled_images,
    _profile,
    _unet_recipe,
)


# --- chapter 9: the DDPM and the classifier that scores its samples --------------------------
def toy_eps_settings(profile) -> dict:
    """Chapter 8's noise predictor for the 2-D mixture, per profile: training points, steps,
    batch (lr 2e-3, EMA 0.999, seeds 8 for the data and 9 for the batches)."""
    return dict(n=profile.count(ci=20_000, cpu=100_000, gpu=100_000),
                steps=profile.count(ci=2_000, cpu=6_000, gpu=20_000),
                batch=_profile(profile).pick(ci=512, cpu=2_048, gpu=4_096))


def toy_eps(mix, profile, device, *, T: int = 1000, prefix: str = "ch8"):
    """Chapter 8's epsilon network for the mixture `mix` (companion.toy.GaussianMixture):
    toy.NoisePredictorMLP trained on L_simple (Algorithm 1, t uniform on 1..T of the linear
    schedule), loaded from its checkpoint where it exists (chapter 16 reuses chapter 8's).
    Returns fit's result: `.ema.model` is the network, `.history` and `.seconds` its run.
    """
    from ..diffusion import Diffusion, linear_betas
    from ..toy import NoisePredictorMLP

    s = toy_eps_settings(profile)
    _, x = mix.sample(s["n"], generator=torch.Generator().manual_seed(8))
    diffusion = Diffusion(linear_betas(T), device=device)
    torch.manual_seed(0)
    net = NoisePredictorMLP(dim=2, T=T).to(device)
    return fit(net, lambda model, batch: diffusion.simple_loss(model, batch),
               x.float().to(device), steps=s["steps"], batch_size=s["batch"], lr=2e-3,
               ema=0.999, checkpoint=checkpoint_path(f"{prefix}-toy-eps", profile),
               config={"steps": s["steps"], "batch": s["batch"], "n": s["n"], "T": T},
               generator=torch.Generator().manual_seed(9))


def ddpm_settings(profile) -> dict:
    """Chapter 9's recipe per profile: U-Net preset, T, optimizer steps, batch, lr, EMA decay.

    ci: the tiny U-Net on a 100-step chain, 100 steps of 32 (a pipeline check).
    cpu: the 0.67M U-Net on a 500-step chain, 4,500 steps of 64 at lr 2e-3: about 8
    minutes on 2 cores with bf16 matrix units (AMD EPYC Zen 5), trained once and shipped
    (companion.run.shipped). The steps come from pilots (tools/pilot.py,
    benchmarks/results/pilots/): one run of each family that trains on this budget, scored
    on 256 samples against the floor of 256 real digits (Frechet distance 47.7 +- 4.9).
    Distance over the floor at 900 / 1,800 / 3,000 / 4,500 / 6,000 updates: DDPM (100
    respaced ancestral steps) 4.08 / 2.17 / 1.42 / 1.27 / 1.27; flow matching (50 Heun
    steps) 3.25 / 2.40 / 1.85 / 1.22 / 1.20; EDM (18 Heun steps) 5.52 / 4.11 / 3.31 / 2.38 /
    2.28; VDM (100 ancestral steps) 11.8 / 8.27 / 5.85 / 4.98 / 4.29. At 4,500 DDPM and flow
    are within 2x of the floor and flat, EDM has flattened just above it and VDM is still
    falling (its ELBO weighting spends the network on the likelihood, chapter 18); samples
    stay farther from their nearest training digit than held-out digits do (median ratio 1.06-1.53).
    The lr comes from earlier probes at 1,000 steps: 1e-3 and 2e-3 alike, 3e-3 worse.
    gpu: the 15M U-Net, T = 1000, 6,000 steps of 128 (5.4 minutes of training on an H100,
    compilation included).
    """
    return dict(
        preset=_profile(profile).pick(ci="tiny", cpu="cpu", gpu="gpu"),
        T=_profile(profile).pick(ci=100, cpu=500, gpu=1000),
        steps=_profile(profile).pick(ci=100, cpu=4500, gpu=6000),
        batch_size=_profile(profile).pick(ci=32, cpu=64, gpu=128),
        lr=_profile(profile).pick(ci=2e-3, cpu=2e-3, gpu=5e-4),
        ema=_profile(profile).pick(ci=0.99, cpu=0.995, gpu=0.999),
    )


def ddpm_diffusion(profile, device):
    """The diffusion of chapter 9: Ho et al.'s linear schedule, 1e-4 to 0.02 at T = 1000,
    both scaled by 1000 / T for shorter chains (ci, cpu), so the total noise stays
    comparable: alpha_bar_T is 2e-5 at T = 100, 3.8e-5 at 500 and 4.0e-5 at 1000."""
    from ..diffusion import Diffusion, linear_betas

    T = ddpm_settings(profile)["T"]
    return Diffusion(linear_betas(T, 1e-4 * 1000 / T, 0.02 * 1000 / T), device=device)


def ddpm_checkpoint(profile, steps: int | None = None, prefix: str = "ch9", seed: int = 0):
    """The checkpoint file of the DDPM trained for `steps` (None: the profile's full run),
    with `seed` (another seed than 0: `<prefix>-ddpm-seed<seed>`)."""
    seed = checks.count("seed", seed, minimum=0)
    name = f"{prefix}-ddpm" + (f"-seed{seed}" if seed else "")
    return checkpoint_path(_at_steps(name, steps), profile)


def ddpm(x, profile, device, *, steps: int | None = None, resume_from=None,
         prefix: str = "ch9", seed: int = 0):
    """Chapter 9's DDPM: the profile's U-Net trained with Algorithm 1 (L_simple), load-or-train.

    Adam with a linear learning-rate warm-up over DDPM_WARMUP steps, gradients clipped at
    norm DDPM_CLIP, an EMA of the weights with warm-up, mixed precision where the GPU has
    it, torch.compile on CUDA (companion.train.fit). Chapter 10 calls this with the same
    arguments and loads the stored model.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`); the model sees them on
            [-1, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint, saved in its own file); more than the profile's
            are refused before anything is built (`checks.early_steps`), as in every
            load-or-train recipe with `steps`.
        resume_from: a checkpoint of the same recipe with fewer steps to continue from
            when this run's own file does not exist yet (so the full run need not repeat
            the early one); default None.
        prefix: the checkpoint file's prefix (default "ch9"): two notebooks that may train
            at once pass different ones, so that they never write one file.
        seed: the torch seed of the weights, the batches and the noise (default 0, the
            book's run); another seed is another run of the same recipe, in a file of its
            own (`<prefix>-ddpm-seed<seed>`): the spread over seeds (issue 93's bf16 check).

    Returns:
        (EMA model in eval mode, FitResult).
    """
    s = ddpm_settings(profile)
    total = checks.early_steps(steps, s["steps"])  # before the network is built
    path = ddpm_checkpoint(profile, steps, prefix, seed)  # checks the seed
    # the config leaves out the step count: an early checkpoint resumes into the full run
    model, optimizer, config, warm_up = _unet_recipe(s, profile, device, x, steps_of_net=s["T"],
                                                     seed=seed, T=s["T"])
    diffusion = ddpm_diffusion(profile, device)
    _check_unit_images(x, "recipes.ddpm")
    x11 = x * 2 - 1  # the network works on [-1, 1]
    _continue(path, resume_from, model, config, x11, optimizer, s, total)

    def loss_fn(model, x0, step):
        warm_up(step)
        return diffusion.simple_loss(model, x0)

    result = fit(model, loss_fn, x11, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc="DDPM" if steps is None else f"DDPM ({steps} steps)")
    return result.ema.model, result


def snapshots(recipe, checkpoint, x, profile, device, *, fractions=(0.25, 0.5),
              total: int | None = None, **kw) -> dict:
    """One run of `recipe` kept at fractions of its updates: {updates: (model, FitResult)}.

    recipe: a load-or-train recipe with `steps` and `resume_from` (ddpm, flow_matching,
    edm, latent_denoiser, code_prior); checkpoint: its checkpoint path function, (profile,
    steps, **kw) -> Path (e.g. ddpm_checkpoint). Each stage resumes from the one before, so
    the stages are snapshots of the same run (its learning rate has no decay after the
    warm-up), not extra training. total: the recipe's full number of updates, the last
    entry (default: chapter 9's budget, `ddpm_settings(profile)["steps"]`).
    """
    total = ddpm_settings(profile)["steps"] if total is None else \
        checks.count("total (the recipe's full number of updates)", total)
    fractions = checks.sequence("fractions", fractions, "(0.25, 0.5)")
    if not all(isinstance(checks.as_float(f), float) and 0 < checks.as_float(f) < 1
               for f in fractions) or not fractions:
        raise ValueError(f"fractions must lie strictly between 0 and 1 (e.g. (0.25, 0.5)); "
                         f"got {fractions!r}")
    cuts = sorted({max(1, round(f * total)) for f in fractions})
    kept, previous = {}, None
    for cut in cuts + [None]:
        kept[cut or total] = recipe(x, profile, device, steps=cut, resume_from=previous, **kw)
        previous = checkpoint(profile, cut, **kw)
    return kept


def network_function(model, device, *, precision: str = "mixed"):
    """The network as the samplers and solvers call it, (x (B, 1, 28, 28), t (B,)) -> float32
    (B, 1, 28, 28): a noise predictor (chapters 9-13) or a velocity network (chapter 13). At
    most companion.run.memory.MAX_IMAGES images a network call, whatever B.

    precision="mixed": under the device's mixed precision (bf16, or fp16 on GPUs without bf16;
    bf16 on a CPU with native bf16 units; `companion.run.precision.autocast_dtype`), else
    float32; for sampling, where an error
    of 1e-2 relative to the output is far below what the samples show. precision="float32":
    the network in float32 with autocast switched off, whatever the device and whatever
    autocast context the caller is in; for the likelihood and ODE-transport paths, where an
    adaptive solver at tolerances of 1e-5 needs a field that is smooth at that precision
    (Song et al. 2021 evaluate in float32; bf16 keeps 8 bits of mantissa).
    """
    from ..run.precision import autocast_dtype

    if precision not in ("mixed", "float32"):
        raise ValueError(f"precision must be 'mixed' (sampling) or 'float32' (likelihoods, "
                         f"ODE transport), got {precision!r}")
    device_type = torch.device(device).type
    dtype = autocast_dtype(device, model) if precision == "mixed" else None

    def net(x, t):
        with torch.autocast(device_type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            if dtype is None:
                x = x.float()
            return map_chunks(lambda xb, tb: model(xb, tb).float(), x, t)

    return net


def eps_function(model, device):
    """eps_theta for the samplers (chapters 9-12): `network_function` in mixed precision."""
    return network_function(model, device, precision="mixed")


def classifier(data, profile, device, *, prefix: str = "ch9", seed: int = 0):
    """The MNIST classifier that scores generated digits (chapters 9 and 10), load-or-train.

    Trained on x_train (in [0, 1], with random shifts of up to 2 pixels) for 2 / 8 / 20
    epochs (ci / cpu / gpu), Adam 1e-3.

    Args:
        data: companion.data.ImageData on `device` (x_train (N, 1, 28, 28), y_train (N,)).
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        prefix: the checkpoint file's prefix (default "ch9"): two notebooks that may train
            at once pass different ones, so that they never write one file.
        seed: the torch seed of the initialization and the batches (default 0, the book's
            judge); another seed trains a second judge of the same recipe (chapter 20), in
            a file of its own (`<prefix>-classifier-seed<seed>`).

    Returns:
        (model in eval mode, FitResult).
    """
    from ..models.classifier import Classifier, classification_loss

    seed = checks.count("seed", seed, minimum=0)
    epochs = _profile(profile).pick(ci=2, cpu=8, gpu=20)
    torch.manual_seed(seed)
    model = Classifier().to(device)
    config = dict(profile=profile.name, epochs=epochs, lr=1e-3, n_train=len(data.x_train),
                  source=data.source)
    name = f"{prefix}-classifier"
    if seed:  # seed 0 keeps the book's judge's file and config
        config["seed"], name = seed, f"{name}-seed{seed}"
    result = fit(model, classification_loss, (data.x_train, data.y_train), epochs=epochs,
                 batch_size=128, lr=1e-3, checkpoint=checkpoint_path(name, profile),
                 config=config, desc="classifier")
    return model.eval(), result


# --- chapter 16: guidance on the digits -------------------------------------------------------
COND_P_UNCOND = 0.15  # chapter 11's LATENT_P_UNCOND: the label dropped this often


def ddpm_cond(x, labels, profile, device, *, prefix: str = "ch16"):
    """Chapter 16's class-conditional DDPM: chapter 9's U-Net, data, diffusion and budget
    (`ddpm_settings`: preset, T, updates, batch, Adam with the same warm-up, clipping and
    EMA) with a label embedding (`UNetConfig.num_classes = 10`), trained on Algorithm 1 with
    each label dropped with probability COND_P_UNCOND (chapter 11's label dropout,
    `latent_diffusion.conditional_loss`), so that one network gives both halves of
    classifier-free guidance. Load-or-train.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`); the model sees them on
            [-1, 1].
        labels: (N,) their digits, 0..9.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        prefix: the checkpoint file's prefix (default "ch16").

    Returns:
        (EMA model in eval mode, FitResult).
    """
    from functools import partial

    from ..latent_diffusion import conditional_loss
    from ..models.unet import UNet

    s = ddpm_settings(profile)
    y = _labelled_images(x, labels, "ddpm_cond")
    model, optimizer, config, warm_up = _unet_recipe(
        s, profile, device, x, steps_of_net=s["T"], network=partial(UNet, num_classes=10),
        T=s["T"], num_classes=10, p_uncond=COND_P_UNCOND,
        loss="L_simple with labels dropped (classifier-free guidance)")
    diffusion = ddpm_diffusion(profile, device)

    def loss_fn(model, batch, step):
        warm_up(step)
        return conditional_loss(diffusion, model, batch[0], batch[1], COND_P_UNCOND)

    result = fit(model, loss_fn, (x * 2 - 1, y), steps=s["steps"],
                 batch_size=s["batch_size"], optimizer=optimizer, clip=DDPM_CLIP,
                 ema=s["ema"], checkpoint=checkpoint_path(f"{prefix}-ddpm-cond", profile),
                 config=config, compile="cuda",
                 desc="conditional DDPM")
    return result.ema.model, result


def guided_eps_function(model, labels, w: float, device):
    """Classifier-free guidance for the samplers: `latent_diffusion.guided_eps` of the
    class-conditional U-Net (`ddpm_cond`) under the device's mixed precision (float32 on a
    CPU without native bf16), as `eps_function` runs the unconditional one:
    (x (B, 1, 28, 28), t (B,)) -> float32 (1 + w) eps(x, t, y) - w eps(x, t), y = labels (B,)."""
    from ..latent_diffusion import guided_eps
    from ..run.precision import autocast_dtype

    eps = guided_eps(model, labels, w)
    device_type = torch.device(device).type
    dtype = autocast_dtype(device, model)

    def net(x, t):
        with torch.autocast(device_type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            return eps(x, t).float()

    net.config = model.config
    return net


def noisy_classifier_settings(profile) -> dict:
    """Chapter 16's noise-aware classifier per profile: epochs over the training digits
    (ci 2, cpu 16, gpu 20), batch 128, Adam 1e-3, each digit noised to a uniform step of
    chapter 9's chain. It sees each digit at a new t every epoch, so it needs more epochs
    than chapter 9's judge (8 on the cpu) to be reliable at moderate noise."""
    return dict(epochs=_profile(profile).pick(ci=2, cpu=16, gpu=20), batch_size=128, lr=1e-3)


def noisy_classifier(data, profile, device, *, prefix: str = "ch16"):
    """Chapter 16's p_t(y | x_t): chapter 9's classifier with the step as an input
    (`models.classifier.NoisyClassifier`), trained on x_t ~ q(x_t | x_0) of chapter 9's
    diffusion at a uniform t (`noisy_classification_loss`), load-or-train.

    Args:
        data: companion.data.ImageData on `device` (x_train (N, 1, 28, 28) in [0, 1],
            y_train (N,)).
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        prefix: the checkpoint file's prefix (default "ch16").

    Returns:
        (model in eval mode, FitResult).
    """
    from ..models.classifier import NoisyClassifier, noisy_classification_loss

    s = noisy_classifier_settings(profile)
    _check_unit_images(data.x_train, "recipes.noisy_classifier")
    diffusion = ddpm_diffusion(profile, device)
    torch.manual_seed(0)
    model = NoisyClassifier(T=diffusion.T).to(device)
    config = dict(profile=profile.name, epochs=s["epochs"], lr=s["lr"], T=diffusion.T,
                  n_train=len(data.x_train), source=data.source, loss="noisy x_t")

    def loss_fn(model, batch):
        return noisy_classification_loss(model, diffusion, batch)

    result = fit(model, loss_fn, (data.x_train, data.y_train), epochs=s["epochs"],
                 batch_size=s["batch_size"], lr=s["lr"],
                 checkpoint=checkpoint_path(f"{prefix}-noisy-classifier", profile),
                 config=config, desc="noisy classifier")
    return model.eval(), result
