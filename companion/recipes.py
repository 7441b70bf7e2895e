"""The book's stored models: one function per chapter model that builds it and
load-or-trains it with the active profile's recipe.

Chapter 10 compares the models of chapters 6, 7 and 9; calling the same function with the
same profile and data gives the same checkpoint identity, so it loads instead of retraining.
Each function returns the trained model (EMA weights where the recipe keeps an average) and
the `companion.train.FitResult`.
"""

from __future__ import annotations

import functools
import math

import torch

from .models.autoencoder import Autoencoder, reconstruction_loss
from .run import checks, smoke
from .run.memory import map_chunks
from .run.profiles import smoke_mode
from .train import checkpoint_path, fit

AE_HIDDEN, AE_LR, AE_NOISE, AE_WEIGHT = (256,), 2e-3, 0.5, 1.0


def _profile(profile):
    """profile if it is a companion Profile: a name ('ci') or None ended in "'str' object
    has no attribute 'pick'"."""
    from .run.profiles import Profile

    if not isinstance(profile, Profile):
        raise checks.ArgumentError(
            f"profile must be a companion Profile, got {checks._got(profile)}: pass "
            "companion.run.profiles.get_profile('ci') (or get_profile() for the active one)")
    return profile


def _prefix(prefix) -> str:
    """prefix, the start of a checkpoint's file name: a non-empty string (None named the
    file 'None-...')."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise checks.ArgumentError(f"prefix must be a non-empty string such as 'ch18' (the "
                                   f"start of the checkpoint's file name), got {prefix!r}")
    return prefix


def chapter1_autoencoder(name: str, x, profile, device, *, loss_fn=reconstruction_loss,
                         latent: int = 16, prefix: str = "ch1", **settings):
    """Chapter 1's autoencoder: MLP 784 -> 256 -> latent and back, squared error (or the
    `loss_fn` given: chapter 1's denoising and contractive losses use AE_NOISE, AE_WEIGHT),
    Adam 2e-3, the profile's batch size, 15 / 30 / 20 epochs (ci / cpu / gpu).

    Args:
        name: the model's name in the checkpoint file (e.g. "ae", "dae", "cae").
        x: (N, 1, 28, 28) training images in [0, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        loss_fn: (model, x) -> loss (default `reconstruction_loss`).
        latent: the code's size (default 16).
        prefix: the checkpoint file's prefix (default "ch1"): two notebooks that may train
            at once pass different ones, so that they never write one file.
        settings: whatever else shapes `loss_fn` (e.g. radius=2.0), recorded in the
            checkpoint.

    Returns:
        (model, FitResult). Chapter 6 compares the VAE with this model.
    """
    epochs = _profile(profile).pick(ci=15, cpu=30, gpu=20)
    torch.manual_seed(0)
    model = Autoencoder(latent, hidden=AE_HIDDEN).to(device)
    config = dict(profile=profile.name, name=name, latent=latent, hidden=list(AE_HIDDEN),
                  epochs=epochs, lr=AE_LR, noise=AE_NOISE, weight=AE_WEIGHT, n_train=len(x),
                  **settings)
    result = fit(model, loss_fn, x, epochs=epochs, batch_size=profile.batch_size, lr=AE_LR,
                 checkpoint=checkpoint_path(f"{prefix}-{name}", profile), config=config,
                 desc=name)
    return model, result


# --- chapters 6 and 7: the single-level VAE and the hierarchy, on one recipe --------------
VAE_BATCH, VAE_LR, VAE_WARMUP_FRACTION = 32, 1e-3, 0.2


def vae_epochs(profile) -> int:
    """Epochs for the chapter-7 comparison: 8 / 20 / 10 (ci / cpu / gpu; gpu on all 60,000
    digits, 19,000 updates). ci gets more than chapter 6's 3: the layers above z_1 start at
    the prior and need some hundreds of updates before they pay for themselves."""
    return _profile(profile).pick(ci=8, cpu=20, gpu=10)


def _elbo_fit(name, model, loss_fn, x, profile, *, epochs, prefix, **settings):
    """Load-or-train with chapter 6's recipe (batch 32, Adam 1e-3); returns the FitResult."""
    config = dict(profile=profile.name, n_train=len(x), epochs=epochs, batch_size=VAE_BATCH,
                  lr=VAE_LR, **settings)
    return fit(model, loss_fn, x, epochs=epochs, batch_size=VAE_BATCH, lr=VAE_LR,
               checkpoint=checkpoint_path(f"{prefix}-{name}", profile), config=config,
               desc=name)


def warmup_steps(n_train: int, epochs: int) -> int:
    """Chapter 6's KL warm-up: the first fifth of the updates."""
    return int(VAE_WARMUP_FRACTION * epochs * -(-n_train // VAE_BATCH))


def single_level_vae(x, profile, device, *, source: str, epochs: int | None = None,
                     prefix: str = "ch7"):
    """Chapter 6's MLP VAE (784 -> 512 -> 20 and back, Bernoulli decoder, dynamic
    binarization, KL warm-up over the first fifth of the updates), load-or-train.

    Args:
        x: (N, 1, 28, 28) grey training images in [0, 1] on `device`.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        epochs: None (default) for the profile's number, or this many.
        prefix: the checkpoint file's prefix (default "ch7"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model, FitResult).
    """
    from .models.vae import VAE, ELBOLoss

    epochs = epochs or vae_epochs(profile)
    warmup = warmup_steps(len(x), epochs)
    torch.manual_seed(0)
    model = VAE(latent_dim=20, hidden=(512,)).to(device)
    result = _elbo_fit("vae", model, ELBOLoss(warmup_steps=warmup), x, profile, epochs=epochs,
                       prefix=prefix, warmup=warmup, latent=20, hidden=512, data=source)
    return model, result


HVAE_LATENTS, HVAE_HIDDEN = (20, 8), (480, 128)


def hierarchical_vae(x, profile, device, *, source: str, free_bits: float = 0.0,
                     epochs: int | None = None, latent_dims=HVAE_LATENTS,
                     hidden=HVAE_HIDDEN, name: str = "hvae", prefix: str = "ch7"):
    """Chapter 7's two-layer HierarchicalVAE (z_1: 20, z_2: 8; bottom-up 784 -> 480 -> 128;
    within 3% of the single-level VAE's parameters) on the single-level VAE's recipe, with
    `free_bits` nats per latent dimension for each layer, load-or-train.

    Args:
        x: (N, 1, 28, 28) grey training images in [0, 1] on `device`.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        free_bits: nats per latent dimension below which a layer's KL is not pushed
            down (default 0.0: the plain ELBO).
        epochs: None (default) for the profile's number, or this many.
        latent_dims: the layers' sizes, bottom first (default (20, 8)).
        hidden: the bottom-up network's widths (default (480, 128)).
        name: the model's name in the checkpoint file (default "hvae").
        prefix: the checkpoint file's prefix (default "ch7"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model, FitResult); the history logs kl1, kl2, ... per update.
    """
    from .models.hvae import HierarchicalVAE, HierarchyLoss

    epochs = epochs or vae_epochs(profile)
    warmup = warmup_steps(len(x), epochs)
    torch.manual_seed(0)
    model = HierarchicalVAE(tuple(latent_dims), tuple(hidden)).to(device)
    loss = HierarchyLoss(warmup_steps=warmup, free_bits=free_bits)
    result = _elbo_fit(name, model, loss, x, profile, epochs=epochs, prefix=prefix,
                       warmup=warmup, free_bits=free_bits, latent_dims=list(latent_dims),
                       hidden=list(hidden), data=source)
    return model, result


def eight_bit_vae(x, profile, device, *, source: str, hierarchical: bool = False,
                  prefix: str = "ch10"):
    """Chapter 6's VAE, or chapter 7's two-layer hierarchy, with DDPM's data model: a
    discretized Gaussian decoder on the 8-bit images scaled to [-1, 1], so that their
    likelihoods and DDPM's bound are in the same units (chapter 10). Otherwise chapter 7's
    recipe (batch 32, Adam 1e-3, KL warm-up over the first fifth), load-or-train; in ci 4
    epochs, not 8: chapter 10's ci run must stay under two minutes, and it asserts nothing
    that needs these two models well trained.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] on `device`.
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        hierarchical: False (default) for chapter 6's VAE, True for chapter 7's hierarchy.
        prefix: the checkpoint file's prefix (default "ch10"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model, FitResult).
    """
    from .models.hvae import HierarchicalVAE, HierarchyLoss
    from .models.vae import VAE, ELBOLoss, to_8bit_range

    epochs = 4 if profile.name == "ci" else vae_epochs(profile)
    warmup = warmup_steps(len(x), epochs)
    torch.manual_seed(0)
    if hierarchical:
        name = "hvae8"
        model = HierarchicalVAE(HVAE_LATENTS, HVAE_HIDDEN, likelihood="discretized")
        loss = HierarchyLoss(warmup_steps=warmup, binarize=False)
    else:
        name = "vae8"
        model = VAE(latent_dim=20, hidden=(512,), likelihood="discretized")
        loss = ELBOLoss(warmup_steps=warmup, binarize=False)
    result = _elbo_fit(name, model.to(device), loss, to_8bit_range(x), profile,
                       epochs=epochs, prefix=prefix, warmup=warmup, data=source,
                       likelihood="discretized")
    return model, result


# --- chapter 9: the DDPM and the classifier that scores its samples --------------------------
DDPM_CLIP, DDPM_WARMUP = 1.0, 200


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
    from .diffusion import Diffusion, linear_betas
    from .toy import NoisePredictorMLP

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
    cpu: the 0.67M U-Net on a 500-step chain, 900 steps of 64 at lr 2e-3. On a 2-core
    machine (float32 matrix products at 37-74 GFLOP/s) a step takes 0.6-1.0 s and a network
    call on 64 images 0.2-0.4 s, so training, chapter 9's sampling (about 1,500 calls) and
    its judge fit under 20 minutes: measured 17 min 11 s from an empty cache, a Frechet
    distance of 274 against a floor of 149 at 64 samples, mean top-class probability 0.83,
    a little over half the samples clear digits. The steps and lr come from probe runs
    scored on 256 samples (100-step respaced sampler, floor about 45): lr 1e-3 / 2e-3
    reached 193 / 175 after 600 steps, 154 / 141 after 800, 127 / 129 after 1,000, with
    mean top-class probabilities 0.80-0.83 / 0.82-0.84 (test digits 0.97); lr 3e-3 was
    worse (169 after 900), and batch 32 for twice the steps cost more per image and was
    no better.
    gpu: the 15M U-Net, T = 1000, 6,000 steps of 128 (5.4 minutes of training on an H100,
    compilation included).
    """
    return dict(
        preset=_profile(profile).pick(ci="tiny", cpu="cpu", gpu="gpu"),
        T=_profile(profile).pick(ci=100, cpu=500, gpu=1000),
        steps=_profile(profile).pick(ci=100, cpu=900, gpu=6000),
        batch_size=_profile(profile).pick(ci=32, cpu=64, gpu=128),
        lr=_profile(profile).pick(ci=2e-3, cpu=2e-3, gpu=5e-4),
        ema=_profile(profile).pick(ci=0.99, cpu=0.995, gpu=0.999),
    )


def ddpm_diffusion(profile, device):
    """The diffusion of chapter 9: Ho et al.'s linear schedule, 1e-4 to 0.02 at T = 1000,
    both scaled by 1000 / T for shorter chains (ci, cpu), so the total noise stays
    comparable: alpha_bar_T is 2e-5 at T = 100, 3.8e-5 at 500 and 4.0e-5 at 1000."""
    from .diffusion import Diffusion, linear_betas

    T = ddpm_settings(profile)["T"]
    return Diffusion(linear_betas(T, 1e-4 * 1000 / T, 0.02 * 1000 / T), device=device)


def _at_steps(name: str, steps) -> str:
    """The checkpoint name of `name` trained for `steps` updates (None: the full run): steps a
    whole number >= 1 (-5 named a file of no run)."""
    if steps is None:
        return name
    return f"{name}-step{checks.count('steps (the updates of an early run, or None)', steps)}"


def ddpm_checkpoint(profile, steps: int | None = None, prefix: str = "ch9"):
    """The checkpoint file of the DDPM trained for `steps` (None: the profile's full run)."""
    return checkpoint_path(_at_steps(f"{prefix}-ddpm", steps), profile)


def ddpm(x, profile, device, *, steps: int | None = None, resume_from=None,
         prefix: str = "ch9"):
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
            many (an early checkpoint, saved in its own file).
        resume_from: a checkpoint of the same recipe with fewer steps to continue from
            when this run's own file does not exist yet (so the full run need not repeat
            the early one); default None.
        prefix: the checkpoint file's prefix (default "ch9"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (EMA model in eval mode, FitResult).
    """
    s = ddpm_settings(profile)
    total = s["steps"] if steps is None else steps
    # the config leaves out the step count: an early checkpoint resumes into the full run
    model, optimizer, config, warm_up = _unet_recipe(s, profile, device, x, steps_of_net=s["T"],
                                                     T=s["T"])
    diffusion = ddpm_diffusion(profile, device)
    _check_unit_images(x, "recipes.ddpm")
    path = ddpm_checkpoint(profile, steps, prefix)
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


def _continue(path, resume_from, model, config, x11, optimizer, s: dict, total: int) -> None:
    """Start the run into `path` from `resume_from`, an early checkpoint of the same recipe,
    when `path` does not exist yet (the early run's steps are not trained again). x11: the
    training data as fit gets it, a tensor or a tuple of tensors; s: the recipe's settings
    (its "ema" and "batch_size")."""
    if resume_from is not None and not path.exists():
        from .run.checkpoint import identity, seed_from

        data = tuple(x11) if isinstance(x11, (tuple, list)) else (x11,)
        seed_from(path, resume_from, identity(model, config, data, optimizer, s["ema"],
                                              s["batch_size"]), total)


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


def _unet_recipe(s: dict, profile, device, x, *, steps_of_net: int, network=None, **more):
    """The skeleton chapters 9, 13 and 14 share: seed 0, the profile's U-Net preset built
    for `steps_of_net` time steps (as `network`, default UNet), Adam, the config that
    identifies the run (`more` adds the recipe's own settings: T, or K and the loss), and
    the linear learning-rate warm-up over DDPM_WARMUP steps, a function of the global step
    so that it survives resuming.
    s: ddpm_settings(profile) or masked_settings(profile).
    Returns (model, optimizer, config, warm_up(step))."""
    from .models.unet import UNet, preset
    from .run.precision import default_optimizer

    torch.manual_seed(0)
    model = (network or UNet)(preset(s["preset"], T=steps_of_net)).to(device)
    optimizer = default_optimizer(model.parameters(), s["lr"], device)
    config = dict(profile=profile.name, preset=s["preset"], lr=s["lr"],
                  batch_size=s["batch_size"], ema=s["ema"], clip=DDPM_CLIP,
                  warmup=DDPM_WARMUP, n_train=len(x), **more)

    return model, optimizer, config, _warm_up(optimizer, s["lr"])


def _labelled_images(x, labels, who: str) -> torch.Tensor:
    """The labels of training images x (checked to lie in [0, 1]) as int64 on x's device,
    one per image, or a clear error naming the recipe `who`."""
    from .latent_diffusion import check_labels

    _check_unit_images(x, f"recipes.{who}")
    y = check_labels(labels).to(x.device)
    if len(y) != len(x):
        raise checks.ArgumentError(f"{who} needs one label per image: {len(x)} images, "
                                   f"{len(y)} labels")
    return y


def _warm_up(optimizer, lr: float):
    """The linear learning-rate warm-up over DDPM_WARMUP updates, as a function of the
    global step (so that it survives resuming): warm_up(step) sets every group's lr."""
    def warm_up(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / DDPM_WARMUP)

    return warm_up


def _check_unit_images(x, where: str) -> None:
    """Refuse images clearly outside [0, 1] (0..255 bytes, or [-1, 1]): one check per call."""
    if not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{where} needs a non-empty tensor of images (N, 1, 28, 28) in "
                         f"[0, 1], got {getattr(x, 'shape', type(x).__name__)}")
    lo, hi = torch.aminmax(x.detach().float())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -0.01 or hi > 1.01:
        raise ValueError(f"{where} expects images in [0, 1] (companion.data's scale), got "
                         f"values in [{lo:.3g}, {hi:.3g}]: divide 0..255 bytes by 255, map "
                         "[-1, 1] with (x + 1) / 2")


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
    from .run.precision import autocast_dtype

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
    from .models.classifier import Classifier, classification_loss

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

    from .latent_diffusion import conditional_loss
    from .models.unet import UNet

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
    from .latent_diffusion import guided_eps
    from .run.precision import autocast_dtype

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
    from .models.classifier import NoisyClassifier, noisy_classification_loss

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


# --- chapter 11: latent diffusion ------------------------------------------------------------
LATENT_DIM, LATENT_KL_WEIGHT, LATENT_P_UNCOND = 32, 0.1, 0.15


def latent_settings(profile) -> dict:
    """Chapter 11's recipe per profile.

    The autoencoder: chapter 6's convolutional VAE (28 -> 14 -> 7, a linear head) with a
    LATENT_DIM-number code and chapter 10's discretized decoder, trained on -(log p(x|z)
    - LATENT_KL_WEIGHT * KL): a weak KL, Rombach et al.'s "KL-reg", which keeps the codes
    near the origin without trading the reconstruction for a standard normal aggregate.
    Batch 64, Adam 2e-3, 4 / 20 / 30 epochs (ci / cpu / gpu).
    The denoisers: residual MLPs (width 256, 3 blocks) on chapter 9's diffusion (the same
    T and schedule in each profile), Adam 1e-3 with gradients clipped at 1, an EMA of the
    weights; 300 / 3,000 / 20,000 steps of 256 codes; the class-conditional one drops the
    label with probability LATENT_P_UNCOND.
    """
    return dict(
        latent_dim=LATENT_DIM, kl_weight=LATENT_KL_WEIGHT,
        vae_epochs=_profile(profile).pick(ci=4, cpu=20, gpu=30), vae_batch=64, vae_lr=2e-3,
        width=256, depth=3, T=ddpm_settings(profile)["T"],
        steps=_profile(profile).pick(ci=300, cpu=3000, gpu=20000), batch_size=256, lr=1e-3,
        ema=_profile(profile).pick(ci=0.99, cpu=0.995, gpu=0.999), clip=1.0,
        p_uncond=LATENT_P_UNCOND,
    )


def latent_vae(x, profile, device, *, source: str, prefix: str = "ch11"):
    """Chapter 11's autoencoder (see `latent_settings`), load-or-train.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] on `device`; the model sees them as
            8-bit levels on [-1, 1] (`to_8bit_range`).
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        source: the data source's name, recorded in the checkpoint.
        prefix: the checkpoint file's prefix (default "ch11"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (model in eval mode, FitResult).
    """
    from .models.vae import VAE, ELBOLoss, to_8bit_range

    s = latent_settings(profile)
    _check_unit_images(x, "recipes.latent_vae")
    torch.manual_seed(0)
    model = VAE(s["latent_dim"], arch="conv", likelihood="discretized").to(device)
    config = dict(profile=profile.name, latent=s["latent_dim"], arch="conv",
                  kl_weight=s["kl_weight"], epochs=s["vae_epochs"], batch_size=s["vae_batch"],
                  lr=s["vae_lr"], n_train=len(x), data=source, likelihood="discretized")
    result = fit(model, ELBOLoss(beta=s["kl_weight"], binarize=False), to_8bit_range(x),
                 epochs=s["vae_epochs"], batch_size=s["vae_batch"], lr=s["vae_lr"],
                 checkpoint=checkpoint_path(f"{prefix}-vae", profile), config=config,
                 desc="autoencoder")
    return model.eval(), result


def latent_checkpoint(profile, steps: int | None = None, prefix: str = "ch11", *,
                      conditional: bool = False, **_):
    """The checkpoint file of the latent DDPM trained for `steps` (None: the full run);
    other keywords (those `snapshots` passes to `latent_denoiser`) are ignored."""
    name = f"{prefix}-latent-ddpm" + ("-cond" if conditional else "")
    return checkpoint_path(_at_steps(name, steps), profile)


def latent_denoiser(vae, x, profile, device, *, scale: float, labels=None,
                    steps: int | None = None, resume_from=None, prefix: str = "ch11"):
    """A latent DDPM on `vae`'s codes (see `latent_settings`), load-or-train.

    Each step draws fresh codes z ~ q(z | x) for its batch (from the encoder's means and
    variances, computed once) and scales them by `scale`. With `steps` it trains only that
    many updates into a file of its own, and `resume_from` continues an early run, as in
    `ddpm` (chapter 19 follows the run along its budget with `snapshots`).

    Args:
        vae: the trained autoencoder of `latent_vae`.
        x: (N, 1, 28, 28) training images in [0, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        scale: the factor on the codes (`latent_diffusion.latent_scale`).
        labels: None (default: an unconditional model) or (N,) digits for a
            class-conditional one (classifier-free guidance).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, `latent_checkpoint`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet; default None.
        prefix: the checkpoint file's prefix (default "ch11"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (EMA model, FitResult).
    """
    from .latent_diffusion import codec_fingerprint, conditional_loss, draw_codes, posterior_codes
    from .models.latent_denoiser import LatentDenoiser
    from .models.vae import to_8bit_range
    from .run.precision import default_optimizer

    s = latent_settings(profile)
    _check_unit_images(x, "recipes.latent_denoiser")
    mu, logvar = posterior_codes(vae, to_8bit_range(x))
    conditional = labels is not None
    torch.manual_seed(0)
    model = LatentDenoiser(dim=vae.latent_dim, width=s["width"], depth=s["depth"], T=s["T"],
                           num_classes=10 if conditional else None).to(device)
    model.codec_id.fill_(codec_fingerprint(vae))
    diffusion = ddpm_diffusion(profile, device)
    config = dict(profile=profile.name, width=s["width"], depth=s["depth"], T=s["T"],
                  lr=s["lr"], batch_size=s["batch_size"], ema=s["ema"], clip=s["clip"],
                  scale=float(scale), conditional=conditional, n_train=len(x),
                  p_uncond=s["p_uncond"] if conditional else 0.0)

    def loss_fn(model, batch):
        z0 = draw_codes(batch[0], batch[1], scale)
        if conditional:
            return conditional_loss(diffusion, model, z0, batch[2], s["p_uncond"])
        return diffusion.simple_loss(model, z0)

    data = (mu, logvar) + ((torch.as_tensor(labels, device=mu.device).long(),)
                           if conditional else ())
    # fit's own default optimizer, made here so that an early run can be resumed
    optimizer = default_optimizer(model.parameters(), s["lr"], device)
    total = s["steps"] if steps is None else steps
    path = latent_checkpoint(profile, steps, prefix, conditional=conditional)
    _continue(path, resume_from, model, config, data, optimizer, s, total)
    result = fit(model, loss_fn, data, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=s["clip"], ema=s["ema"], checkpoint=path,
                 config=config, desc="latent DDPM" + (" (conditional)" if conditional
                                                      else "")
                 + ("" if steps is None else f" ({steps} steps)"))
    return result.ema.model, result


# --- chapter 13: flow matching with chapter 9's U-Net ----------------------------------------
def flow_checkpoint(profile, steps: int | None = None, prefix: str = "ch13"):
    """The checkpoint file of the flow model trained for `steps` (None: the full run)."""
    return checkpoint_path(_at_steps(f"{prefix}-flow", steps), profile)


def flow_matching(x, profile, device, *, steps: int | None = None, resume_from=None,
                  prefix: str = "ch13"):
    """Chapter 9's U-Net trained with the flow-matching loss (companion.flow) on chapter 9's
    recipe: the profile's preset, updates, batch, Adam with the same warm-up, clipping and
    EMA, so that the two models differ only in what they regress on. The time grid has
    K = chapter 9's T intervals, tau = k / K, fed to the U-Net as steps k + 1 (built with
    T = K + 1). Load-or-train.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`); the model sees them on
            [-1, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, as in `ddpm`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet (as in `ddpm`); default None.
        prefix: the checkpoint file's prefix (default "ch13"): two notebooks that may train
            at once pass different ones, so that they never write one file.

    Returns:
        (EMA model in eval mode, FitResult).
    """
    from .flow import flow_matching_loss

    s = ddpm_settings(profile)
    K = s["T"]
    _check_unit_images(x, "recipes.flow_matching")
    model, optimizer, config, warm_up = _unet_recipe(
        s, profile, device, x, steps_of_net=K + 1, K=K, loss="flow matching, linear path")

    def loss_fn(model, x0, step):
        warm_up(step)
        return flow_matching_loss(model, x0, K)

    total = s["steps"] if steps is None else steps
    path = flow_checkpoint(profile, steps, prefix)
    _continue(path, resume_from, model, config, x * 2 - 1, optimizer, s, total)
    result = fit(model, loss_fn, x * 2 - 1, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc="flow matching" if steps is None else f"flow ({steps} steps)")
    return result.ema.model, result


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
    from . import masked
    from .data import binarize
    from .models.unet import MaskedUNet

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


# --- chapter 15: few-step students of chapter 13's flow model --------------------------------
def fewstep_settings(profile) -> dict:
    """Chapter 15's recipe per profile. Every student is chapter 13's U-Net started from the
    flow model's weights (the teacher) and fine-tuned with Adam, chapter 9's clipping and an
    EMA of the weights, on the teacher's grid of K = chapter 9's T intervals.

    pairs, pair_steps: reflow's couplings, noise and the teacher's Heun end with pair_steps
    steps (2 pair_steps evaluations a pair; K / pair_steps whole, so grid times only).
    reflow_steps: updates on them. rounds_from: progressive distillation's first teacher,
    Euler with that many steps, halved each round down to one step, distill_steps updates
    a round. cd_N, cd_steps: consistency distillation's intervals of tau (K / cd_N a whole
    number, so that the student is called on grid times only: one network call a time, not
    two) and updates. ci: a pipeline check; cpu: fits the chapter's 20 minutes on 2 cores
    (7 min 04 s measured with chapters 9's and 13's models in the cache); gpu: minutes on
    a T4.
    """
    return dict(
        pairs=profile.count(ci=64, cpu=1024, gpu=10_000),
        pair_steps=profile.count(ci=4, cpu=10, gpu=25),
        reflow_steps=_profile(profile).pick(ci=20, cpu=200, gpu=4000),
        rounds_from=16,
        distill_steps=_profile(profile).pick(ci=10, cpu=60, gpu=1500),
        cd_N=_profile(profile).pick(ci=10, cpu=20, gpu=40),
        cd_steps=_profile(profile).pick(ci=20, cpu=200, gpu=4000),
        batch_size=_profile(profile).pick(ci=16, cpu=32, gpu=128),
        lr=_profile(profile).pick(ci=5e-4, cpu=5e-4, gpu=2e-4),
        ema=_profile(profile).pick(ci=0.9, cpu=0.99, gpu=0.999),
    )


def _flow_student(teacher, profile, device):
    """A U-Net like chapter 13's flow model, holding the teacher's weights."""
    from .models.unet import UNet, preset

    s = ddpm_settings(profile)
    model = UNet(preset(s["preset"], T=s["T"] + 1)).to(device)
    model.load_state_dict(teacher.state_dict())
    return model


def _weights_norm(model) -> float:
    """The squared norm of the weights: the teacher's mark in a student's checkpoint."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))


def _student_fit(name, model, loss_fn, data, profile, steps, config, prefix):
    f = fewstep_settings(profile)
    config = dict(profile=profile.name, lr=f["lr"], batch_size=f["batch_size"],
                  ema=f["ema"], clip=DDPM_CLIP, **config)
    result = fit(model, loss_fn, data, steps=steps, batch_size=f["batch_size"], lr=f["lr"],
                 clip=DDPM_CLIP, ema=f["ema"],
                 checkpoint=checkpoint_path(f"{prefix}-{name}", profile), config=config,
                 desc=name)
    return result.ema.model.eval(), result


def reflow_couplings(teacher, profile, device, *, seed: int = 15):
    """Reflow's pairs (x0, x1): x1 ~ N(0, I) (seeded), x0 the teacher's Heun end from x1 with
    the profile's pair_steps (`companion.fewstep.reflow_pairs`). teacher: chapter 13's flow
    model. Returns (x0, x1), each (pairs, 1, 28, 28) on `device`, and the teacher
    evaluations they cost."""
    from .fewstep import grid_field, reflow_pairs

    f = fewstep_settings(profile)
    K = ddpm_settings(profile)["T"]
    x1 = torch.randn(f["pairs"], 1, 28, 28, device=device,
                     generator=torch.Generator(device).manual_seed(seed))
    x0 = reflow_pairs(grid_field(eps_function(teacher, device), K), x1, f["pair_steps"])
    return (x0, x1), 2 * f["pair_steps"] * f["pairs"]


def reflow(teacher, pairs, profile, device, *, prefix: str = "ch15"):
    """Chapter 15's reflow student (Liu et al. 2023): the teacher's weights fine-tuned with
    the flow-matching loss on the teacher's couplings (`reflow_couplings`), load-or-train.
    pairs: (x0, x1) on [-1, 1] and N(0, I). Returns (EMA model in eval mode, FitResult)."""
    from .fewstep import coupled_flow_matching_loss

    f = fewstep_settings(profile)
    K = ddpm_settings(profile)["T"]
    x0, x1 = pairs

    def loss_fn(model, batch):
        return coupled_flow_matching_loss(model, batch[0], batch[1], K)

    return _student_fit("reflow", _flow_student(teacher, profile, device), loss_fn, (x0, x1),
                        profile, f["reflow_steps"],
                        dict(K=K, teacher=_weights_norm(teacher), loss="reflow"), prefix)


def progressive_distillation(teacher, x, profile, device, *, prefix: str = "ch15"):
    """Chapter 15's progressive distillation (Salimans and Ho 2022), load-or-train: round r
    trains a student of rounds_from / 2^r Euler steps to match two steps of the previous
    round's model (the flow model first), started from that model's weights; rounds down to
    one step. x: (N, 1, 28, 28) training images in [0, 1].
    Returns {steps: (EMA model in eval mode, FitResult)} for each round's student."""
    from .fewstep import progressive_distillation_loss

    f = fewstep_settings(profile)
    K = ddpm_settings(profile)["T"]
    _check_unit_images(x, "recipes.progressive_distillation")
    students, current, n = {}, teacher, f["rounds_from"] // 2
    while n >= 1:
        def loss_fn(model, x0, teacher=current, n=n):
            return progressive_distillation_loss(model, teacher, x0, n, K)

        students[n] = _student_fit(
            f"distill{n}", _flow_student(current, profile, device), loss_fn, x * 2 - 1,
            profile, f["distill_steps"],
            dict(K=K, teacher=_weights_norm(current), n_student=n, n_train=len(x),
                 loss="progressive distillation"), prefix)
        current, n = students[n][0], n // 2
    return students


def consistency_distillation(teacher, x, profile, device, *, prefix: str = "ch15"):
    """Chapter 15's consistency distillation (Song et al. 2023), load-or-train: the map
    f(x, tau) = x - tau u(x, tau), u started from the teacher's velocity, trained with
    `companion.fewstep.consistency_distillation_loss` on cd_N intervals with the teacher's
    Heun steps. x: (N, 1, 28, 28) training images in [0, 1].
    Returns (u: EMA model in eval mode, FitResult)."""
    from .fewstep import consistency_distillation_loss

    f = fewstep_settings(profile)
    K = ddpm_settings(profile)["T"]
    _check_unit_images(x, "recipes.consistency_distillation")

    def loss_fn(model, x0):
        return consistency_distillation_loss(model, teacher, x0, f["cd_N"], K)

    return _student_fit("consistency", _flow_student(teacher, profile, device), loss_fn,
                        x * 2 - 1, profile, f["cd_steps"],
                        dict(K=K, teacher=_weights_norm(teacher), N=f["cd_N"], n_train=len(x),
                             loss="consistency distillation", solver="heun"), prefix)


# --- chapter 17: EDM's preconditioned denoiser --------------------------------------------------
def edm_checkpoint(profile, steps: int | None = None, prefix: str = "ch17", *,
                   P_mean: float | None = None, P_std: float | None = None):
    """The checkpoint file of the EDM model trained for `steps` (None: the full run) with the
    noise distribution ln sigma ~ N(P_mean, P_std^2) (None: EDM's, -1.2 and 1.2)."""
    from .edm import P_MEAN, P_STD

    pm, ps = P_MEAN if P_mean is None else P_mean, P_STD if P_std is None else P_std
    name = f"{prefix}-edm" + ("" if (pm, ps) == (P_MEAN, P_STD) else f"-pm{pm:g}-ps{ps:g}")
    return checkpoint_path(_at_steps(name, steps), profile)


def edm(x, profile, device, *, steps: int | None = None, resume_from=None,
        prefix: str = "ch17", P_mean: float | None = None, P_std: float | None = None):
    """Chapter 17's EDM model, load-or-train: chapter 9's U-Net and budget (`ddpm_settings`:
    preset, optimizer steps, batch, Adam with the same warm-up, clipping and EMA) trained
    with EDM's preconditioning and loss (`companion.edm`): ln sigma ~ N(-1.2, 1.2^2), weight
    1 / c_out^2, so that the two models differ only in the design choices the chapter
    takes apart. The U-Net is built with chapter 9's T steps, which `StepConditioned`
    spreads over ln sigma in [0.002, 80]; sigma_data is the training images' std on
    [-1, 1] to two decimals (0.62 for the digits: EDM's 0.5 would leave the network's input
    and target variances near 1.5 at the two ends), recorded in the checkpoint's config.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`); the model sees them on
            [-1, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, as in `ddpm`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet (as in `ddpm`); default None.
        prefix: the checkpoint file's prefix (default "ch17").
        P_mean: the mean of ln sigma in training, ln sigma ~ N(P_mean, P_std^2); None:
            EDM's -1.2 (chapter 17 sweeps it).
        P_std: the standard deviation of ln sigma in training; None: EDM's 1.2.

    Returns:
        (D: an `edm.Denoiser` around the EMA U-Net, in eval mode; FitResult).
    """
    from .edm import P_MEAN, P_STD, SIGMA_MAX, SIGMA_MIN, Denoiser, StepConditioned, edm_loss

    pm, ps = P_MEAN if P_mean is None else P_mean, P_STD if P_std is None else P_std
    if not (math.isfinite(pm) and math.isfinite(ps) and ps > 0):
        raise ValueError(f"the noise distribution needs a finite P_mean and a P_std > 0 "
                         f"(ln sigma ~ N(P_mean, P_std^2)); got P_mean={pm!r}, P_std={ps!r}")
    s = ddpm_settings(profile)
    _check_unit_images(x, "recipes.edm")
    sigma_data = round((x.float() * 2 - 1).std().item(), 2)
    model, optimizer, config, warm_up = _unet_recipe(
        s, profile, device, x, steps_of_net=s["T"], T=s["T"], sigma_data=sigma_data,
        P_mean=pm, P_std=ps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
        loss="EDM: preconditioned, log-normal sigma, lambda = 1 / c_out^2")

    def denoiser(net):
        return Denoiser(StepConditioned(net, SIGMA_MIN, SIGMA_MAX, T=s["T"]), "edm", sigma_data)

    def loss_fn(model, y, step):
        warm_up(step)
        return edm_loss(denoiser(model), y, P_mean=pm, P_std=ps)

    total = s["steps"] if steps is None else steps
    path = edm_checkpoint(profile, steps, prefix, P_mean=pm, P_std=ps)
    _continue(path, resume_from, model, config, x * 2 - 1, optimizer, s, total)
    result = fit(model, loss_fn, x * 2 - 1, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc="EDM" if steps is None else f"EDM ({steps} steps)")
    return denoiser(result.ema.model).eval(), result


def denoiser_function(D, device, *, precision: str = "mixed"):
    """An `edm.Denoiser` whose network is called as the samplers call chapter 9's
    (`network_function`): at most companion.run.memory.MAX_IMAGES images a call, in mixed
    precision on a GPU, float32 out. D: an edm.Denoiser around a `StepConditioned` U-Net
    (what `edm` returns). The coefficients, sigma_data and the steps' mapping are D's own.
    Returns an edm.Denoiser, D(x (B, 1, 28, 28), sigma) -> (B, 1, 28, 28).
    """
    from .edm import Denoiser, StepConditioned

    step = getattr(D, "net", None)
    if not isinstance(D, Denoiser) or not isinstance(step, StepConditioned):
        raise TypeError(f"denoiser_function takes an edm.Denoiser around a StepConditioned "
                        f"network (what recipes.edm returns), got {type(D).__name__}"
                        + (f" around {type(step).__name__}" if step is not None else ""))
    fn = network_function(step.model, device, precision=precision)
    bounded = StepConditioned(fn, T=step.T)
    bounded.log_min, bounded.log_max = step.log_min, step.log_max  # D's range, bit for bit
    return Denoiser(bounded, D.kind, D.sigma_data)


# --- chapter 18: variational diffusion models ----------------------------------------------
VDM_STEPS_RANGE = (-15.0, 10.0)  # the U-Net's T steps, evenly spaced in gamma over this range
VDM_WEIGHTINGS = ("elbo", "sigmoid")


def vdm_checkpoint(profile, steps: int | None = None, prefix: str = "ch18", *,
                   weighting: str = "elbo"):
    """The checkpoint file of chapter 18's model trained for `steps` (None: the full run) on
    `weighting` ("elbo": the bound with a learned schedule; "sigmoid": Kingma and Gao's
    sigmoid weighting)."""
    if weighting not in VDM_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VDM_WEIGHTINGS}, got {weighting!r}")
    prefix = _prefix(prefix)
    name = f"{prefix}-vdm" if weighting == "elbo" else f"{prefix}-vdm-{weighting}"
    return checkpoint_path(_at_steps(name, steps), profile)


def vdm(x, profile, device, *, steps: int | None = None, resume_from=None,
        prefix: str = "ch18", weighting: str = "elbo"):
    """Chapter 18's models, load-or-train: chapter 9's U-Net and budget (`ddpm_settings`:
    preset, T, updates, batch, Adam with the same warm-up, clipping and EMA), told the noise
    level gamma instead of a step (`vdm.StepAdapter.linear`: its T steps evenly spaced in
    gamma over VDM_STEPS_RANGE, the nearest step taken), trained in continuous time on
    one of two objectives, each in bits per dimension:

    weighting="elbo": VDM, the whole bound (`vdm.vdm_bound`: prior, continuous-time diffusion
    loss, discretized reconstruction of the 8-bit digits) with a `vdm.LearnedSchedule`
    (hidden width 64, started at VDM's ends -13.3 and 5.0): the network and the schedule's
    ends follow the bound, its interior the variance of the estimate (the variance trick,
    in bits per dimension).

    weighting="sigmoid": Kingma and Gao's weighted loss (`vdm.weighted_loss`) with
    `vdm.sigmoid_weighting` (bias 2), a monotone weighting, the levels drawn by the fixed
    `vdm.CosineSchedule` with VDM's ends.

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (multiples of 1/255, on `device`); the
            model sees them as the 256 levels on [-1, 1].
        profile: the Profile whose sizes, epochs and batch size it uses (`get_profile()`).
        device: where to train (and where the returned model lives).
        steps: None (default) for the profile's number of updates, or train only this
            many (an early checkpoint in its own file, as in `ddpm`).
        resume_from: an early checkpoint of the same recipe to continue from when this
            run's own file does not exist yet (as in `ddpm`); default None.
        prefix: the checkpoint file's prefix (default "ch18").
        weighting: "elbo" (default) or "sigmoid".

    Returns:
        (a `vdm.DiffusionModel` around the EMA U-Net with its schedule, in eval mode;
        FitResult).
    """
    from . import vdm as V

    if weighting not in VDM_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VDM_WEIGHTINGS}, got {weighting!r}")
    s = ddpm_settings(profile)
    _check_unit_images(x, "recipes.vdm")
    from .run.precision import default_optimizer

    net, _, config, _ = _unet_recipe(
        s, profile, device, x, steps_of_net=s["T"], T=s["T"], weighting=weighting,
        steps_range=list(VDM_STEPS_RANGE),
        loss=("VDM bound, learned schedule, variance trick" if weighting == "elbo" else
              "sigmoid weighting (bias 2), cosine schedule"))
    adapter = V.StepAdapter.linear(net, *VDM_STEPS_RANGE, T=s["T"])
    if weighting == "elbo":
        schedule = V.LearnedSchedule(hidden=64, generator=torch.Generator().manual_seed(0))
    else:
        schedule = V.CosineSchedule()
    model = V.DiffusionModel(adapter, schedule).to(device)
    optimizer = default_optimizer(model.parameters(), s["lr"], device)  # the schedule too
    per_dim = 1 / (28 * 28 * math.log(2))

    def warm_up(step: int) -> None:  # chapter 9's, on this optimizer
        for group in optimizer.param_groups:
            group["lr"] = s["lr"] * min(1.0, (step + 1) / DDPM_WARMUP)

    def loss_fn(model, x11, step):
        warm_up(step)
        if weighting == "elbo":
            bound = V.vdm_bound(model, model.schedule, x11, variance_gradient=True,
                                variance_scale=per_dim)
            return bound.bits_per_dim().mean()
        return per_dim * V.weighted_loss(model, model.schedule, x11,
                                         V.sigmoid_weighting).mean()

    total = s["steps"] if steps is None else steps
    path = vdm_checkpoint(profile, steps, prefix, weighting=weighting)
    x11 = x * 2 - 1
    _continue(path, resume_from, model, config, x11, optimizer, s, total)
    result = fit(model, loss_fn, x11, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, desc=f"VDM ({weighting})"
                 + ("" if steps is None else f", {steps} steps"))
    if smoke_mode():  # the chapter calls the U-Net itself (`vdm_eps_function`): cut it too
        smoke.cut(result.ema.model.eps_model.model)
    return result.ema.model.eval(), result


def vdm_eps_function(model, device, *, precision: str = "float32"):
    """A `vdm.DiffusionModel` of `vdm` as the losses and bounds call it, eps(z (B, ...),
    gamma (B,)), with its U-Net called as `network_function` calls it: at most
    companion.run.memory.MAX_IMAGES images a call, float32 (default: for the bound) or
    mixed precision on a GPU ("mixed": for sampling). No gradients."""
    adapter = _vdm_model(model, "vdm_eps_function").eps_model
    net = network_function(adapter.model, device, precision=precision)

    def eps(z, gamma):
        with torch.no_grad():
            steps = adapter.steps(gamma).round().long().to(z.device)
            return net(z, steps).to(z.dtype)

    return eps


def _vdm_model(model, who: str):
    """model if it is what `vdm` returns: a vdm.DiffusionModel around a StepAdapter."""
    from . import vdm as V

    if not isinstance(model, V.DiffusionModel) or \
            not isinstance(model.eps_model, V.StepAdapter):
        raise checks.ArgumentError(
            f"model must be what recipes.vdm returns, a vdm.DiffusionModel around a "
            f"vdm.StepAdapter (its U-Net and schedule), got {checks._got(model)}"
            + (f" around {type(model.eps_model).__name__}"
               if isinstance(model, V.DiffusionModel) else "") + f": {who} calls its U-Net")
    return model


def vdm_sampler(model, profile, device):
    """Chapter 9's samplers for a model of `vdm`: (Diffusion, eps_fn). The Diffusion is the
    model's schedule as a chain of chapter 9's T steps (`vdm.chain_betas`, step i at
    gamma(i / T)); eps_fn(x, t int64 (B,)) calls the model at gamma(t / T) in mixed
    precision (`vdm_eps_function`), for `Diffusion.sample` and `sample_ddim`."""
    from . import vdm as V
    from .diffusion import Diffusion

    _vdm_model(model, "vdm_sampler")
    device = checks.device("device", device)
    T = ddpm_settings(profile)["T"]
    diffusion = Diffusion(V.chain_betas(model.schedule, T), device=device)
    with torch.no_grad():
        steps = torch.arange(1, T + 1, dtype=torch.float64, device=model.schedule._device())
        gammas = model.schedule(steps / T).float()  # on the schedule's own device
    gammas = gammas.to(device)
    eps = vdm_eps_function(model, device, precision="mixed")

    def eps_fn(x, t):
        return eps(x, gammas[t - 1])

    return diffusion, eps_fn


# --- chapter 19: discrete latents ---------------------------------------------------------------
VQ_K, VQ_D, VQ_LEVELS, VQ_RESTART_AFTER = 64, 16, (4, 4, 4), 20
# floating-point operations of a training step, per image, chapter 11's autoencoder over the
# VQ-VAE's (torch.utils.flop_counter, forward and backward: 30.65 and 23.38 MFLOP)
VQ_COST_RATIO = 1.31
VQ_VARIANTS = ("plain", "ema", "restart", "fsq")
PRIOR_KINDS = ("masked", "autoregressive")


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
    """
    s = latent_settings(profile)
    return dict(
        K=VQ_K, D=VQ_D, levels=VQ_LEVELS, beta=0.25, decay=0.99,
        restart_after=VQ_RESTART_AFTER, epochs_11=s["vae_epochs"],
        batch_size=s["vae_batch"], lr=s["vae_lr"],
        width=64, depth=2, heads=4, schedule=MASKED_SCHEDULE,
        steps=s["steps"], prior_batch=32, prior_lr=s["lr"], clip=s["clip"], ema=s["ema"],
    )


def vq_steps(profile, n_train: int) -> int:
    """The VQ-VAEs' updates on n_train digits: VQ_COST_RATIO times those of chapter 11's
    autoencoder (its epochs of batches of 64), so that the two train with the same
    floating-point operations."""
    s = vq_settings(profile)
    n_train = checks.count("n_train (the training digits)", n_train)
    return round(VQ_COST_RATIO * s["epochs_11"] * math.ceil(n_train / s["batch_size"]))


def _vq_model(s: dict, variant: str):
    """The untrained autoencoder of `variant` under the settings `s` (`vq_settings`)."""
    from .models.vqvae import VQVAE

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
    from .models.vqvae import VQLoss

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
    of their updates (`snapshots` of `code_prior`). Returns (the chosen variant, {kind:
    {updates: (model, FitResult)}})."""
    trained = {v: vqvae(x, profile, device, variant=v, prefix=prefix) for v in VQ_VARIANTS}
    chosen = chosen_variant({v: run for v, (_, run) in trained.items()})
    total = vq_settings(profile)["steps"]
    return chosen, {kind: snapshots(code_prior, code_prior_checkpoint, x, profile, device,
                                    total=total, vq=trained[chosen][0], variant=chosen,
                                    kind=kind, prefix=prefix)
                    for kind in PRIOR_KINDS}


def code_prior_checkpoint(profile, steps: int | None = None, prefix: str = "ch19", *,
                          variant: str = "fsq", kind: str = "masked", **_):
    """The checkpoint file of a prior over `variant`'s codes trained for `steps` (None: the
    full run); other keywords (those `snapshots` passes to `code_prior`) are ignored."""
    checks.one_of("variant", variant, VQ_VARIANTS, " (the autoencoder the prior models)")
    checks.one_of("kind", kind, PRIOR_KINDS)
    name = f"{_prefix(prefix)}-{kind}-prior-{variant}"
    return checkpoint_path(_at_steps(name, steps), profile)


def code_prior(x, profile, device, *, vq, variant: str, kind: str = "masked",
               steps: int | None = None, resume_from=None, prefix: str = "ch19"):
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

    Returns:
        (EMA model in eval mode, FitResult).
    """
    from . import masked
    from .data import binarize
    from .latent_diffusion import codec_fingerprint
    from .models.code_prior import ARPrior, CodeDenoiser
    from .models.vqvae import VQVAE
    from .run.precision import default_optimizer

    if kind not in PRIOR_KINDS:
        raise ValueError(f"kind must be one of {PRIOR_KINDS}, got {kind!r}")
    if variant not in VQ_VARIANTS:
        raise ValueError(f"variant must be one of {VQ_VARIANTS}, got {variant!r}")
    s = vq_settings(profile)
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

    total = s["steps"] if steps is None else steps
    path = code_prior_checkpoint(profile, steps, prefix, variant=variant, kind=kind)
    _continue(path, resume_from, model, config, x, optimizer,
              {"ema": s["ema"], "batch_size": s["prior_batch"]}, total)
    result = fit(model, loss_fn, x, steps=total, batch_size=s["prior_batch"],
                 optimizer=optimizer, clip=s["clip"], ema=s["ema"], checkpoint=path,
                 config=config, desc=f"{kind} prior"
                 + ("" if steps is None else f" ({steps} steps)"))
    return result.ema.model.eval(), result


# --- chapter 21: transformers and text ------------------------------------------------------
DIT_SIZES = ("S", "M", "L")


def dit_sizes(profile) -> dict:
    """The three transformers' width, depth and heads at patch 4 (49 tokens) in `profile`.

    ci and cpu: 3.2, 9.8 and 22 MFLOPs an image (43k to 318k weights), a sixth of chapter
    9's cpu U-Net and less. gpu: about 80, 270 and 950 MFLOPs, the largest a third of the
    gpu U-Net's 3.19 GFLOPs, so that at equal training FLOPs the U-Net trains for about as
    many updates as chapter 9 gives it.
    """
    small = _profile(profile).name != "gpu"
    return {"S": dict(width=32, depth=2, heads=2) if small else dict(width=128, depth=4,
                                                                      heads=4),
            "M": dict(width=48, depth=3, heads=3) if small else dict(width=192, depth=6,
                                                                      heads=6),
            "L": dict(width=64, depth=4, heads=4) if small else dict(width=256, depth=12,
                                                                      heads=8)}
CAPTION_P_UNCOND = COND_P_UNCOND  # the whole caption dropped this often (guidance)
ATTRIBUTE_P_DROP = 0.3  # each attribute's words dropped this often: "a seven" means any


def dit_settings(profile) -> dict:
    """Chapter 21's recipe per profile: chapter 9's diffusion (T = 100 / 500 / 1000), the
    DiTs' updates, batch, learning rate and EMA. The U-Net it is compared with trains for the
    updates that give it the largest DiT's training FLOPs (`equal_flops_steps`).

    ci: 60 updates of 32 (a pipeline check). cpu: 2,000 updates of 64 at lr 1e-3 with
    chapter 9's warm-up and clipping. gpu: 20,000 updates of 128 at lr 3e-4.

    The U-Nets that read captions (`CaptionUNet`) start from chapter 9's trained network and
    train caption_steps updates (ci 30, cpu 600, gpu 3,000) at caption_lr, with the DiTs'
    batch and EMA: on 2 cores (cpu) about 2.5 minutes each, where the cross-attention one
    obeys the digit's word in about two thirds of 200 test captions (a tenth before).
    """
    p = _profile(profile)
    return dict(T=ddpm_settings(profile)["T"], steps=p.pick(ci=60, cpu=2000, gpu=20000),
                batch_size=p.pick(ci=32, cpu=64, gpu=128),
                lr=p.pick(ci=2e-3, cpu=1e-3, gpu=3e-4),
                ema=p.pick(ci=0.99, cpu=0.995, gpu=0.999),
                unet_lr=ddpm_settings(profile)["lr"],
                caption_steps=p.pick(ci=30, cpu=600, gpu=3000),
                caption_lr=p.pick(ci=1e-3, cpu=1e-3, gpu=2e-4))


def ch21_network(network: str, cond: str, profile):
    """The untrained network: "unet" (the profile's chapter 9 preset) class-conditional as in
    chapter 16 (cond="label") or reading captions (`CaptionUNet`, cond "pooled",
    "in_context" or "cross"), or "dit-S" / "dit-M" / "dit-L" conditioned on the label or on
    captions ("adaln", "in_context", "cross"), for chapter 9's diffusion of the profile."""
    from . import captions
    from .models.caption_unet import CONDS, CaptionUNet
    from .models.dit import DiT
    from .models.unet import UNet, preset

    T = ddpm_settings(profile)["T"]
    if cond not in ("label", "adaln", "in_context", "cross", "pooled"):
        raise checks.ArgumentError(f"cond must be 'label', 'adaln', 'in_context', 'cross' or "
                                   f"'pooled', got {cond!r}")
    if network == "unet":
        config = preset(ddpm_settings(profile)["preset"], T=T)
        if cond == "label":
            return UNet(config, num_classes=10)
        if cond not in CONDS:
            raise checks.ArgumentError(f"the U-Net reads a caption as one of {CONDS} (or the "
                                       f"label, cond='label'), got {cond!r}")
        return CaptionUNet(config, vocab_size=len(captions.VOCAB), cond=cond)
    if cond == "pooled":
        raise checks.ArgumentError("a DiT pools the caption with cond='adaln'")
    size = network.removeprefix("dit-") if isinstance(network, str) else None
    if not isinstance(network, str) or not network.startswith("dit-") or size not in DIT_SIZES:
        raise checks.ArgumentError(f"network must be 'unet' or one of "
                                   f"{[f'dit-{s}' for s in DIT_SIZES]}, got {network!r}")
    shape = dit_sizes(profile)[size]
    if cond == "label":
        return DiT(**shape, T=T, num_classes=10)
    return DiT(**shape, T=T, vocab_size=len(captions.VOCAB), cond=cond, text_length=8)


def network_flops(network: str, profile, cond: str = "label") -> float:
    """Forward FLOPs for one image of chapter 21's `network` in `profile` (torch.utils.
    flop_counter, attention counted explicitly; a multiply-add is 2 FLOPs)."""
    return _network_flops(network, _profile(profile).name, cond)


@functools.cache
def _network_flops(network: str, profile_name: str, cond: str) -> float:
    from .models import dit, unet
    from .run.profiles import get_profile

    model = ch21_network(network, cond, get_profile(profile_name))
    return (unet.flops_per_image(model) if network == "unet" else dit.flops_per_image(model))


def equal_flops_steps(steps: int, network: str, profile, to: str = "dit-L") -> int:
    """The updates (same batch) that give `network` the training FLOPs of `steps` updates of
    `to`: training costs about 3 forward passes an image for any network, so the ratio of
    forward FLOPs sets it."""
    ratio = network_flops(to, profile) / network_flops(network, profile)
    return max(1, round(checks.count("steps", steps) * ratio))


def ch21_updates(network: str, profile, cond: str = "label") -> int:
    """The updates of chapter 21's full run of `network`: the profile's DiT updates; for the
    label-conditioned U-Net those of equal training FLOPs to the largest DiT
    (`equal_flops_steps`); for a U-Net reading captions, caption_steps from chapter 9's."""
    s = dit_settings(profile)
    if network != "unet":
        return s["steps"]
    return equal_flops_steps(s["steps"], "unet", profile) if cond == "label" \
        else s["caption_steps"]


def text_levels(x):
    """The caption levels of training images x (N, 1, 28, 28) in [0, 1]: attributes measured
    (`captions.measure`), cut at their tertiles on x: (Levels, {attribute: (N,) 0..2})."""
    from . import captions

    attributes = captions.measure(x)
    levels = captions.Levels.fit(attributes)
    return levels, levels.of(attributes)


def caption_batch(labels, level: dict, *, p_drop: float = ATTRIBUTE_P_DROP,
                  p_uncond: float = CAPTION_P_UNCOND, length: int = 8) -> torch.Tensor:
    """Token ids (B, length) of a training batch's captions: each attribute's words dropped
    with probability p_drop, the whole caption with p_uncond (the empty caption, guidance's
    unconditional half), drawn from torch's global generator (a resumed run redraws alike)."""
    from . import captions

    B = len(labels)
    keep = {a: torch.rand(B) >= p_drop for a in captions.ATTRIBUTES}
    texts = captions.caption(labels.cpu(), {a: v.cpu() for a, v in level.items()}, keep)
    dropped = (torch.rand(B) < p_uncond).tolist()
    texts = [captions.UNCONDITIONAL if d else t for t, d in zip(texts, dropped, strict=True)]
    return captions.tokenize(texts, length).to(labels.device)


def ch21_checkpoint(profile, steps: int | None = None, prefix: str = "ch21", *,
                    network: str = "dit-M", cond: str = "label"):
    """The checkpoint file of chapter 21's `network` with `cond`, trained for `steps`."""
    return checkpoint_path(_at_steps(f"{_prefix(prefix)}-{network}-{cond}", steps), profile)


def ch21_model(x, labels, profile, device, *, network: str = "dit-M", cond: str = "label",
               steps: int | None = None, resume_from=None, prefix: str = "ch21"):
    """Chapter 21's noise predictors, load-or-train: chapter 9's diffusion and loss
    (L_simple on [-1, 1]), Adam with its warm-up, clipping and EMA, conditioned on the label
    (dropped with COND_P_UNCOND) or on captions (attributes dropped with ATTRIBUTE_P_DROP,
    the caption with CAPTION_P_UNCOND; `caption_batch`).

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`).
        labels: (N,) their digits.
        network: "unet", "dit-S", "dit-M" or "dit-L".
        cond: "label", or captions: for a DiT "adaln", "in_context" or "cross"; for the
            U-Net "pooled", "in_context" or "cross" (`CaptionUNet`, started from chapter
            9's trained network, `ddpm`, whose checkpoint it loads or trains).
        steps: None (the profile's updates, `ch21_updates`) or fewer (an early checkpoint
            in its own file).
        resume_from: an early checkpoint of the same run to continue from.
        prefix: the checkpoint file's prefix.

    Returns:
        (EMA model in eval mode, FitResult).
    """
    from .latent_diffusion import drop_labels
    from .run.precision import default_optimizer

    s = dit_settings(profile)
    y = _labelled_images(x, labels, "ch21_model")
    full = ch21_updates(network, profile, cond)
    total = full if steps is None else checks.count("steps", steps)
    captioned_unet = network == "unet" and cond != "label"
    # chapter 9's network starts the run; a resumed stage starts from its early checkpoint
    start = captioned_unet and resume_from is None
    base = ddpm(x, profile, device)[0] if start else None
    torch.manual_seed(0)
    model = ch21_network(network, cond, profile).to(device)
    if start:
        from .models.caption_unet import load_unet
        load_unet(model, base)
    lr = s["caption_lr"] if captioned_unet else s["unet_lr"] if network == "unet" \
        else s["lr"]
    optimizer = default_optimizer(model.parameters(), lr, device)
    warm_up = _warm_up(optimizer, lr)
    config = dict(profile=profile.name, network=network, cond=cond, T=s["T"], lr=lr,
                  batch_size=s["batch_size"], ema=s["ema"], clip=DDPM_CLIP,
                  warmup=DDPM_WARMUP, n_train=len(x), total=full,
                  p_uncond=CAPTION_P_UNCOND if cond != "label" else COND_P_UNCOND,
                  p_drop=ATTRIBUTE_P_DROP if cond != "label" else 0.0,
                  init="ch9" if captioned_unet else "random")
    diffusion = ddpm_diffusion(profile, device)
    data = (x * 2 - 1, y)
    if cond != "label":
        _, level = text_levels(x)
        data = (*data, *(level[a].to(x.device) for a in sorted(level)))

    def loss_fn(model, batch, step):
        warm_up(step)
        x0, yb = batch[0], batch[1]
        if cond == "label":
            c = drop_labels(yb, COND_P_UNCOND)
        else:
            c = caption_batch(yb, dict(zip(sorted(level), batch[2:], strict=True)))

        def eps(z, t):
            return model(z, t, c)

        eps.config = model.config
        return diffusion.simple_loss(eps, x0)

    path = ch21_checkpoint(profile, steps, prefix, network=network, cond=cond)
    _continue(path, resume_from, model, config, data, optimizer, s, total)
    result = fit(model, loss_fn, data, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc=f"{network} ({cond})" + ("" if steps is None else f", {steps} steps"))
    return result.ema.model.eval(), result


def ch21_snapshots(x, labels, profile, device, *, network: str, cond: str = "label",
                   fractions=(0.25, 0.5), prefix: str = "ch21") -> dict:
    """One run of `ch21_model` kept at fractions of its updates, {updates: (model,
    FitResult)}, each stage resumed from the one before (as `snapshots` does for the other
    recipes): the budget trend of chapter 21's comparisons, at no extra training."""
    def recipe(x, profile, device, **stage):
        return ch21_model(x, labels, profile, device, network=network, cond=cond,
                          prefix=prefix, **stage)

    def checkpoint(profile, steps):
        return ch21_checkpoint(profile, steps, prefix, network=network, cond=cond)

    return snapshots(recipe, checkpoint, x, profile, device, fractions=fractions,
                     total=ch21_updates(network, profile, cond))


def ch21_eps_function(model, condition: torch.Tensor, w: float, device):
    """Classifier-free guidance of chapter 21's networks for the samplers, under the device's
    mixed precision: (x (B, 1, 28, 28), t (B,)) -> float32

        (1 + w) eps(x, t, c) - w eps(x, t, none),

    c = condition: labels (B,) (none: NO_LABEL) or caption tokens (B, L) (none: the empty
    caption, all pads). w = 0 is the conditional network alone (one call, not two).
    Book: :eq:`ch21-cfg`."""
    from .latent_diffusion import check_weight
    from .models.unet import NO_LABEL
    from .run.precision import autocast_dtype

    w = check_weight(w)
    c = condition.to(next(model.parameters()).device)
    none = torch.full_like(c, NO_LABEL) if c.dim() == 1 else torch.zeros_like(c)
    device_type = torch.device(device).type
    dtype = autocast_dtype(device, model)

    def one(xb, tb, cb, nb):
        if w == 0:
            return model(xb, tb, cb).float()
        cond, uncond = model(torch.cat([xb, xb]), torch.cat([tb, tb]),
                             torch.cat([cb, nb])).float().chunk(2)
        return (1 + w) * cond - w * uncond

    def net(x, t):
        if len(x) != len(c):
            raise checks.ArgumentError(f"ch21_eps_function was built for {len(c)} conditions "
                                       f"but got {len(x)} images: one condition per image")
        with torch.autocast(device_type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            return map_chunks(one, x, t, c, none)

    net.config = model.config
    return net


# --- chapter 22: masked diffusion against an autoregressive model on text ---------------------
LM_KINDS = ("autoregressive", "masked")


def lm_settings(profile) -> dict:
    """Chapter 22's recipe per profile: the toy text's training and test sentences, the
    transformer (one size for both kinds, so that a step costs the same), updates, batch,
    learning rate and EMA.

    ci: a pipeline check. cpu: 20,000 sentences, width 64, depth 3 (14.6 MFLOPs a
    sentence), 1,500 updates of 64: about 2.5 minutes a model on 2 cores. gpu: 100,000
    sentences, width 256, depth 6, 20,000 updates of 256.
    """
    p = _profile(profile)
    return dict(n_train=p.pick(ci=512, cpu=20_000, gpu=100_000),
                n_test=p.pick(ci=64, cpu=1_000, gpu=5_000),
                width=p.pick(ci=32, cpu=64, gpu=256), depth=p.pick(ci=2, cpu=3, gpu=6),
                heads=4, steps=p.pick(ci=40, cpu=1_500, gpu=20_000),
                batch_size=p.pick(ci=32, cpu=64, gpu=256),
                lr=p.pick(ci=2e-3, cpu=1e-3, gpu=3e-4),
                ema=p.pick(ci=0.99, cpu=0.995, gpu=0.999))


def toy_text(profile) -> dict:
    """The toy English of `companion.language` as chapter 22 trains on it: sentences drawn
    with seed 0 (training) and seed 1 (test; the language is finite, so a test sentence may
    also be a training one, as in any text), one sentence a sequence, padded to the longest
    sentence the grammar writes.

    Returns {"grammar", "tokenizer", "train" (N, L) long, "test" (M, L) long,
    "test_sentences" (M strings), "characters" (the test sentences' characters, the
    denominator of bits per character)}.
    """
    from . import language

    s = lm_settings(profile)
    grammar = language.toy_grammar()
    tokenizer = language.CharTokenizer(grammar.alphabet)
    length = grammar.max_characters()
    train = grammar.sample(s["n_train"], torch.Generator().manual_seed(0))
    test = grammar.sample(s["n_test"], torch.Generator().manual_seed(1))
    return {"grammar": grammar, "tokenizer": tokenizer,
            "train": tokenizer.encode(train, length), "test": tokenizer.encode(test, length),
            "test_sentences": test, "characters": sum(len(t) for t in test)}


ENGLISH_LENGTH = 32  # characters a window: chapter 22's real text, a little under a sentence


def english_windows(profile, length: int = ENGLISH_LENGTH, download: bool | None = None
                    ) -> dict:
    """Chapter 22's real English (`language.english_text`: the Python documentation's help
    topics offline, Tiny Shakespeare where downloads are allowed), cut once at 90%: as many
    training windows of `length` characters as the toy's training sentences, at random
    offsets in the first part (seed 0), and up to the toy's test count of windows end to end
    in the last part, which no training window touches.

    Returns {"tokenizer", "train" (N, length) long, "test" (M, length) long, "source" (in
    words), "prefix" (the checkpoints' name, one per source and Python release),
    "characters"}.
    """
    import platform

    from . import language

    s = lm_settings(profile)
    length = checks.count("length (characters a window)", length, 2)
    text, source = language.english_text(download)
    cut = int(0.9 * len(text))
    if len(text) - cut < length:
        raise checks.ArgumentError(f"the text has {len(text):,} characters: too few for a "
                                   f"held-out window of {length}")
    tokenizer = language.CharTokenizer(language.ENGLISH_ALPHABET)
    ids = tokenizer.encode([text], len(text))[0]
    starts = torch.randint(0, cut - length + 1, (s["n_train"],),
                           generator=torch.Generator().manual_seed(0))
    train = ids[starts[:, None] + torch.arange(length)]
    test = ids[cut:].unfold(0, length, length)[:s["n_test"]].clone()
    # each Python release ships its own help topics: a checkpoint trained on another's
    # (a cache made under 3.11, read under Colab's 3.13) would not load
    prefix = ("ch22-shakespeare" if source.startswith("Tiny Shakespeare")
              else f"ch22-pydocs-py{platform.python_version()}")
    return {"tokenizer": tokenizer, "train": train, "test": test, "source": source,
            "prefix": prefix, "characters": test.numel()}


def _lm_kind(kind) -> str:
    if kind not in LM_KINDS:
        raise checks.ArgumentError(f"kind must be one of {LM_KINDS}, got {kind!r}")
    return kind


def lm_network(kind: str, profile, vocab_size: int, length: int):
    """The untrained transformer of `kind`: "masked" (bidirectional, the masked diffusion
    denoiser) or "autoregressive" (the same network with a causal mask)."""
    from .models.text_transformer import TextTransformer

    s = lm_settings(profile)
    return TextTransformer(vocab_size=vocab_size, length=length, width=s["width"],
                           depth=s["depth"], heads=s["heads"],
                           causal=_lm_kind(kind) == "autoregressive")


def lm_checkpoint(profile, steps: int | None = None, prefix: str = "ch22", *,
                  kind: str = "masked"):
    """The checkpoint file of chapter 22's model of `kind` trained for `steps`."""
    return checkpoint_path(_at_steps(f"{_prefix(prefix)}-{_lm_kind(kind)}", steps), profile)


def lm_model(x, vocab_size: int, profile, device, *, kind: str = "masked",
             steps: int | None = None, resume_from=None, prefix: str = "ch22"):
    """Chapter 22's language models, load-or-train on token sequences x (N, L): the masked
    diffusion model on chapter 14's bound (`masked.loss` with categories = vocab_size,
    nats a sequence), or the autoregressive model on its exact negative log-likelihood
    (`ar_nll`); Adam, gradients clipped at 1, EMA. Same network, batch and updates for both.

    Returns (EMA model in eval mode, FitResult).
    """
    from . import masked
    from .models.text_transformer import ar_nll
    from .run.precision import default_optimizer

    s = lm_settings(profile)
    x = checks.tensor("x (token sequences (N, L))", x)
    if x.dim() != 2 or x.is_floating_point() or len(x) < 1:
        raise checks.ArgumentError(f"x must be token ids (N, L), an integer tensor, got "
                                   f"{x.dtype} of shape {tuple(x.shape)}")
    vocab_size = checks.count("vocab_size", vocab_size, 2)
    total = s["steps"] if steps is None else checks.count("steps", steps)
    torch.manual_seed(0)
    model = lm_network(kind, profile, vocab_size, x.shape[1]).to(device)
    optimizer = default_optimizer(model.parameters(), s["lr"], device)
    config = dict(profile=profile.name, kind=kind, vocab_size=vocab_size, length=x.shape[1],
                  lr=s["lr"], batch_size=s["batch_size"], ema=s["ema"], clip=1.0,
                  n_train=len(x), total=s["steps"])

    def loss_fn(model, batch):
        if kind == "autoregressive":
            return ar_nll(model, batch).mean()
        return masked.loss(model, batch, categories=vocab_size)

    path = lm_checkpoint(profile, steps, prefix, kind=kind)
    _continue(path, resume_from, model, config, x, optimizer, s, total)
    result = fit(model, loss_fn, x, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=1.0, ema=s["ema"], checkpoint=path, config=config,
                 desc=f"{kind}" + ("" if steps is None else f", {steps} steps"))
    return result.ema.model.eval(), result


def lm_snapshots(x, vocab_size: int, profile, device, *, kind: str,
                 fractions=(0.25, 0.5), prefix: str = "ch22") -> dict:
    """One run of `lm_model` kept at fractions of its updates, {updates: (model,
    FitResult)}: chapter 22's budget trend at no extra training."""
    def recipe(x, profile, device, **stage):
        return lm_model(x, vocab_size, profile, device, kind=kind, prefix=prefix, **stage)

    def checkpoint(profile, steps):
        return lm_checkpoint(profile, steps, prefix, kind=kind)

    return snapshots(recipe, checkpoint, x, profile, device, fractions=fractions,
                     total=lm_settings(profile)["steps"])


@torch.no_grad()
def lm_bits(model, x, *, n_t: int = 32, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Bits of each sequence of x (B, L) under `model`: the autoregressive model's exact
    -log2 p(x), or the masked diffusion model's bound (chapter 14's, by stratified Monte
    Carlo over n_t times), an upper bound on its -log2 p(x). Divide their sum by the
    sequences' characters for bits per character."""
    from . import masked
    from .models.text_transformer import TextTransformer, ar_nll

    if not isinstance(model, TextTransformer):
        raise checks.ArgumentError("model must be one of chapter 22's TextTransformers "
                                   f"(lm_model), got {checks._got(model)}")
    nats = (ar_nll(model, x) if model.config.causal else
            masked.negative_elbo(model, x, n_t=n_t, categories=model.config.vocab_size,
                                 generator=generator))
    return nats / math.log(2)
