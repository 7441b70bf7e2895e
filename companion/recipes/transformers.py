"""Transformers and captions (chapter 21): the DiTs against chapter 9's U-Net,
conditioned on the label or on captions."""

from __future__ import annotations

import functools

import torch

from ..run import checks
from ..run.memory import map_chunks
from ..train import checkpoint_path, fit
from .common import (
    DDPM_CLIP,
    DDPM_WARMUP,
    _at_steps,
    _continue,
    _labelled_images,
    _prefix,
    _profile,
    _warm_up,
)
from .pixel import COND_P_UNCOND, ddpm, ddpm_diffusion, ddpm_settings, snapshots

# --- chapter 21: transformers and text ------------------------------------------------------
DIT_SIZES = ("S", "M", "L")
DIT_PATCH = 4  # "dit-L" is DiT-L/4; "dit-L/2" cuts the image into 2x2 patches (196 tokens)


def dit_sizes(profile) -> dict:
    """The three transformers' width, depth and heads at patch 4 (49 tokens) in `profile`.

    ci and cpu: 3.2, 9.8 and 22 MFLOPs an image (43k to 318k weights), a sixth of chapter
    9's cpu U-Net and less. gpu: about 80, 270 and 950 MFLOPs; DiT-L at patch 2, the one
    the U-Net is matched to, 4.18 GFLOPs against the gpu U-Net's 3.19, so that at equal
    training FLOPs the U-Net trains 5,894 updates, near chapter 9's 6,000.
    """
    small = _profile(profile).name != "gpu"
    return {"S": dict(width=32, depth=2, heads=2) if small else dict(width=128, depth=4,
                                                                      heads=4),
            "M": dict(width=48, depth=3, heads=3) if small else dict(width=192, depth=6,
                                                                      heads=6),
            "L": dict(width=64, depth=4, heads=4) if small else dict(width=256, depth=12,
                                                                      heads=8)}
CAPTION_P_UNCOND = COND_P_UNCOND  # the whole caption dropped this often (guidance)
# the label DiTs' longer run, in multiples of their budget: twice the U-Net's training FLOPs
DIT_LONGER = 2
ATTRIBUTE_P_DROP = 0.3  # each attribute's words dropped this often: "a seven" means any


def dit_settings(profile) -> dict:
    """Chapter 21's recipe per profile: chapter 9's diffusion (T = 100 / 500 / 1000), the
    DiTs' updates, batch, learning rate and EMA. The U-Net it is compared with trains for the
    updates that give it the largest DiT's training FLOPs (`equal_flops_steps`).

    ci: 60 updates of 32 (a pipeline check). cpu: 4,500 updates of 64 (the book's pixel
    budget, chapter 9's) at lr 4e-3 with chapter 9's warm-up and clipping: DiT-L/2's lowest
    validation loss at the full budget (0.0281 at 4e-3; at 8e-3 the run blew up in its
    last 250 updates, 0.172, and at 1.6e-2, the best of a 2,000-update sweep, two of
    three seeds blew up and one never recovered; benchmarks/README.md). DiT-L/4's own sweep
    at the full budget found 4e-3 and 8e-3 level (0.0306, 0.0305). gpu: 4,500 updates of
    128, as many images as the cpu longer run (576,000), whose DiT-L/2 read the asked
    label 0.875 of the time: three seeds of each network then cost the chapter ~37 min of
    GPU work at an H100's rates (tools/gpu_cost.py; more on a T4). lr 1e-3: the cpu rate
    times 64 / 256, a heuristic after muP's 1/width rule for Adam on hidden weights (Yang
    et al. 2022; this DiT is not muP-parametrized, and depth, batch and data change too):
    untried.
    unet_matches: the DiT whose training FLOPs the U-Net is given, DiT-L/2, whose FLOPs an
    image are near the U-Net's own (cpu: 117 against 145 MFLOPs).

    The networks that read captions start from one that draws digits (the U-Nets,
    `CaptionUNet`, from chapter 9's; a DiT from itself trained on labels) and train
    caption_steps updates (ci 30, cpu 600, gpu 3,000) at caption_lr, with the DiTs'
    batch and EMA: on 2 cores (cpu) about 2.5 minutes each, where the cross-attention one
    obeys the digit's word in about two thirds of 200 test captions (a tenth before).

    long_steps: a label DiT's longer run (`ch21_model(..., long=True)`, seed 0 on the
    page), DIT_LONGER times its updates. A pilot on 2 cores (tools/pilot.py, one seed):
    DiT-L/2's samples carried the asked label 0.77 of the time at 4,500 updates and 0.875
    at 9,000, at 2.15 and 1.24 times the floor of real digits (benchmarks/README.md).
    """
    p = _profile(profile)
    steps = p.pick(ci=60, cpu=4500, gpu=4500)
    return dict(T=ddpm_settings(profile)["T"], steps=steps,
                batch_size=p.pick(ci=32, cpu=64, gpu=128),
                lr=p.pick(ci=2e-3, cpu=4e-3, gpu=1e-3),
                ema=p.pick(ci=0.99, cpu=0.995, gpu=0.999),
                unet_lr=ddpm_settings(profile)["lr"], unet_matches="dit-L/2",
                caption_steps=p.pick(ci=30, cpu=600, gpu=3000),
                caption_lr=p.pick(ci=1e-3, cpu=1e-3, gpu=2e-4),
                long_steps=DIT_LONGER * steps)


def ch21_network(network: str, cond: str, profile):
    """The untrained network: "unet" (the profile's chapter 9 preset) class-conditional as in
    chapter 16 (cond="label") or reading captions (`CaptionUNet`, cond "pooled",
    "in_context" or "cross"), or "dit-S" / "dit-M" / "dit-L" conditioned on the label or on
    captions ("adaln", "in_context", "cross"), for chapter 9's diffusion of the profile."""
    from .. import captions
    from ..models.caption_unet import CaptionUNet
    from ..models.dit import DiT
    from ..models.unet import UNet, preset

    T = ddpm_settings(profile)["T"]
    size = ch21_kind(network, cond)
    if network == "unet":
        config = preset(ddpm_settings(profile)["preset"], T=T)
        if cond == "label":
            return UNet(config, num_classes=10)
        return CaptionUNet(config, vocab_size=len(captions.VOCAB), cond=cond)
    shape = {**dit_sizes(profile)[size], "patch": dit_patch(network)}
    if cond == "label":
        return DiT(**shape, T=T, num_classes=10)
    # the caption U-Nets' text encoder: two layers, at the network's width
    return DiT(**shape, T=T, vocab_size=len(captions.VOCAB), cond=cond, text_length=8,
               text_depth=2)


def dit_patch(network: str) -> int:
    """The patch of a DiT named "dit-L" (DIT_PATCH) or "dit-L/2" (2), as DiT names them."""
    _, _, p = network.partition("/")
    return int(p) if p else DIT_PATCH


def ch21_kind(network, cond) -> str | None:
    """Check that `network` reads the condition `cond` (nothing built, nothing trained):
    "unet" with "label" or a caption way of `CaptionUNet` ("pooled", "in_context",
    "cross"); "dit-S", "dit-M" or "dit-L" with "label", "adaln", "in_context" or "cross".
    Returns the DiT's size ("S", "M", "L"), None for the U-Net."""
    from ..models.caption_unet import CONDS

    if cond not in ("label", "adaln", "in_context", "cross", "pooled"):
        raise checks.ArgumentError(f"cond must be 'label', 'adaln', 'in_context', 'cross' or "
                                   f"'pooled', got {cond!r}")
    if network == "unet":
        if cond != "label" and cond not in CONDS:
            raise checks.ArgumentError(f"the U-Net reads a caption as one of {CONDS} (or the "
                                       f"label, cond='label'), got cond={cond!r}: a DiT "
                                       "reads it with 'adaln'")
        return None
    name, slash, patch = network.partition("/") if isinstance(network, str) else ("", "", "")
    size = name.removeprefix("dit-")
    if not name.startswith("dit-") or size not in DIT_SIZES or (
            slash and patch not in ("2", "4", "7")):
        raise checks.ArgumentError(f"network must be 'unet' or one of "
                                   f"{[f'dit-{s}' for s in DIT_SIZES]}, with a patch "
                                   f"(2, 4 or 7) as DiT writes it ('dit-L/2'), got "
                                   f"{network!r}")
    if cond == "pooled":
        raise checks.ArgumentError("a DiT pools the caption with cond='adaln', not "
                                   "cond='pooled' (the U-Net's name for it)")
    return size


def network_flops(network: str, profile, cond: str = "label") -> float:
    """Forward FLOPs for one image of chapter 21's `network` in `profile` (torch.utils.
    flop_counter, attention counted explicitly; a multiply-add is 2 FLOPs)."""
    return _network_flops(network, _profile(profile).name, cond)


@functools.cache
def _network_flops(network: str, profile_name: str, cond: str) -> float:
    from ..models import dit, unet
    from ..run.profiles import get_profile

    model = ch21_network(network, cond, get_profile(profile_name))
    return (unet.flops_per_image(model) if network == "unet" else dit.flops_per_image(model))


def equal_flops_steps(steps: int, network: str, profile, to: str = "dit-L") -> int:
    """The updates (same batch) that give `network` the training FLOPs of `steps` updates of
    `to`: training costs about 3 forward passes an image for any network, so the ratio of
    forward FLOPs sets it."""
    ratio = network_flops(to, profile) / network_flops(network, profile)
    return max(1, round(checks.count("steps", steps) * ratio))


def ch21_updates(network: str, profile, cond: str = "label", long: bool = False) -> int:
    """The updates of chapter 21's full run of `network`: the profile's DiT updates; for the
    label-conditioned U-Net those of equal training FLOPs to DiT-L/2 (`unet_matches`,
    `equal_flops_steps`); for a network reading captions, caption_steps from its label
    network's (chapter 9's U-Net, or the same DiT trained on labels); a label DiT's longer
    run (`long`), long_steps."""
    s = dit_settings(profile)
    if _long(long, network, cond):
        return s["long_steps"]
    if cond != "label":
        return s["caption_steps"]
    return s["steps"] if network != "unet" else \
        equal_flops_steps(s["steps"], "unet", profile, to=s["unet_matches"])


def text_levels(x):
    """The caption levels of training images x (N, 1, 28, 28) in [0, 1]: attributes measured
    (`captions.measure`), cut at their tertiles on x: (Levels, {attribute: (N,) 0..2})."""
    from .. import captions

    attributes = captions.measure(x)
    levels = captions.Levels.fit(attributes)
    return levels, levels.of(attributes)


def caption_batch(labels, level: dict, *, p_drop: float = ATTRIBUTE_P_DROP,
                  p_uncond: float = CAPTION_P_UNCOND, length: int = 8) -> torch.Tensor:
    """Token ids (B, length) of a training batch's captions: each attribute's words dropped
    with probability p_drop, the whole caption with p_uncond (the empty caption, guidance's
    unconditional half), drawn from torch's global generator (a resumed run redraws alike)."""
    from .. import captions

    # 1.5 dropped every attribute and NaN none, silently (a comparison with NaN is False)
    p_drop = checks.probability("p_drop (each attribute's words dropped this often)", p_drop)
    p_uncond = checks.probability("p_uncond (the whole caption dropped this often)",
                                  p_uncond)
    B = len(labels)
    keep = {a: torch.rand(B) >= p_drop for a in captions.ATTRIBUTES}
    texts = captions.caption(labels.cpu(), {a: v.cpu() for a, v in level.items()}, keep)
    dropped = (torch.rand(B) < p_uncond).tolist()
    texts = [captions.UNCONDITIONAL if d else t for t, d in zip(texts, dropped, strict=True)]
    return captions.tokenize(texts, length).to(labels.device)


def _long(long, network, cond) -> bool:
    """Check `long` (a label DiT's longer run) against the network and condition."""
    if not isinstance(long, bool):
        raise checks.ArgumentError(f"long must be True (the longer run) or False (the "
                                   f"budget), got {long!r}")
    if long and (network == "unet" or cond != "label"):
        raise checks.ArgumentError(f"the longer run (long=True) is for a DiT trained on "
                                   f"labels (network 'dit-L/2' or another DiT, cond "
                                   f"'label'), got network={network!r}, cond={cond!r}")
    return long


def ch21_checkpoint(profile, steps: int | None = None, prefix: str = "ch21", *,
                    network: str = "dit-M", cond: str = "label", seed: int = 0,
                    long: bool = False):
    """The checkpoint file of chapter 21's `network` with `cond`, trained for `steps` from
    `seed` ("dit-L/2" is written dit-L-p2 in the file's name); the longer run's (`long`)
    in files of its own."""
    seed = checks.count("seed", seed, 0)
    name = (f"{_prefix(prefix)}-{network.replace('/', '-p')}-{cond}"
            + ("-long" if _long(long, network, cond) else ""))
    return checkpoint_path(_at_steps(name + (f"-seed{seed}" if seed else ""), steps),
                           profile)


def ch21_model(x, labels, profile, device, *, network: str = "dit-M", cond: str = "label",
               steps: int | None = None, resume_from=None, prefix: str = "ch21",
               seed: int = 0, long: bool = False):
    """Chapter 21's noise predictors, load-or-train: chapter 9's diffusion and loss
    (L_simple on [-1, 1]), Adam with its warm-up, clipping and EMA, conditioned on the label
    (dropped with COND_P_UNCOND) or on captions (attributes dropped with ATTRIBUTE_P_DROP,
    the caption with CAPTION_P_UNCOND; `caption_batch`).

    Args:
        x: (N, 1, 28, 28) training images in [0, 1] (on `device`).
        labels: (N,) their digits.
        network: "unet", or "dit-S", "dit-M" or "dit-L" at patch 4, or with another
            patch as DiT names them ("dit-L/2").
        cond: "label", or captions: for a DiT "adaln", "in_context" or "cross", started
            from the same DiT trained on labels (this recipe with cond="label",
            `load_label_dit`); for the U-Net "pooled", "in_context" or "cross"
            (`CaptionUNet`, started from chapter 9's trained network, `ddpm`). The
            network they start from is loaded or trained first.
        steps: None (the profile's updates, `ch21_updates`) or fewer (an early checkpoint
            in its own file); more are refused before anything trains.
        resume_from: an early checkpoint of the same run to continue from.
        prefix: the checkpoint file's prefix.
        seed: the network's initialization and the run's draws (seeds other than 0 in
            their own files).
        long: False (default) for the budget, True for a label DiT's longer run of
            `dit_settings`' long_steps updates, in files of its own (the same recipe and
            seed: only the count of updates differs).

    Returns:
        (EMA model in eval mode, FitResult).
    """
    from ..latent_diffusion import drop_labels
    from ..run.precision import default_optimizer

    s = dit_settings(profile)
    ch21_kind(network, cond)  # before chapter 9's network trains (10-15 minutes on a CPU)
    _prefix(prefix)
    y = _labelled_images(x, labels, "ch21_model")
    full = ch21_updates(network, profile, cond, long)
    total = checks.early_steps(steps, full)
    captioned = cond != "label"
    seed = checks.count("seed", seed, 0)
    # a trained network starts the run (chapter 9's U-Net, or this DiT trained on labels);
    # a resumed stage starts from its early checkpoint
    start = captioned and resume_from is None
    if start and network == "unet":
        base = ddpm(x, profile, device)[0]
    elif start:
        base = ch21_model(x, labels, profile, device, network=network, prefix=prefix,
                          seed=seed)[0]
    torch.manual_seed(seed)
    model = ch21_network(network, cond, profile).to(device)
    if start:
        from ..models.caption_unet import load_unet
        from ..models.dit import load_label_dit
        (load_unet if network == "unet" else load_label_dit)(model, base)
    lr = s["caption_lr"] if captioned else s["unet_lr"] if network == "unet" else s["lr"]
    optimizer = default_optimizer(model.parameters(), lr, device)
    warm_up = _warm_up(optimizer, lr)
    config = dict(profile=profile.name, network=network, cond=cond, T=s["T"], lr=lr,
                  batch_size=s["batch_size"], ema=s["ema"], clip=DDPM_CLIP,
                  warmup=DDPM_WARMUP, n_train=len(x), total=full,
                  p_uncond=CAPTION_P_UNCOND if cond != "label" else COND_P_UNCOND,
                  p_drop=ATTRIBUTE_P_DROP if cond != "label" else 0.0,
                  init=("ch9" if network == "unet" else f"{network} label")
                  if captioned else "random")
    if seed:  # seed 0's identity stays what its files were made with
        config["seed"] = seed
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

    path = ch21_checkpoint(profile, steps, prefix, network=network, cond=cond, seed=seed,
                           long=long)
    _continue(path, resume_from, model, config, data, optimizer, s, total)
    result = fit(model, loss_fn, data, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc=f"{network} ({cond})" + ("" if steps is None else f", {steps} steps"))
    return result.ema.model.eval(), result


def ch21_snapshots(x, labels, profile, device, *, network: str, cond: str = "label",
                   fractions=(0.25, 0.5), prefix: str = "ch21", seed: int = 0) -> dict:
    """One run of `ch21_model` kept at fractions of its updates, {updates: (model,
    FitResult)}, each stage resumed from the one before (as `snapshots` does for the other
    recipes): the budget trend of chapter 21's comparisons, at no extra training."""
    def recipe(x, profile, device, **stage):
        return ch21_model(x, labels, profile, device, network=network, cond=cond,
                          prefix=prefix, seed=seed, **stage)

    def checkpoint(profile, steps):
        return ch21_checkpoint(profile, steps, prefix, network=network, cond=cond,
                               seed=seed)

    return snapshots(recipe, checkpoint, x, profile, device, fractions=fractions,
                     total=ch21_updates(network, profile, cond))


def ch21_eps_function(model, condition: torch.Tensor, w: float, device):
    """Classifier-free guidance of chapter 21's networks for the samplers, under the device's
    mixed precision: (x (B, 1, 28, 28), t (B,)) -> float32

        (1 + w) eps(x, t, c) - w eps(x, t, none),

    c = condition: labels (B,) (none: NO_LABEL) or caption tokens (B, L) (none: the empty
    caption, all pads). w = 0 is the conditional network alone (one call, not two).
    Book: :eq:`ch21-cfg`."""
    from ..latent_diffusion import check_weight
    from ..models.unet import NO_LABEL
    from ..run.precision import autocast_dtype

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
