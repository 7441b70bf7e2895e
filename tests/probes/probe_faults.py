"""Misuse probes of `companion`: bad input, damaged checkpoints, kills; counts the outcomes.

    python -m tests.probes.probe_faults            # about a minute on 2 CPU cores
    python -m tests.probes.probe_faults -v         # one line per case

The kinds of probe of issue 24 (wrong shapes, dtypes, ranges, NaN/inf, empty batches,
out-of-range arguments, corrupt and foreign checkpoints, read-only directories, a full disk,
signals mid-training), run against the public functions a reader calls. Every case is one of
  error   bad input: it must raise. A raise of Python's usual ValueError/TypeError/
          OSError family or from companion's own code (not from torch inside a call it
          made), whose message matches what the case names (the argument, the range, "NaN",
          ...), counts as a clear error; any other raise as a cryptic one; a return as a
          silent wrong result (or, when the output itself is NaN/inf, as NaN passed
          through: visible, but not refused).
  keep    a fault during training: the case checks that no work is lost (a checkpoint is
          kept, it loads, a resumed run ends with the uninterrupted run's weights).
A case that runs past its time limit (SIGALRM) is a hang. The verdicts are automatic, from
the message and the type: a message can match its pattern and still be poorly worded.
Measurements, not tests: the fault-injection tests are tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLEAR_TYPES = (ValueError, TypeError, OSError, LookupError, FloatingPointError)
CRYPTIC_TYPES = (KeyError, IndexError, AttributeError, ZeroDivisionError, AssertionError)
LIMIT_S = 30


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


# --- the cases -------------------------------------------------------------------------------
SHAPES = {"flat (B, 784)", "no channel (B, 28, 28)", "3 channels"}
RANGES = {"float 0..255", "the other range"}
ELEMENTWISE = SHAPES | {"float64", "empty batch", "0-dim tensor"}


def image_cases():
    """(name, function, domain, variants that are no misuse of it) for every entry point
    that takes a batch of images. The diffusion's forward process and L_simple are defined
    for any real data (chapter 8 runs them on Gaussian toys), a network's forward pass maps
    an empty batch to an empty output, and the classifier checks the range in `predict`,
    not per training step."""
    from companion import data
    from companion import diffusion as dm
    from companion.models.classifier import Classifier, predict
    from companion.models.hvae import HierarchicalVAE, MarkovianHVAE
    from companion.models.unet import UNet, preset
    from companion.models.vae import VAE, to_8bit_range

    torch.manual_seed(0)
    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
    unet = UNet(preset("tiny", T=10))
    clf = Classifier()
    hv = HierarchicalVAE((4, 2), (32, 16))
    hv8 = HierarchicalVAE((4, 2), (32, 16), likelihood="discretized")
    mk = MarkovianHVAE(T=2, latent_dim=4, hidden=32, step_hidden=8)
    vae = VAE(latent_dim=2, hidden=(32,))
    vae8 = VAE(latent_dim=2, hidden=(32,), likelihood="discretized")

    def t_of(x):
        return torch.ones(len(x), dtype=torch.long) if torch.is_tensor(x) and x.dim() else 1

    generic = SHAPES | RANGES | {"float64"}
    return [
        ("Diffusion.q_sample", lambda x: d.q_sample(x, t_of(x), torch.randn(x.shape)
                                                    if torch.is_tensor(x) else x), "signed",
         generic),
        ("Diffusion.simple_loss", lambda x: d.simple_loss(unet, x), "signed", RANGES),
        ("Diffusion.prior_kl", lambda x: d.prior_kl(x), "signed", generic),
        ("Diffusion.term_at", lambda x: d.term_at(unet, x, t_of(x)), "8bit", set()),
        ("Diffusion.bound_terms", lambda x: d.bound_terms(unet, x, quiet=True).total, "8bit",
         set()),
        ("UNet.forward", lambda x: unet(x, t_of(x)), "signed", RANGES | {"empty batch"}),
        ("Classifier.forward", lambda x: clf(x), "unit", RANGES | {"empty batch"}),
        ("classifier.predict", lambda x: predict(clf, x)[1], "unit", set()),
        ("HierarchicalVAE.elbo_terms", lambda x: hv.elbo_terms(x).elbo, "binary", set()),
        ("HierarchicalVAE(discretized)", lambda x: hv8.elbo_terms(x).elbo, "8bit", set()),
        ("MarkovianHVAE.elbo_terms", lambda x: mk.elbo_terms(x).elbo, "binary", set()),
        ("VAE.elbo_terms", lambda x: vae.elbo_terms(x).elbo, "binary", set()),
        ("VAE(discretized)", lambda x: vae8.elbo_terms(x).elbo, "8bit", set()),
        ("to_8bit_range", to_8bit_range, "unit", ELEMENTWISE),
        ("data.binarize", data.binarize, "unit", ELEMENTWISE),
    ]


def good_images(domain: str, n: int = 3) -> torch.Tensor:
    u = torch.randint(0, 256, (n, 1, 28, 28)).float() / 255
    return {"unit": u, "binary": (u > 0.5).float(), "signed": u * 2 - 1,
            "8bit": torch.round(u * 255) / 127.5 - 1}[domain]


def bad_images(domain: str):
    """(variant, input, pattern the error should match) for a function of `domain`."""
    g = good_images(domain)
    nan, inf = g.clone(), g.clone()
    nan[0, 0, 3, 3], inf[0, 0, 3, 3] = float("nan"), float("inf")
    wrong = (g * 2 - 1) if domain in ("unit", "binary") else (g + 1) / 2
    shape = r"shape|\(B, 1, 28, 28\)|28"
    return [
        ("flat (B, 784)", g.reshape(len(g), -1), shape),
        ("no channel (B, 28, 28)", g[:, 0], shape),
        ("3 channels", g.expand(-1, 3, -1, -1).contiguous(), shape),
        ("uint8 0..255", (g.clamp(0, 1) * 255).to(torch.uint8), r"uint8|float|dtype|255"),
        ("int64", g.round().long(), r"int64|float|dtype"),
        ("float64", g.double(), r"float64|dtype"),
        ("float 0..255", g.clamp(0, 1) * 255 if domain != "8bit" else (g + 1) * 127.5,
         r"255|range|\[0, 1\]|\[-1, 1\]|levels"),
        ("the other range", wrong, r"range|\[0, 1\]|\[-1, 1\]|to_unit|levels|8-bit|grid"),
        ("NaN pixel", nan, r"nan|finite"),
        ("inf pixel", inf, r"inf|finite|range|levels|8-bit"),
        ("empty batch", g[:0], r"empty|no images|non-empty|batch"),
        ("numpy array", g.numpy(), r"tensor|numpy|ndarray"),
        ("0-dim tensor", torch.tensor(0.5), r"0-dim|0-d |shape|batch"),
    ]


def argument_cases():
    """(name, call, pattern): out-of-range arguments and ill-formed metric input."""
    from companion import diffusion as dm
    from companion import metrics
    from companion.data import batches
    from companion.models.hvae import HierarchicalVAE, HierarchyLoss
    from companion.models.unet import UNet, preset
    from companion.train import EMA

    d = dm.Diffusion(dm.linear_betas(10, 1e-3, 0.2))
    unet = UNet(preset("tiny", T=10))
    x = good_images("signed", 2)
    probs = torch.full((4, 10), 0.1)
    feats = torch.randn(50, 4)

    def nan_at(a):
        a = a.clone()
        a.view(-1)[0] = float("nan")
        return a

    return [
        ("linear_betas(T=0)", lambda: dm.linear_betas(0), r"T"),
        ("linear_betas(start > end)", lambda: dm.linear_betas(10, 0.5, 0.1), r"start"),
        ("Diffusion(list)", lambda: dm.Diffusion([0.1, 0.2]), r"tensor"),
        ("Diffusion(betas=1.5)", lambda: dm.Diffusion(torch.tensor([0.1, 1.5])), r"\(0, 1\)"),
        ("Diffusion(2-D betas)", lambda: dm.Diffusion(torch.full((2, 2), 0.1)), r"1-D"),
        ("spaced_timesteps(n=0)", lambda: dm.spaced_timesteps(10, 0), r"n_steps"),
        ("spaced_timesteps(n>T)", lambda: dm.spaced_timesteps(10, 11), r"n_steps"),
        ("q_sample(t=0)", lambda: d.q_sample(x, torch.zeros(2, dtype=torch.long),
                                             torch.randn_like(x)), r"1\.\.T|t must"),
        ("q_sample(t=T+1)", lambda: d.q_sample(x, torch.full((2,), 11), torch.randn_like(x)),
         r"1\.\.T|t must"),
        ("q_sample(float t)", lambda: d.q_sample(x, torch.ones(2), torch.randn_like(x)),
         r"int"),
        ("q_sample(bool t)", lambda: d.q_sample(x, True, torch.randn_like(x)), r"bool"),
        ("q_sample(t of wrong length)", lambda: d.q_sample(x, torch.ones(3, dtype=torch.long),
                                                           torch.randn_like(x)), r"shape"),
        ("q_sample(noise of wrong shape)", lambda: d.q_sample(x, 1, torch.randn(2, 784)),
         r"shape"),
        ("sample(n_steps=0)", lambda: d.sample(unet, (1, 1, 28, 28), n_steps=0, quiet=True),
         r"n_steps"),
        ("sample(variance='bad')", lambda: d.sample(unet, (1, 1, 28, 28), variance="bad",
                                                    quiet=True), r"variance"),
        ("sample_ddim(eta=-1)", lambda: d.sample_ddim(unet, (1, 1, 28, 28), n_steps=2,
                                                      eta=-1, quiet=True), r"eta"),
        ("bound_terms(decoder='bad')", lambda: d.bound_terms(unet, x, decoder="bad",
                                                             quiet=True), r"decoder"),
        ("bound_monte_carlo(draws=0)", lambda: d.bound_monte_carlo(unet, x, draws=0),
         r"draws"),
        ("U-Net for T=100 with T=10", lambda: d.simple_loss(UNet(preset("tiny", T=100)), x),
         r"T = 100"),
        ("eps model of wrong shape", lambda: d.simple_loss(lambda a, t: a[:, 0], x),
         r"shape"),
        ("preset('huge')", lambda: preset("huge"), r"huge|preset"),
        ("HierarchicalVAE(latent_dims=())", lambda: HierarchicalVAE((), ()), r"latent_dims"),
        ("HierarchyLoss(free_bits=nan)", lambda: HierarchyLoss(free_bits=float("nan")),
         r"free_bits"),
        ("HierarchyLoss(free_bits=-1)", lambda: HierarchyLoss(free_bits=-1.0), r"free_bits"),
        ("EMA(decay=1)", lambda: EMA(nn.Linear(2, 2), 1.0), r"decay"),
        ("batches(batch_size=0)", lambda: list(batches(x, batch_size=0)), r"batch_size"),
        ("mean_top_probability(logits)",
         lambda: metrics.mean_top_probability(torch.randn(5, 10) * 5), r"probabilit"),
        ("label_histogram(NaN)", lambda: metrics.label_histogram(nan_at(probs)), r"nan|finite"),
        ("auroc(NaN scores)", lambda: metrics.auroc(nan_at(torch.randn(6)),
                                                    torch.tensor([0, 1, 0, 1, 0, 1])),
         r"nan|finite"),
        ("auroc(one class)", lambda: metrics.auroc(torch.randn(4), torch.ones(4)),
         r"class|both|label"),
        ("active_units(NaN)", lambda: metrics.active_units(nan_at(torch.randn(6, 3))),
         r"nan|finite"),
        ("frechet_gaussian(non-PSD)", lambda: metrics.frechet_gaussian(
            torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2)),
         r"semi-definite|PSD|covariance"),
        ("frechet_distance(NaN)", lambda: metrics.frechet_distance(nan_at(feats), feats),
         r"nan|finite"),
        ("frechet_distance(inf)", lambda: metrics.frechet_distance(
            feats.index_fill(0, torch.tensor([0]), float("inf")), feats), r"inf|finite"),
        ("frechet_distance(1 sample)", lambda: metrics.frechet_distance(feats[:1], feats),
         r"at least|sample|2"),
        ("frechet_distance(dims differ)", lambda: metrics.frechet_distance(feats,
                                                                           feats[:, :3]),
         r"dim|shape|feature"),
    ]


def fit_cases(tmp: Path):
    """(name, call, pattern): misuse of fit and of its checkpoints."""
    from companion.run.profiles import get_profile
    from companion.train import fit

    X, Y = torch.randn(16, 3), torch.randn(16, 1)

    def mse(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    def f(d=(X, Y), fn=mse, model=None, **kw):
        kw.setdefault("steps", 2)
        torch.manual_seed(0)
        return fit(model or nn.Linear(3, 1), fn, d, quiet=True, **kw)

    def fresh(name):
        p = tmp / name
        f(checkpoint=p)
        return p

    def damaged(name, how):
        p = fresh(name)
        raw = bytearray(p.read_bytes())
        if how == "truncate":
            raw = raw[:len(raw) // 2]
        elif how == "empty":
            raw = b""
        elif how == "random":
            raw = bytearray(os.urandom(len(raw)))
        p.write_bytes(bytes(raw))
        return p

    def flipped(name):
        p = fresh(name)
        s = torch.load(p, weights_only=True)
        s["model"]["weight"].view(torch.int32)[0, 0] ^= 0x7F800000
        torch.save(s, p)
        return p

    def other(path_fn, **kw):
        return lambda: f(checkpoint=path_fn(), **kw)

    def nested():
        p = tmp / "nested.pt"

        def fn(m, b):
            f(checkpoint=p)
            return mse(m, b)
        return f(fn=fn, checkpoint=p)

    ro = tmp / "ro"
    ro.mkdir(exist_ok=True)
    cases = [
        ("fit(empty data, steps=3)", lambda: f(d=(X[:0], Y[:0]), steps=3), r"empty"),
        ("fit(epochs=0.5)", lambda: f(steps=None, epochs=0.5), r"whole number"),
        ("fit(steps=2.5)", lambda: f(steps=2.5), r"whole number"),
        ("fit(steps=0)", lambda: f(steps=0), r"nothing to train|steps"),
        ("fit(epochs and steps)", lambda: f(epochs=1), r"exactly one"),
        ("fit(check_every=0)", lambda: f(check_every=0), r"check_every"),
        ("fit(save_every=0)", lambda: f(save_every=0), r"save_every"),
        ("fit(batch_size=0)", lambda: f(batch_size=0), r"batch_size"),
        ("fit(lr=0)", lambda: f(lr=0), r"lr"),
        ("fit(lr=nan)", lambda: f(lr=float("nan")), r"lr"),
        ("fit(clip=0)", lambda: f(clip=0), r"clip"),
        ("fit(numpy data)", lambda: f(d=(X.numpy(), Y.numpy())), r"tensor|numpy"),
        ("fit(lengths differ)", lambda: f(d=(X, Y[:5])), r"different numbers|length"),
        ("fit(float64 data)", lambda: f(d=(X.double(), Y.double())), r"float64"),
        ("fit(model without parameters)", lambda: f(model=nn.ReLU()), r"parameters"),
        ("fit(loss returns a float)", lambda: f(fn=lambda m, b: 1.0), r"scalar tensor"),
        ("fit(loss is a vector)", lambda: f(fn=lambda m, b: (m(b[0]) - b[1]) ** 2),
         r"scalar"),
        ("fit(loss without gradient)", lambda: f(fn=lambda m, b: mse(m, b).detach()),
         r"no gradient"),
        ("fit(NaN loss)", lambda: f(fn=lambda m, b: mse(m, b) * float("nan"), check_every=1),
         r"nan.*step"),
        ("fit(NaN input)", lambda: f(d=(X.index_fill(0, torch.tensor([0]), float("nan")), Y),
                                     check_every=1), r"nan"),
        ("fit(tensor in config)", lambda: f(checkpoint=tmp / "cfg.pt",
                                            config={"lr": torch.tensor(1.0)}), r"config\['lr'\]"),
        ("fit(object in config)", lambda: f(checkpoint=tmp / "cfg2.pt",
                                            config={"f": object()}), r"config\['f'\]"),
        ("checkpoint truncated", other(lambda: damaged("trunc.pt", "truncate")), r"damaged"),
        ("checkpoint empty", other(lambda: damaged("empty.pt", "empty")), r"damaged"),
        ("checkpoint random bytes", other(lambda: damaged("rand.pt", "random")), r"damaged"),
        ("checkpoint: a flipped bit", other(lambda: flipped("flip.pt")), r"checksum"),
        ("checkpoint path is a directory",
         lambda: f(checkpoint=(tmp / "dir.pt").mkdir(exist_ok=True) or tmp / "dir.pt"),
         r"directory"),
        ("checkpoint holds a bare tensor",
         lambda: f(checkpoint=(torch.save(torch.zeros(2), tmp / "t.pt"), tmp / "t.pt")[1]),
         r"not a checkpoint"),
        ("checkpoint holds a foreign dict",
         lambda: f(checkpoint=(torch.save({"a": 1}, tmp / "fd.pt"), tmp / "fd.pt")[1]),
         r"not a checkpoint"),
        ("checkpoint of another model",
         other(lambda: fresh("om.pt"), model=nn.Sequential(nn.Linear(3, 1))), r"model"),
        ("checkpoint of other data", other(lambda: fresh("od.pt"), d=(X + 1, Y)), r"data"),
        ("checkpoint with another lr", other(lambda: fresh("lr.pt"), lr=1e-2), r"optimizer"),
        ("Adam checkpoint resumed with SGD",
         lambda: (lambda m: f(model=m, checkpoint=fresh("sgd.pt"),
                              optimizer=torch.optim.SGD(m.parameters(), lr=1e-3)))(
             nn.Linear(3, 1)), r"optimizer"),
        ("EMA dropped on resume",
         lambda: f(checkpoint=(f(checkpoint=tmp / "ema.pt", ema=0.9), tmp / "ema.pt")[1]),
         r"ema"),
        ("checkpoint of a longer run", other(lambda: (f(checkpoint=tmp / "long.pt", steps=6),
                                                      tmp / "long.pt")[1]), r"longer run"),
        ("two fits into one path (one process)", nested, r"already training"),
        ("recipes.ddpm(resume_from missing)",
         lambda: _ddpm(tmp, resume_from=tmp / "nope.pt"), r"does not exist"),
        ("recipes.ddpm(empty images)", lambda: _ddpm(tmp, x=torch.rand(0, 1, 28, 28)),
         r"empty"),
        ("recipes.ddpm(0..255 images)", lambda: _ddpm(tmp, x=torch.rand(4, 1, 28, 28) * 255),
         r"\[0, 1\]"),
        ("recipes.ddpm([-1, 1] images)",
         lambda: _ddpm(tmp, x=torch.rand(4, 1, 28, 28) * 2 - 1), r"\[0, 1\]"),
        ("get_profile('fast')", lambda: get_profile("fast"), r"fast|profile"),
    ]
    if os.geteuid() != 0:
        ro.chmod(0o500)
        cases.append(("read-only checkpoint directory", lambda: f(checkpoint=ro / "m.pt"),
                      str(ro)))
    return cases


def _ddpm(tmp, x=None, **kw):
    from companion import recipes
    from companion.run.profiles import get_profile

    os.environ["BOOK_CACHE"] = str(tmp / "cache")
    x = torch.rand(8, 1, 28, 28) if x is None else x
    return recipes.ddpm(x, get_profile("ci"), "cpu", steps=2, **kw)


# --- lost work: faults during training -------------------------------------------------------


def keep_cases(tmp: Path):
    """(name, call returning (kept: bool, detail)): faults during training."""
    from companion.run.profiles import get_profile
    from companion.train import fit

    # the script the fault tests run (same arguments: path, seconds a step, save_every);
    # imported here: test_faults draws unseeded data at import
    from tests.test_faults import SCRIPT

    script = tmp / "keep.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def child(path, slow=0.0, save_every=1000):
        return subprocess.Popen([sys.executable, str(script), str(path), str(slow),
                                 str(save_every)], env=env, stdout=subprocess.PIPE, text=True)

    reference: dict = {}

    def ref():
        if not reference:
            p = tmp / "ref.pt"
            assert child(p).wait(60) == 0
            reference.update(torch.load(str(p) + ".final"))
        return reference

    def killed(sig, save_every=1000):
        def case():
            p = tmp / f"k-{sig}-{save_every}.pt"
            c = child(p, 0.01, save_every)
            c.stdout.readline()
            time.sleep(random.uniform(0.0, 0.4))
            c.send_signal(getattr(signal, sig))
            c.wait(60)
            stopped = (torch.load(p, weights_only=True)["step"] if p.exists() else 0)
            if child(p).wait(60) != 0:
                return False, "the resumed run failed"
            got = torch.load(str(p) + ".final")
            same = all(torch.allclose(got[k], v) for k, v in ref().items())
            return same, f"stopped at step {stopped}; resumed weights " + (
                "equal" if same else "DIFFER")
        return case

    X, Y = torch.randn(16, 3), torch.randn(16, 1)

    def mse(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    def config_round_trip(value):
        def case():
            p = tmp / f"cfg-{type(value).__name__}.pt"
            for _ in range(2):
                torch.manual_seed(0)
                r = fit(nn.Linear(3, 1), mse, (X, Y), steps=3, quiet=True, checkpoint=p,
                        config={"v": value})
            return r.resumed_at == 3, f"second run resumed at {r.resumed_at}"
        return case

    def nan_weights_at_last_step():
        p = tmp / "nanw.pt"

        def fn(m, b, step):
            loss = mse(m, b)
            if step == 7:
                bad = torch.sqrt(-m.weight.abs().sum() - 1)
                return loss + torch.where(torch.tensor(True), torch.zeros(()), bad)
            return loss
        try:
            fit(nn.Linear(3, 1), fn, (X, Y), steps=8, save_every=4, quiet=True, checkpoint=p)
        except FloatingPointError:
            pass
        s = torch.load(p, weights_only=True)
        finite = all(torch.isfinite(v).all() for v in s["model"].values())
        return finite and s["step"] < 8, f"saved step {s['step']}, finite {finite}"

    def fractional_epochs():
        try:
            fit(nn.Linear(3, 1), mse, (X, Y), epochs=0.5, quiet=True, checkpoint=tmp / "fr.pt")
        except ValueError:
            return True, "refused before training"
        return (tmp / "fr.pt").exists(), "trained"

    def full_disk():
        import companion.train as tr

        real = tr.torch.save

        def fail(state, f):
            Path(f).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        tr.torch.save = fail
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = nn.Linear(3, 1)
                r = fit(m, mse, (X, Y), steps=4, quiet=True, checkpoint=tmp / "full.pt")
        finally:
            tr.torch.save = real
        tmp_left = list(tmp.glob("full.pt*.tmp"))
        return (r.steps == 4 and r.save_error is not None and not tmp_left,
                f"model in memory, save_error set, {len(tmp_left)} .tmp left")

    def short_run_sigterm():
        p = tmp / "short.pt"

        def fn(m, b, step):
            if step == 80:
                os.kill(os.getpid(), signal.SIGTERM)
            return mse(m, b)
        try:
            fit(nn.Linear(3, 1), fn, (X, Y), steps=90, quiet=True, checkpoint=p)
        except KeyboardInterrupt:
            pass
        step = torch.load(p, weights_only=True)["step"] if p.exists() else None
        return step == 81, f"checkpoint at step {step}"

    def ddpm_longer_resume():
        from companion import recipes

        os.environ["BOOK_CACHE"] = str(tmp / "cache2")
        x = torch.rand(8, 1, 28, 28)
        p = get_profile("ci")
        recipes.ddpm(x, p, "cpu", steps=3)
        try:
            recipes.ddpm(x, p, "cpu", steps=2, resume_from=recipes.ddpm_checkpoint(p, 3))
        except ValueError:
            return not recipes.ddpm_checkpoint(p, 2).exists(), "refused"
        return False, "accepted a longer run's checkpoint"

    values = [np.float64(0.5), np.int64(3), Path("/x"), (1, 2), {"a": np.float32(1)},
              get_profile("ci"), None, True]
    cases = [(f"config round trip: {type(v).__name__}", config_round_trip(v)) for v in values]
    cases += [
        ("NaN weights at the last step are not saved", nan_weights_at_last_step),
        ("fractional epochs", fractional_epochs),
        ("a full disk keeps the model in memory", full_disk),
        ("SIGTERM at step 80 of 90", short_run_sigterm),
        ("recipes.ddpm resume_from a longer run", ddpm_longer_resume),
        ("SIGTERM at a random moment, resumed", killed("SIGTERM")),
        ("SIGHUP at a random moment, resumed", killed("SIGHUP")),
        ("SIGINT at a random moment, resumed", killed("SIGINT")),
        ("SIGKILL at a random moment, resumed", killed("SIGKILL", save_every=1)),
    ]
    return cases


# --- the verdicts ----------------------------------------------------------------------------
def classify_error(call, pattern: str) -> tuple[str, str]:
    try:
        out = call()
    except Hang:
        raise
    except Exception as err:  # the verdict is the point: every exception is judged
        msg = f"{type(err).__name__}: {err}"
        clear_type = (isinstance(err, CLEAR_TYPES) or _raised_by_companion(err)) \
            and not isinstance(err, CRYPTIC_TYPES)
        if clear_type and re.search(pattern, str(err), re.IGNORECASE | re.DOTALL):
            return "clear error", msg
        return "cryptic error", msg
    values = [o for o in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(o)]
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in values):
        return "NaN passed through", "returned NaN/inf"
    return "silent wrong result", f"returned {type(out).__name__}"


def _raised_by_companion(err: BaseException) -> bool:
    """Whether companion's own code raised it (its checkpoint errors, a RuntimeError with a
    hint), not torch or numpy inside a call companion made."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}companion{os.sep}" in tb.tb_frame.f_code.co_filename


def run_case(kind: str, call, pattern=None) -> tuple[str, str]:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        if kind == "error":
            return classify_error(call, pattern)
        try:
            kept, detail = call()
        except Hang:
            raise
        except Exception as err:  # a fault that lost the work by raising
            return "lost work", f"{type(err).__name__}: {err}"
        return ("work kept" if kept else "lost work"), detail
    except Hang:
        return "hang", f"no result after {LIMIT_S} s"
    finally:
        signal.alarm(0)


def main(argv=None) -> Counter:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = parser.parse_args(argv)
    os.environ.setdefault("BOOK_PROGRESS", "0")
    import warnings

    warnings.simplefilter("ignore")  # the probes judge errors, not warnings
    start = time.perf_counter()
    counts: Counter = Counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cases = []
        for name, fn, domain, fine in image_cases():
            for variant, x, pattern in bad_images(domain):
                if variant in fine:
                    continue
                cases.append((f"{name}: {variant}", "error", lambda fn=fn, x=x: fn(x),
                              pattern))
        cases += [(n, "error", c, p) for n, c, p in argument_cases()]
        cases += [(n, "error", c, p) for n, c, p in fit_cases(tmp)]
        cases += [(n, "keep", c, None) for n, c in keep_cases(tmp)]
        for name, kind, call, pattern in cases:
            verdict, detail = run_case(kind, call, pattern)
            counts[verdict] += 1
            rows.append((verdict, name, detail))
            if args.verbose:
                print(f"{verdict:20s} {name}: {detail[:150]}".replace("\n", " "))
        (tmp / "ro").chmod(0o700)
    order = ["clear error", "cryptic error", "silent wrong result", "NaN passed through",
             "lost work", "work kept", "hang"]
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s:")
    for v in order:
        print(f"  {v:20s} {counts.get(v, 0)}")
    for v in ("cryptic error", "silent wrong result", "NaN passed through", "lost work",
              "hang"):
        for verdict, name, detail in rows:
            if verdict == v:
                print(f"{v}: {name}: {detail[:200]}".replace("\n", " "))
    return counts


if __name__ == "__main__":
    main()
