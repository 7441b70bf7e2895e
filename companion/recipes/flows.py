"""Flow and few-step: chapter 13's flow matching with chapter 9's U-Net, and chapter
15's few-step students of that flow model (reflow, progressive and consistency
distillation)."""

from __future__ import annotations

import torch

from ..run import checks
from ..train import checkpoint_path, fit
from .common import DDPM_CLIP, _at_steps, _check_unit_images, _continue, _profile, _unet_recipe
from .pixel import ddpm_settings, eps_function


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
    from ..flow import flow_matching_loss

    s = ddpm_settings(profile)
    total = checks.early_steps(steps, s["steps"])
    K = s["T"]
    _check_unit_images(x, "recipes.flow_matching")
    model, optimizer, config, warm_up = _unet_recipe(
        s, profile, device, x, steps_of_net=K + 1, K=K, loss="flow matching, linear path")

    def loss_fn(model, x0, step):
        warm_up(step)
        return flow_matching_loss(model, x0, K)

    path = flow_checkpoint(profile, steps, prefix)
    _continue(path, resume_from, model, config, x * 2 - 1, optimizer, s, total)
    result = fit(model, loss_fn, x * 2 - 1, steps=total, batch_size=s["batch_size"],
                 optimizer=optimizer, clip=DDPM_CLIP, ema=s["ema"], checkpoint=path,
                 config=config, compile="cuda",
                 desc="flow matching" if steps is None else f"flow ({steps} steps)")
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
    two) and updates. ci: a pipeline check; cpu: fits the chapter's 15 minutes on 2 cores
    with chapter 13's model shipped; cd_steps where its trend crossed the bar (issue 93's
    pilot, benchmarks/README.md: at eight evaluations 3.0, 2.3, 1.5 and 1.9 times the floor
    of real digits after 200, 400, 800 and 1,600 updates); gpu: minutes on a T4.
    """
    return dict(
        pairs=profile.count(ci=64, cpu=1024, gpu=10_000),
        pair_steps=profile.count(ci=4, cpu=10, gpu=25),
        reflow_steps=_profile(profile).pick(ci=20, cpu=200, gpu=4000),
        rounds_from=16,
        distill_steps=_profile(profile).pick(ci=10, cpu=60, gpu=1500),
        cd_N=_profile(profile).pick(ci=10, cpu=20, gpu=40),
        cd_steps=_profile(profile).pick(ci=20, cpu=800, gpu=4000),
        batch_size=_profile(profile).pick(ci=16, cpu=32, gpu=128),
        lr=_profile(profile).pick(ci=5e-4, cpu=5e-4, gpu=2e-4),
        ema=_profile(profile).pick(ci=0.9, cpu=0.99, gpu=0.999),
    )


def _flow_student(teacher, profile, device):
    """A U-Net like chapter 13's flow model, holding the teacher's weights."""
    from ..models.unet import UNet, preset

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
    from ..fewstep import grid_field, reflow_pairs

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
    from ..fewstep import coupled_flow_matching_loss

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
    from ..fewstep import progressive_distillation_loss

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
    from ..fewstep import consistency_distillation_loss

    f = fewstep_settings(profile)
    K = ddpm_settings(profile)["T"]
    _check_unit_images(x, "recipes.consistency_distillation")

    def loss_fn(model, x0):
        return consistency_distillation_loss(model, teacher, x0, f["cd_N"], K)

    return _student_fit("consistency", _flow_student(teacher, profile, device), loss_fn,
                        x * 2 - 1, profile, f["cd_steps"],
                        dict(K=K, teacher=_weights_norm(teacher), N=f["cd_N"], n_train=len(x),
                             loss="consistency distillation", solver="heun"), prefix)
