"""Pilots (issue 93): a model's quality against its updates, so that its budget comes from
the trend, not from what a reader could afford.

    python tools/pilot.py ddpm --updates 900 1800 3000 4500 6000 [--n 256]
    python tools/pilot.py dit --size L --patch 2 --updates 900 1800 3000 4500 [--lr 1e-3]
    python tools/pilot.py diffusers --updates 900 1800 3000 4500 6000
    python tools/pilot.py prior-ar --updates 24000 48000 96000

`diffusers` is the peer of `ddpm` for time to quality (benchmarks/README.md): diffusers'
example recipe for unconditional images (benchmarks/bench_ddpm.py), trained once on the same
digits and scored by the same sampler, count of steps and judge as chapter 9's DDPM. Its
learning rate decays to the last count, as the example's does, so its stages are one run
watched along the way; it is not cached.

One run of the family's recipe in the `cpu` profile on the book's own data (BOOK_OFFLINE=1),
kept at each count of updates (`recipes.snapshots`: each stage resumes the one before, the
learning rate has no decay after its warm-up, so the stages are one run), every stage
scored the way the pages score it:

- the Fréchet distance of N samples to the test set, in the judge's features, against the
  floor: N real training digits, 5 draws (`metrics.frechet_floor`). The bar is 2x the floor;
- the judge's mean top-class probability (test digits: about 0.97);
- copying: the median distance of a sample to its nearest training digit, over that of a
  held-out test digit (chapter 9's test; below 1 means samples sit nearer the training set
  than new digits do);
- for the label-conditional networks of chapter 21 (`dit`, `unet-label`): how often the
  judge reads the asked label, as many samples of each label, no guidance (w = 0), as the
  page draws them. The bars: 0.8 for the transformers, 0.9 for the U-Net.

`prior-ar` and `prior-masked` are chapter 19's priors over the codes of its chosen
autoencoder (its four VQ-VAEs trained first, the choice made as the page makes it), in the
longer run's recipe (`code_prior(..., long=True)`) carried to the last count; each stage's
grids, decoded to the decoder's mean image, are its samples, drawn as the page draws them
(the masked prior in 49 steps in random order, in float32). The copying test compares
decoded samples.

`--size` and `--patch` give the DiT's size (S, M, L) and patch (2, 4, 7: 196, 49 or 16
tokens), `--lr` its learning rate: a pilot may try what the recipe does not have yet.

`--seed S` repeats a ddpm, dit or unet-label run with another seed (its record's name and
its checkpoints' end in `-seedS`): the spread over training seeds; the other pixel recipes
seed their runs themselves (seed 0), so they refuse it. `BOOK_CPU_BF16=0`
trains in float32 on a CPU with bf16 units (issue 93's check that bf16 reaches float32's
loss and distance); its record's name ends in `-float32`.

`--tag long` ends the record's name in `-long`: a longer run beside the record of a shorter one.

`--holdout F` (the learning-rate sweep: sweeps tune on a validation split, never on the test
digits) trains on the first 1 - F of the training digits and scores each stage also by its
validation loss: L_simple on the held-out last F, at fixed steps and noise (the same draws
for every run, so that two learning rates are compared on the same terms, paired).

The checkpoints go to .cache/pilot (BOOK_CACHE overrides), never the reader's cache or the
shipped set; a stopped pilot resumes. The table is printed and written, with the machine and
the seconds each stage trained, to benchmarks/results/pilots/<family>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "pilots"
BAR = 2.0  # the bar: a distance within 2x the floor of real digits


def write_record(name: str, record: dict, device, seconds: float) -> Path:
    """Write a pilot's record with the machine, precision, torch, seconds and date to
    benchmarks/results/pilots/<name>-<device type>.json; returns the path."""
    import torch

    import companion.run.precision
    from companion.run import shipped

    record = dict(record, machine=shipped.trained_by(device, 0.0)["device"],
                  precision=companion.run.precision.describe(device),
                  torch=torch.__version__, seconds=round(seconds),
                  date=time.strftime("%Y-%m-%d"))
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{name}-{device.type}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out


def _longer(top: int) -> None:
    """Every pixel recipe reads its budget from chapter 9's `ddpm_settings` (one U-Net, one
    budget, so that the chapters compare objectives, not budgets): make it `top` updates
    wherever a recipes module took the name."""
    import companion.recipes as recipes
    from companion.recipes import pixel

    settings = pixel.ddpm_settings

    def longer(p):
        return {**settings(p), "steps": top}

    for module in vars(recipes).values():
        if getattr(module, "ddpm_settings", None) is settings:
            module.ddpm_settings = longer


def _ddpm_sampler(model, profile, device):
    from companion.recipes import pixel
    diffusion, eps = pixel.ddpm_diffusion(profile, device), pixel.eps_function(model, device)
    return lambda z, g: diffusion.sample(eps, z.shape, n_steps=100, variance="beta",
                                         x_T=z, generator=g, quiet=True)


def _vdm_sampler(model, profile, device):
    from companion.recipes import variational
    diffusion, eps = variational.vdm_sampler(model, profile, device)
    return lambda z, g: diffusion.sample(eps, z.shape, n_steps=100, variance="beta",
                                         x_T=z, generator=g, quiet=True)


def _flow_sampler(model, profile, device):
    from companion import flow, sde
    from companion.recipes import pixel
    vel = flow.velocity_field(pixel.eps_function(model, device),
                              pixel.ddpm_settings(profile)["T"])
    return lambda z, g: sde.heun(vel, z, flow.uniform_grid(50))  # 99 evaluations


def _edm_sampler(model, profile, device):
    from companion import edm
    from companion.recipes import preconditioned
    D = preconditioned.denoiser_function(model, device)
    return lambda z, g: edm.heun(D, edm.SIGMA_MAX * z, edm.rho_grid(18))  # 35 evaluations


def _transformer(size: str, patch: int, lr: float | None, top: int):
    """Chapter 21's recipe with the DiT of `size` cut into `patch` x `patch` patches, the
    learning rate `lr` (None: the recipe's) and `top` updates, for a pilot."""
    from companion.recipes import transformers

    sizes, settings = transformers.dit_sizes, transformers.dit_settings

    def dit_sizes(p):
        return {k: {**v, "patch": patch} for k, v in sizes(p).items()}

    def dit_settings(p):
        s = {**settings(p), "steps": top}
        return s if lr is None else {**s, "lr": lr, "unet_lr": lr}

    def ch21_updates(network, p, cond="label"):  # the U-Net too: `top`, not equal FLOPs
        return top

    transformers.dit_sizes, transformers.dit_settings = dit_sizes, dit_settings
    transformers.ch21_updates = ch21_updates


def _peer_snapshots(x, cuts, device) -> dict:
    """diffusers' example recipe (benchmarks.bench_ddpm: UNet2DModel of about our U-Net's
    size, DDPMScheduler T = 1000, AdamW 1e-4 with warm-up and a cosine decay to the last
    cut, its EMA, batch 128, the same autocast) trained once on x (N, 1, 28, 28) in [0, 1]
    padded to 32x32; its EMA weights kept at each cut: {cut: (network, run)}, run.history
    the losses so far and run.train_seconds the training time alone."""
    import copy
    from types import SimpleNamespace

    import torch

    from benchmarks.bench_ddpm import PeerTrainer, peer_model

    torch.manual_seed(0)
    peer = peer_model(gpu_sizes=False).to(device)
    trainer = PeerTrainer(peer, device, x.cpu(), cuts[-1])
    kept, done, seconds, losses = {}, 0, 0.0, []
    for cut in cuts:
        t0 = time.perf_counter()
        losses += trainer.train(cut - done)
        seconds += time.perf_counter() - t0
        done = cut
        ema = copy.deepcopy(peer)
        trainer.ema.copy_to(ema.parameters())
        kept[cut] = (ema.eval(), SimpleNamespace(history={"loss": list(losses)},
                                                 train_seconds=seconds))
        print(f"{cut:>6} updates of diffusers' recipe: {seconds:.0f} s trained", flush=True)
    return kept


def _peer_sampler(model, profile, device):
    """The peer judged by the same sampler as chapter 9's DDPM (100 respaced ancestral
    steps) on its own chain: Ho et al.'s linear schedule at T = 1000, the schedule it
    trained on. diffusers counts steps from 0, the book from 1."""
    import torch
    import torch.nn.functional as F

    from companion.diffusion import Diffusion, linear_betas
    from companion.run.precision import autocast_dtype

    diffusion = Diffusion(linear_betas(1000), device=device)
    dtype = autocast_dtype(device, model)

    def eps(x, t):
        with torch.autocast(device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            out = model(F.pad(x, (2, 2, 2, 2), value=-1.0), t - 1).sample
        return out[..., 2:30, 2:30].float()

    return lambda z, g: diffusion.sample(eps, z.shape, n_steps=100, variance="beta",
                                         x_T=z, generator=g, quiet=True)


def _network(family: str, size: str, patch: int) -> str:
    """Chapter 21's name of the network a labelled pilot trains: "unet", or the DiT with
    its patch in the name where it is not the recipe's default ("dit-L/2"), since the
    recipe takes the patch from the name."""
    from companion.recipes import transformers

    if family == "unet-label":
        return "unet"
    return f"dit-{size}" + ("" if patch == transformers.DIT_PATCH else f"/{patch}")


def _label_sampler(labels):
    """The label-conditional sampler of chapter 21's comparison: chapter 9's chain, 50
    respaced ancestral steps (the page's), no guidance."""
    def sampler(model, profile, device):
        from companion.recipes import pixel, transformers
        diffusion = pixel.ddpm_diffusion(profile, device)
        eps = transformers.ch21_eps_function(model, labels, 0.0, device)
        return lambda z, g: diffusion.sample(eps, z.shape, n_steps=50, variance="posterior",
                                             x_T=z, generator=g, quiet=True)
    return sampler


def _families():
    """{family: (recipe, its checkpoint path function, sampler(model, profile, device) ->
    (z, generator) -> images on [-1, 1])}: the sampler each is judged by on its page."""
    from companion.recipes import flows, pixel, preconditioned, variational
    return {
        "ddpm": (pixel.ddpm, pixel.ddpm_checkpoint, _ddpm_sampler),  # chapter 9
        "flow": (flows.flow_matching, flows.flow_checkpoint, _flow_sampler),  # 13
        "edm": (preconditioned.edm, preconditioned.edm_checkpoint, _edm_sampler),  # 17
        "vdm": (variational.vdm, variational.vdm_checkpoint, _vdm_sampler),  # 18
    }


def _prior(kind: str, x, profile, device, top: int):
    """Chapter 19's prior of `kind` over its chosen autoencoder's codes, its longer run
    carried to `top` updates (vq_settings replaced for this process, as `_longer` does):
    (recipe, checkpoint, sampler) for `snapshots` and scoring."""
    import torch

    from companion import masked
    from companion.recipes import discrete

    trained = {v: discrete.vqvae(x, profile, device, variant=v, prefix="pilot")
               for v in discrete.VQ_VARIANTS}
    chosen = discrete.chosen_variant({v: run for v, (_, run) in trained.items()})
    vq = trained[chosen][0]
    settings = discrete.vq_settings
    discrete.vq_settings = lambda p: {**settings(p), "long_steps": top}

    def recipe(x, profile, device, **stage):
        return discrete.code_prior(x, profile, device, vq=vq, variant=chosen, kind=kind,
                                   long=True, **stage)

    def checkpoint(profile, steps, prefix="pilot"):
        return discrete.code_prior_checkpoint(profile, steps, prefix, variant=chosen,
                                              kind=kind, long=True)

    def sampler(model, profile, device):
        def draw(z, g):  # the page's draws: z gives the count, g the randomness
            if kind == "autoregressive":
                k = model.sample(len(z), generator=g)
            else:
                k = masked.sample(lambda c: model(c).float(), (len(z), 7, 7), 49,
                                  order="random", categories=settings(profile)["K"],
                                  device=device, generator=g)
            return torch.sigmoid(vq.decode_indices(k)) * 2 - 1
        return draw
    return recipe, checkpoint, sampler


PRIORS = {"prior-ar": "autoregressive", "prior-masked": "masked"}
FAMILIES = ("ddpm", "flow", "edm", "vdm", "dit", "unet-label", "diffusers", *PRIORS)
LABELLED = {"dit": 0.8, "unet-label": 0.9}  # the judge reads the asked label this often


def nearest(x, train):
    """Each image's Euclidean distance to its nearest training image, (N,)."""
    import torch
    d = torch.cdist(x.flatten(1).float(), train.flatten(1).float())
    return d.min(1).values


def validation_loss(model, profile, device, x, y, labelled: bool, draws: int = 8):
    """L_simple of `model` on held-out digits x (N, 1, 28, 28) in [0, 1]: each digit noised
    `draws` times at steps and noise from seed 7 (the same for every model), the label
    given to a conditional network. Returns (mean, its SE over digits)."""
    import torch

    from companion.recipes import pixel, transformers

    diffusion = pixel.ddpm_diffusion(profile, device)
    g = torch.Generator(device).manual_seed(7)
    x0 = (x * 2 - 1).repeat(draws, 1, 1, 1)
    t = torch.randint(1, diffusion.T + 1, (len(x0),), device=device, generator=g)
    noise = torch.randn(x0.shape, device=device, generator=g)
    eps = (transformers.ch21_eps_function(model, y.repeat(draws), 0.0, device)
           if labelled else pixel.eps_function(model, device))
    with torch.no_grad():
        err = (eps(diffusion.q_sample(x0, t, noise), t).float() - noise).pow(2)
    per_digit = err.flatten(1).mean(1).view(draws, len(x)).mean(0).double()
    return per_digit.mean().item(), (per_digit.std() / len(x) ** 0.5).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", choices=FAMILIES)
    ap.add_argument("--updates", type=int, nargs="+", required=True)
    ap.add_argument("--n", type=int, default=256, help="samples a stage (default 256)")
    ap.add_argument("--seed", type=int, default=0,
                    help="the training run's seed (default 0; the samples' noise is fixed)")
    ap.add_argument("--size", choices=("S", "M", "L"), default="L", help="the DiT's size")
    ap.add_argument("--patch", type=int, choices=(2, 4, 7), default=4,
                    help="the DiT's patch (default 4, the recipe's)")
    ap.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    ap.add_argument("--holdout", type=float, default=0.0,
                    help="share of the training digits held out for a validation loss")
    ap.add_argument("--tag", default="",
                    help="a suffix for the record's name (e.g. long), so that a longer "
                         "run keeps the shorter one's record")
    args = ap.parse_args(argv)
    if args.seed and args.family not in (*LABELLED, "ddpm"):  # would repeat seed 0
        raise SystemExit(f"--seed is for the ddpm, dit and unet-label pilots: the "
                         f"{args.family} recipe seeds its run itself (seed 0)")
    if len(set(args.updates)) < 2 and args.family != "diffusers":
        raise SystemExit("--updates needs at least two counts, the stages of one run "
                         f"(e.g. 3000 4500), got {args.updates}: the recipe's snapshots "
                         "keep the earlier ones")
    if args.tag and not args.tag.replace("-", "").isalnum():
        raise SystemExit(f"--tag is a word for a file name (letters, digits, -), got "
                         f"{args.tag!r}")
    if not 0 <= args.holdout < 0.5:
        raise SystemExit(f"--holdout is a share of the training digits in [0, 0.5), got "
                         f"{args.holdout}")
    if args.family in PRIORS and (args.lr is not None or args.patch != 4):
        raise SystemExit("the priors run chapter 19's recipe: no --lr or --patch")
    if args.holdout and args.family not in ("ddpm", "dit", "unet-label"):
        raise SystemExit("--holdout scores a noise predictor's L_simple: the ddpm, dit and "
                         "unet-label pilots")
    os.environ.setdefault("BOOK_OFFLINE", "1")
    os.environ.setdefault("BOOK_PROFILE", "cpu")
    os.environ.setdefault("BOOK_CACHE", str(ROOT / ".cache" / "pilot"))
    empty = Path(os.environ["BOOK_CACHE"]) / "no-shipped"
    empty.mkdir(parents=True, exist_ok=True)
    os.environ["BOOK_SHIPPED"] = str(empty)  # the pilot trains; it never loads the set

    import torch

    import companion
    import companion.run.precision
    from companion import recipes
    from companion.data import load
    from companion.metrics import frechet_distance, frechet_floor, mean_top_probability
    from companion.models.classifier import predict, to_unit

    profile, device = companion.setup(seed=args.seed)
    data = load("mnist", n_train=profile.n_train, n_test=profile.n_test, device=device)
    judge, _ = recipes.classifier(data, profile, device)
    ref, _ = predict(judge, data.x_test)
    ref = ref.cpu()
    floors = frechet_floor(lambda x: predict(judge, to_unit(x))[0].cpu(),
                           data.x_train * 2 - 1, ref, args.n)
    floor = floors.mean().item()
    held_out = nearest(data.x_test, data.x_train).median().item()

    cuts = sorted(set(args.updates))
    labels = torch.arange(args.n, device=device) % 10
    keep = len(data.x_train) - round(args.holdout * len(data.x_train))
    x_train, y_train = data.x_train[:keep], data.y_train[:keep]
    x_val, y_val = data.x_train[keep:], data.y_train[keep:]
    if args.family in LABELLED:
        _transformer(args.size, args.patch, args.lr, cuts[-1])
        network = _network(args.family, args.size, args.patch)
        prefix = (f"pilot-p{args.patch}" + ("" if args.lr is None else f"-lr{args.lr:g}")
                  + ("" if not args.holdout else f"-val{args.holdout:g}"))

        def recipe(x, profile, device, **stage):
            return recipes.ch21_model(x, y_train, profile, device, network=network,
                                      seed=args.seed, **stage)

        def checkpoint(profile, steps, prefix=prefix):
            return recipes.ch21_checkpoint(profile, steps, prefix, network=network,
                                           seed=args.seed)

        sampler = _label_sampler(labels)
    elif args.family == "diffusers":
        if args.lr is not None or args.patch != 4 or args.holdout:
            raise SystemExit("diffusers runs its example's recipe: no --lr, --patch or "
                             "--holdout")
        sampler = _peer_sampler
    elif args.family in PRIORS:
        recipe, checkpoint, sampler = _prior(PRIORS[args.family], x_train, profile, device,
                                             cuts[-1])
        prefix = "pilot"
    else:
        if args.lr is not None or args.patch != 4:
            raise SystemExit("--lr and --patch are for the dit and unet-label pilots")
        _longer(cuts[-1])
        recipe, checkpoint, sampler = _families()[args.family]
        prefix = "pilot" + ("" if not args.holdout else f"-val{args.holdout:g}")
    started = time.time()
    if args.family == "diffusers":
        runs = _peer_snapshots(x_train, cuts, device)
    else:
        runs = recipes.snapshots(recipe, checkpoint, x_train, profile, device,
                                 fractions=[c / cuts[-1] for c in cuts[:-1]],
                                 total=cuts[-1], prefix=prefix,
                                 **({"seed": args.seed} if args.seed else {}))
    rows = []
    for k, (model, run) in sorted(runs.items()):
        z = torch.randn(args.n, 1, 28, 28, device=device,
                        generator=torch.Generator(device).manual_seed(12))
        with torch.no_grad():
            x = sampler(model, profile, device)(z, torch.Generator(device).manual_seed(5))
        x = ((x.clamp(-1, 1) + 1) / 2).float()
        f, p = predict(judge, x)
        fd = frechet_distance(f.cpu(), ref)
        copy = nearest(x, data.x_train).median().item() / held_out
        tail = run.history["loss"][-100:]
        loss, seconds = sum(tail) / max(1, len(tail)), run.train_seconds
        rows.append(dict(updates=k, train_seconds=round(seconds), loss=round(loss, 4),
                         fd=round(fd, 1), ratio=round(fd / floor, 2),
                         top=round(mean_top_probability(p), 3), copy=round(copy, 3)))
        if args.holdout:
            val = validation_loss(model, profile, device, x_val, y_val,
                                  args.family in LABELLED)
            rows[-1]["val_loss"], rows[-1]["val_se"] = round(val[0], 5), round(val[1], 5)
            print(f"{k:>6} updates: validation loss {val[0]:.5f} +- {val[1]:.5f} "
                  f"({len(x_val)} digits)", flush=True)
        asked = ""
        if args.family in LABELLED:
            rows[-1]["asked"] = round((p.argmax(1) == labels).float().mean().item(), 3)
            asked = f", asked label read {rows[-1]['asked']:.3f}"
        print(f"{k:>6} updates: FD {fd:7.1f} = {fd / floor:5.2f} x floor, top-class "
              f"{rows[-1]['top']:.3f}, nearest-train ratio {copy:.3f}{asked}, loss "
              f"{loss:.4f}, {seconds:.0f} s trained", flush=True)
    name = args.family + ("" if not args.holdout else f"-val{args.holdout:g}")
    if args.family in LABELLED:
        name += f"-{args.size}-p{args.patch}" if args.family == "dit" else ""
        name += "" if args.lr is None else f"-lr{args.lr:g}"
    name += "" if not args.seed else f"-seed{args.seed}"
    name += "" if not args.tag else f"-{args.tag}"
    precision = companion.run.precision.describe(device)
    if precision != "bf16":  # the bf16 records keep their names; float32 is the check
        name += f"-{precision}"
    record = dict(family=name, n=args.n, floor=round(floor, 1),
                  floor_sd=round(floors.std().item(), 1), bar=BAR,
                  asked_bar=LABELLED.get(args.family), rows=rows)
    out = write_record(name, record, device, time.time() - started)
    print(f"floor {floor:.1f} +- {record['floor_sd']} at N = {args.n}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
