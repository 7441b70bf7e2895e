"""The command line: load-or-train one of the book's models outside a notebook.

    python -m companion ddpm --profile gpu
    torchrun --nproc_per_node=4 -m companion ddpm --profile gpu

Each command calls the chapter's recipe (companion.recipes) as the chapter does, so it
trains into the very checkpoint the chapter then loads (BOOK_CACHE decides where).
"""

from __future__ import annotations

import os

from .recipes import (
    classifier,
    consistency_distillation,
    ddpm,
    ddpm_checkpoint,
    ddpm_cond,
    ddpm_settings,
    edm,
    eight_bit_vae,
    flow_matching,
    latent_vae,
    masked_diffusion,
    noisy_classifier,
    progressive_distillation,
    reflow,
    reflow_couplings,
    snapshots,
    vdm,
    vdm_checkpoint,
    vq_priors,
)
from .train import checkpoint_path


def _train_ddpm(data, profile, device):
    """Chapter 9's two runs: the early checkpoint (a tenth of the steps), then the full run
    resumed from it, the very calls of the chapter."""
    early = ddpm_settings(profile)["steps"] // 10
    ddpm(data.x_train, profile, device, steps=early)
    return ddpm(data.x_train, profile, device, resume_from=ddpm_checkpoint(profile, early))


def _train_vdm(weighting, data, profile, device):
    """Chapter 18's run in stages, the very calls of the chapter: a quarter, half and all of
    chapter 9's updates, each resumed from the one before (`recipes.snapshots`)."""
    runs = snapshots(vdm, vdm_checkpoint, data.x_train, profile, device, weighting=weighting)
    return runs[max(runs)]


def _train_fewstep(which, data, profile, device):
    """Chapter 15's students of chapter 13's flow model, the calls of the chapter."""
    teacher, _ = flow_matching(data.x_train, profile, device)
    if which == "reflow":
        pairs, _ = reflow_couplings(teacher, profile, device)
        return reflow(teacher, pairs, profile, device)
    if which == "distill":
        return progressive_distillation(teacher, data.x_train, profile, device)[1]
    return consistency_distillation(teacher, data.x_train, profile, device)


def _train_vq(data, profile, device):
    """Chapter 19's training calls (recipes.vq_priors); returns the masked prior's full run."""
    _, staged = vq_priors(data.x_train, profile, device)
    return staged["masked"][max(staged["masked"])]


COMMANDS = {
    "ddpm": ("chapter 9's DDPM (its early checkpoint, then the full run)", _train_ddpm),
    "classifier": ("chapters 9-12's judge", lambda d, p, dev: classifier(d, p, dev)),
    "vae8": ("chapter 10's 8-bit VAE",
             lambda d, p, dev: eight_bit_vae(d.x_train, p, dev, source=d.source)),
    "hvae8": ("chapter 10's 8-bit hierarchical VAE",
              lambda d, p, dev: eight_bit_vae(d.x_train, p, dev, source=d.source,
                                              hierarchical=True)),
    "latent-vae": ("chapter 11's autoencoder",
                   lambda d, p, dev: latent_vae(d.x_train, p, dev, source=d.source)),
    "flow": ("chapter 13's flow-matching U-Net",
             lambda d, p, dev: flow_matching(d.x_train, p, dev)),
    "masked": ("chapter 14's masked diffusion U-Net",
               lambda d, p, dev: masked_diffusion(d.x_train, p, dev)),
    "ddpm-cond": ("chapter 16's class-conditional DDPM (classifier-free guidance)",
                  lambda d, p, dev: ddpm_cond(d.x_train, d.y_train, p, dev)),
    "noisy-classifier": ("chapter 16's noise-aware classifier (classifier guidance)",
                         lambda d, p, dev: noisy_classifier(d, p, dev)),
    "edm": ("chapter 17's EDM-preconditioned U-Net",
            lambda d, p, dev: edm(d.x_train, p, dev)),
    "vdm": ("chapter 18's U-Net on the VDM bound with a learned schedule",
            lambda d, p, dev: _train_vdm("elbo", d, p, dev)),
    "vdm-sigmoid": ("chapter 18's U-Net on the sigmoid weighting",
                    lambda d, p, dev: _train_vdm("sigmoid", d, p, dev)),
    "vq": ("chapter 19's four VQ-VAEs and both priors over the chosen one's codes, at a "
           "quarter, half and all of their updates",
           lambda d, p, dev: _train_vq(d, p, dev)),

    "reflow": ("chapter 15's reflow student (trains chapter 13's flow model if absent)",
               lambda d, p, dev: _train_fewstep("reflow", d, p, dev)),
    "distill": ("chapter 15's progressive distillation, every round",
                lambda d, p, dev: _train_fewstep("distill", d, p, dev)),
    "consistency": ("chapter 15's consistency distillation",
                    lambda d, p, dev: _train_fewstep("consistency", d, p, dev)),
}


def _gpu_on_cpu(name: str, profile, device) -> str:
    """What the gpu profile's recipe `name` would cost on `device`, and what to run instead."""
    cost = "a recipe sized for a GPU"
    if name in ("ddpm", "flow", "edm", "ddpm-cond", "vdm", "vdm-sigmoid"):
        from .models.unet import UNet, n_params, preset

        s = ddpm_settings(profile)
        params = n_params(UNet(preset(s["preset"], T=s["T"])))
        cost = (f"{s['steps']:,} steps of batch {s['batch_size']} through a "
                f"{params / 1e6:.1f}M-parameter U-Net")
    return (f"the gpu profile's {name} is {cost}, and there is no GPU here ({device}): on a "
            f"CPU that takes hours to days. Run `python -m companion {name} "
            "--profile cpu` (the book's stored outputs use it), or add --yes to train the "
            "gpu recipe on this machine anyway.")


def main(argv=None) -> int:
    """python -m companion NAME [--profile P] [--device D]: load-or-train one of
    the book's models into the checkpoint its chapters load (BOOK_CACHE decides where).
    Under `torchrun --nproc_per_node=N` the N processes train it together."""
    import argparse

    from .data import load
    from .run import distributed
    from .run.profiles import get_profile
    from .run.runtime import get_device, seed_everything

    parser = argparse.ArgumentParser(
        prog="python -m companion",
        description="Load-or-train one of the book's models into the checkpoint its chapters "
                    "load; under torchrun --nproc_per_node=N, N processes train it together.",
        epilog="models: " + "; ".join(f"{k}: {v[0]}" for k, v in COMMANDS.items()))
    parser.add_argument("model", choices=sorted(COMMANDS))
    parser.add_argument("--profile", default=None,
                        help="ci, cpu or gpu (default: $BOOK_PROFILE, else from the device)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda if "
                        "available); under torchrun each rank takes the GPU of its LOCAL_RANK")
    parser.add_argument("--yes", action="store_true", help="train the gpu profile's recipe "
                        "even without a GPU (it asks first: hours to days on a CPU)")
    args = parser.parse_args(argv)
    if args.profile is not None and not args.profile.strip():  # '' fell to the default
        parser.error("--profile is empty: give ci, cpu or gpu, or leave it out to use "
                     "$BOOK_PROFILE or the device's")
    profile = get_profile(args.profile)
    # the command line's profile is the process's: what asks get_profile() later (fit's
    # progress bar) must not read another, or a bad, BOOK_PROFILE
    os.environ["BOOK_PROFILE"] = profile.name
    device = distributed.local_device() or get_device(args.device)
    if profile.name == "gpu" and device.type != "cuda" and not args.yes:
        parser.error(_gpu_on_cpu(args.model, profile, device))
    seed_everything(0)
    data = load("mnist", n_train=profile.n_train, n_test=profile.n_test, device=device)
    _, result = COMMANDS[args.model][1](data, profile, device)
    if os.environ.get("RANK", "0") == "0":
        print(f"{args.model} ({profile.name}): {result.steps} steps, final loss "
              f"{result.history['loss'][-1]:.4g}, {result.train_seconds:.0f} s of training in "
              "all; checkpoints in " + str(checkpoint_path("", profile).parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
