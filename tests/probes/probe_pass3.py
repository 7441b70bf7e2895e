"""Issue 45's misuse sample (nothing lost, nothing hangs, third pass): counts the outcomes.

    python -m tests.probes.probe_pass3            # about a minute and a half on 2 CPU cores
    python -m tests.probes.probe_pass3 -v         # one line per case

Written beside the fixes of issue 45, from its list, with variants the tests do not hold
(other spellings of a yes/no variable, other shapes, other domains). Each case gives one
verdict:
  clear    bad input or a fault refused with an error naming what was wrong;
  correct  the right result (a run that keeps its work, a resume equal to an
           uninterrupted run, a wait that ends when asked);
  cryptic  an error that does not say what was wrong (a bare OSError, an IndexError);
  silent   a wrong result without a word;
  lost     training done, then its result or checkpoint lost;
  hang     no answer within the case's time limit (SIGALRM in this process; a bounded
           process group for the torchrun cases).
Measurements, not tests: the tests are tests/test_keeps_and_waits.py and
tests/test_silent_inputs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 15


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def _mse(m, b):
    x, y = b
    return ((m(x) - y) ** 2).mean()


X, Y = torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), \
    torch.randn(16, 1, generator=torch.Generator().manual_seed(1))


def _fit(tmp, model=None, name="m.pt", loss=_mse, **kw):
    from companion.train import fit

    kw.setdefault("steps", 3)
    model = model or nn.Linear(3, 1)
    return fit(model, loss, (X, Y), quiet=True, checkpoint=Path(tmp) / name, **kw)


class Calls:
    def __init__(self, fn=_mse):
        self.n, self.fn = 0, fn

    def __call__(self, m, b):
        self.n += 1
        return self.fn(m, b)


# --- lost work -------------------------------------------------------------------------------
def _save_read(tmp, history=None, extra=None, config=None):
    """save_checkpoint then read_checkpoint: lost when it writes what it then refuses."""
    import companion.run.checkpoint as ck

    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    ident = ck.identity(model, None)
    if config is not None:
        ident["config"]["v"] = config
    path = Path(tmp) / "s.pt"
    try:
        ck.save_checkpoint(path, model, opt, None, 1, history or {"step": [1], "loss": [0.5]},
                           ident, extra=extra)
    except ck.CheckpointSaveError:
        return "clear"
    try:
        ck.read_checkpoint(path)
    except ck.CheckpointMismatchError:
        return "lost"
    return "correct"


class NumpyExtra(nn.Linear):
    def get_extra_state(self):
        return {"table": np.arange(3.0)}

    def set_extra_state(self, state):
        self.table = state["table"]


def _refused_before_or_lost(tmp, make_path, model=None):
    calls = Calls()
    try:
        _fit(tmp, model=model, loss=calls, name=make_path)
    except Exception as err:
        return "clear" if calls.n == 0 and "checkpoint" in str(err).lower() else (
            "lost" if calls.n else "cryptic")
    try:  # it trained and saved: can the next run read it?
        _fit(tmp, model=model, name=make_path)
    except Exception:
        return "lost"
    return "correct"


def _read_only_mid_run(tmp, what: str):
    import companion.run.checkpoint as ck

    real_save, n = torch.save, []

    def save(obj, f, *a, **kw):
        n.append(f)
        if len(n) > 1:
            if what == "ro":
                Path.unlink = read_only
            raise OSError(errno.EROFS if what == "ro" else errno.ENOSPC, what, str(f))
        return real_save(obj, f, *a, **kw)

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    old_unlink = Path.unlink
    ck.torch.save = save
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _fit(tmp, steps=6, save_every=2)
    except Exception:
        return "lost"
    finally:
        ck.torch.save, Path.unlink = real_save, old_unlink
    return "correct" if result.steps == 6 and result.save_error else "silent"


# --- waits -----------------------------------------------------------------------------------


def _lock_wait(tmp):
    """Another process holds the lock: can this run give up (lock_timeout) and say who?"""
    from companion.train import fit
    from tests.test_keeps_and_waits import HOLDER

    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(Path(tmp) / "m.pt.lock")],
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        kw = {"lock_timeout": 1.0} if "lock_timeout" in inspect.signature(fit).parameters \
            else {}
        try:
            _fit(tmp, **kw)
        except Hang:
            return "hang"
        except Exception as err:
            return "clear" if str(proc.pid) in str(err) else "cryptic"
        return "silent"
    finally:
        proc.kill()
        proc.wait()


def _symlink_self_wait(tmp):
    tmp = Path(tmp)
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")

    def nested(m, b):
        _fit(tmp / "link", name="m.pt", steps=1)
        return _mse(m, b)

    try:
        _fit(tmp / "real", loss=nested, steps=2)
    except Hang:
        return "hang"
    except Exception as err:
        return "clear" if "already training" in str(err) else "cryptic"
    return "silent"


def _fifo(tmp):
    os.mkfifo(Path(tmp) / "m.pt")
    try:
        _fit(tmp)
    except Hang:
        return "hang"
    except Exception as err:
        return "clear" if "regular file" in str(err) else "cryptic"
    return "silent"


def _no_flock(tmp):
    import companion.run.checkpoint as ck

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    old, ck.fcntl.flock = ck.fcntl.flock, no_locks
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            _fit(tmp)
    except OSError as err:
        return "clear" if "lock" in str(err) and type(err) is not OSError else "cryptic"
    finally:
        ck.fcntl.flock = old
    return "correct" if any("cannot lock" in str(w.message) for w in said) else "silent"


def _full_disk(tmp):
    import companion.run.checkpoint as ck

    def full(obj, f, *a, **kw):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    class Usage:
        total, used, free = 10**9, 10**9, 0

    old = ck.torch.save, ck.shutil.disk_usage
    ck.torch.save, ck.shutil.disk_usage = full, lambda p: Usage
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            _fit(tmp)
    except Exception:
        return "lost"
    finally:
        ck.torch.save, ck.shutil.disk_usage = old
    return "clear" if any("full" in str(w.message) for w in said) else "cryptic"


# --- silent results of fit ---------------------------------------------------------------------
def _bn_half_step(tmp):
    def run(name, at=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

        def loss(m, b, step):
            out = _mse(m, b)
            if step == at:
                raise KeyboardInterrupt
            return out

        from companion.train import fit

        fit(model, loss, (X, Y), steps=8, batch_size=4, quiet=True, save_every=100,
            checkpoint=Path(tmp) / name, generator=torch.Generator().manual_seed(2))
        return model.state_dict()

    ref = run("ref.pt")
    with contextlib.suppress(KeyboardInterrupt):
        run("m.pt", at=5)
    again = run("m.pt")
    same = all(torch.allclose(again[k].float(), v.float()) for k, v in ref.items())
    return "correct" if same else "silent"


def _tree(tmp, before, after):
    from companion.run.checkpoint import CheckpointMismatchError

    _fit(tmp, model=nn.Sequential(nn.Linear(3, 4), before, nn.Linear(4, 1)), steps=2)
    try:
        _fit(tmp, model=nn.Sequential(nn.Linear(3, 4), after, nn.Linear(4, 1)), steps=4)
    except CheckpointMismatchError:
        return "clear"
    return "silent"


# --- torchrun ----------------------------------------------------------------------------------
def _ranks(tmp, mode, ranks=2, **env_more):
    from tests.test_keeps_and_waits import RANKS, bounded, clean_env, free_port

    tmp = Path(tmp)
    script = tmp / "ranks.py"
    script.write_text(RANKS)
    args = [str(script), mode, str(tmp / "out"), str(tmp / "m.pt")]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={ranks}", *args] if ranks else [sys.executable, *args])
    env = clean_env(BOOK_DIST_TIMEOUT="4", **env_more)
    if not ranks:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = bounded(cmd, env, limit=40)
    said = {p.name.split(".")[-1]: p.read_text() for p in tmp.glob("out.*")}
    return proc, said


def _disagree(tmp, mode, named):
    proc, said = _ranks(tmp, mode)
    if proc.returncode == "hang":
        return "hang"
    if said and all("disagree" in t and named in t for t in said.values()):
        return "clear"
    return "silent" if all(t == "done" for t in said.values()) else "cryptic"


def _sleeping_rank(tmp):
    proc, said = _ranks(tmp, "sleep")
    if proc.returncode == "hang":
        return "hang"
    return "clear" if "waited" in said.get("0", "") else "cryptic"


def _term_rank(tmp):
    proc, said = _ranks(tmp, "term")
    if proc.returncode == "hang":
        return "hang"
    ok = set(said) == {"0", "1"} and all(t.startswith("KeyboardInterrupt") for t in
                                         said.values())
    return "correct" if ok else "cryptic"


def _plain_env(tmp, rank):
    proc, said = _ranks(tmp, "plain", ranks=0, RANK=str(rank), WORLD_SIZE="2")
    if proc.returncode == "hang":
        return "hang"
    text = " ".join(said.values()) + proc.stderr
    return "clear" if "WORLD_SIZE=2" in text or "RANK=2" in text else "cryptic"


# --- environment, command line -------------------------------------------------------------------
def _flag(var, value, read):
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        on = read()
    except ValueError as err:
        return "clear" if var in str(err) else "cryptic"
    finally:
        if old is None:
            os.environ.pop(var)
        else:
            os.environ[var] = old
    wanted = {"false": False, "no": False, "off": False, "FALSE": False, "On": True,
              "yes": True}.get(value)
    if wanted is None:
        return "silent"
    return "correct" if on == wanted else "silent"


def _cli(argv, env_profile=None):
    import companion.__main__ as cli
    from companion.run import profiles

    seen = {}

    def stub(d, p, dev):
        seen.update(p=p.name, process=profiles.get_profile().name)
        raise SystemExit(0)

    old = dict(cli.COMMANDS)
    old_env = os.environ.get("BOOK_PROFILE")
    import companion.data as data

    old_load, data.load = data.load, lambda *a, **kw: None
    for k in cli.COMMANDS:
        cli.COMMANDS[k] = ("stub", stub)
    if env_profile:
        os.environ["BOOK_PROFILE"] = env_profile
    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            cli.main(argv)
    except SystemExit as stop:
        if not seen:
            return "clear" if stop.code == 2 else "cryptic"
    except ValueError:
        return "cryptic"
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(old)
        data.load = old_load
        if old_env is None:
            os.environ.pop("BOOK_PROFILE", None)
        else:
            os.environ["BOOK_PROFILE"] = old_env
    if "gpu" in argv:
        return "silent"  # it started the gpu recipe on the CPU without a word
    return "correct" if seen.get("process") == seen.get("p") else "cryptic"


# --- results, recipes --------------------------------------------------------------------------
def _results(tmp, what):
    from companion.run import results

    os.environ["BOOK_CACHE"] = str(tmp)
    if what == "case":
        results.save("ch9", {"fd": 1.0}, "CI")
        return "correct" if results.load("ch9", "ci") == {"fd": 1.0} else "silent"
    path = results.results_path("ch9", "ci")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text({"list": "[1, 2]", "nan": '{"fd": NaN}', "inf": '{"fd": Infinity}'}[what])
    results.load("ch9", "ci")
    return None  # returned: silent (see run_case)


def _foreign_copy(tmp):
    from companion import recipes
    from companion.run import profiles

    os.environ["BOOK_CACHE"] = str(tmp)
    p = profiles.get_profile("ci")
    foreign = Path(tmp) / "foreign.pt"
    _fit(tmp, name="foreign.pt", steps=1)
    try:
        recipes.ddpm(torch.rand(8, 1, 28, 28), p, "cpu", resume_from=foreign)
    except Exception:
        return "silent" if recipes.ddpm_checkpoint(p).exists() else "clear"
    return "silent"


def _atomic_copy(tmp):
    import shutil

    from companion import recipes
    from companion.run import profiles

    os.environ["BOOK_CACHE"] = str(tmp)
    p = profiles.get_profile("ci")
    old_settings = recipes.ddpm_settings
    recipes.ddpm_settings = lambda prof: dict(preset="tiny", T=100, steps=4, batch_size=4,
                                              lr=1e-3, ema=0.9)
    x = torch.rand(8, 1, 28, 28)

    def interrupted(src, dst, *a, **kw):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read(100))
        raise KeyboardInterrupt

    old_copy = shutil.copyfile
    try:
        recipes.ddpm(x, p, "cpu", steps=2)
        shutil.copyfile = interrupted
        with contextlib.suppress(KeyboardInterrupt):
            recipes.ddpm(x, p, "cpu", resume_from=recipes.ddpm_checkpoint(p, 2))
        shutil.copyfile = old_copy
        try:
            recipes.ddpm(x, p, "cpu", resume_from=recipes.ddpm_checkpoint(p, 2))
        except Exception:
            return "lost"  # a damaged file at the full run's path
        return "correct"
    finally:
        shutil.copyfile, recipes.ddpm_settings = old_copy, old_settings


# --- the list ------------------------------------------------------------------------------------
def cases():
    from companion import diffusion, flow, kl, metrics, plot, sde
    from companion.models.autoencoder import Autoencoder, worst_perturbation
    from companion.models.classifier import Classifier, accuracy
    from companion.models.hvae import HierarchicalVAE, MarkovianHVAE
    from companion.models.unet import UNet, preset
    from companion.models.vae import VAE
    from companion.run import glue, profiles, runtime

    ab = torch.cumprod(1 - diffusion.linear_betas(10), 0)
    img = torch.rand(2, 1, 28, 28)
    out = [
        # lost
        ("save: history of np.float32 losses", "fn",
         lambda t: _save_read(t, history={"step": [1], "loss": [np.float32(0.5)]})),
        ("save: extra {'seed': np.int64(3)}", "fn",
         lambda t: _save_read(t, extra={"seed": np.int64(3)})),
        ("save: identity config np.float64", "fn", lambda t: _save_read(t, config=np.float64(.5))),
        ("save: extra np.bool_ and np.int32 in a list", "fn",
         lambda t: _save_read(t, extra={"flags": [np.bool_(True), np.int32(2)]})),
        ("save: extra holding a NumPy array", "fn",
         lambda t: _save_read(t, extra={"a": np.arange(3)})),
        ("fit: get_extra_state holds a NumPy array", "fn",
         lambda t: _refused_before_or_lost(t, "m.pt", NumpyExtra(3, 1))),
        ("fit: file name of 238 characters", "fn",
         lambda t: _refused_before_or_lost(t, "m" * 235 + ".pt")),
        ("fit: file name of 250 characters", "fn",
         lambda t: _refused_before_or_lost(t, "m" * 247 + ".pt")),
        ("fit: folder turns read-only mid-run", "fn", lambda t: _read_only_mid_run(t, "ro")),
        ("fit: disk full mid-run (ENOSPC)", "fn", lambda t: _read_only_mid_run(t, "full")),
        # waits
        ("lock held by another process: give up", "fn", _lock_wait),
        ("fit in a loss on the same file via a symlink", "fn", _symlink_self_wait),
        ("FIFO at the checkpoint path", "fn", _fifo),
        ("folder without flock", "fn", _no_flock),
        ("full disk named as such", "fn", _full_disk),
        ("torchrun: rank 1 other batch size", "fn", lambda t: _disagree(t, "batch",
                                                                         "batch_size")),
        ("torchrun: rank 1 without checkpoint", "fn", lambda t: _disagree(t, "nockpt",
                                                                           "checkpoint")),
        ("torchrun: rank 1 other data seed", "fn", lambda t: _disagree(t, "seed", "data")),
        ("torchrun: rank 1 sleeps in its loss", "fn", _sleeping_rank),
        ("torchrun: SIGTERM to rank 1", "fn", _term_rank),
        ("python with RANK=0 WORLD_SIZE=2 left", "fn", lambda t: _plain_env(t, 0)),
        ("python with RANK=2 WORLD_SIZE=2", "fn", lambda t: _plain_env(t, 2)),
        # fit's silent results
        ("Ctrl-C after the forward pass, BatchNorm", "fn", _bn_half_step),
        ("resume Tanh checkpoint into ReLU", "fn", lambda t: _tree(t, nn.Tanh(), nn.ReLU())),
        ("resume Dropout(0.0) into Dropout(0.5)", "fn",
         lambda t: _tree(t, nn.Dropout(0.0), nn.Dropout(0.5))),
        ("resume LeakyReLU(0.1) into LeakyReLU(0.2)", "fn",
         lambda t: _tree(t, nn.LeakyReLU(0.1), nn.LeakyReLU(0.2))),
        # environment and command line
        ("BOOK_SMOKE=false", "fn", lambda t: _flag("BOOK_SMOKE", "false", profiles.smoke_mode)),
        ("BOOK_SMOKE=no", "fn", lambda t: _flag("BOOK_SMOKE", "no", profiles.smoke_mode)),
        ("BOOK_SMOKE=maybe", "fn", lambda t: _flag("BOOK_SMOKE", "maybe", profiles.smoke_mode)),
        ("BOOK_T4=off", "fn", lambda t: _flag("BOOK_T4", "off", runtime.t4_emulated)),
        ("BOOK_T4=FALSE", "fn", lambda t: _flag("BOOK_T4", "FALSE", runtime.t4_emulated)),
        ("BOOK_OFFLINE=On", "fn", lambda t: _flag("BOOK_OFFLINE", "On",
                                                  lambda: not _downloads())),
        ("--profile CI with a bad BOOK_PROFILE", "fn",
         lambda t: _cli(["classifier", "--profile", "CI", "--device", "cpu"], "nonsense")),
        ("--profile gpu on a CPU", "fn",
         lambda t: _cli(["ddpm", "--profile", "gpu", "--device", "cpu"])),
        ("--profile gpu on a CPU (flow)", "fn",
         lambda t: _cli(["flow", "--profile", "gpu", "--device", "cpu"])),
        # shapes
        ("velocity_from_eps batch 4 vs x_tau 1", "error",
         lambda t: flow.velocity_from_eps(torch.randn(4, 2), torch.randn(1, 2), 0.5)),
        ("eps_from_velocity batch 4 vs x_tau 1", "error",
         lambda t: flow.eps_from_velocity(torch.randn(4, 2), torch.randn(1, 2), 0.5)),
        ("eps_from_velocity (B, D) vs (D,)", "error",
         lambda t: flow.eps_from_velocity(torch.randn(4, 2), torch.randn(2), 0.5)),
        ("ode_log_likelihood prior (B, 1)", "error",
         lambda t: sde.ode_log_likelihood(lambda x, s: -x, torch.randn(3, 2),
                                          prior_log_p=lambda z: z.sum(1, keepdim=True))),
        ("ode_log_likelihood prior a scalar", "error",
         lambda t: sde.ode_log_likelihood(lambda x, s: -x, torch.randn(3, 2),
                                          prior_log_p=lambda z: z.sum())),
        # domains
        ("ChainClock NaN in alphas_bar", "error",
         lambda t: sde.ChainClock(torch.cat([ab[:3], ab.new_tensor([float("nan")]), ab[4:]]))),
        ("ChainClock alpha_bar_0 = 1 prepended", "error",
         lambda t: sde.ChainClock(torch.cat([ab.new_ones(1), ab]))),
        ("ode_log_likelihood rtol=True", "error",
         lambda t: sde.ode_log_likelihood(lambda x, s: -x, torch.randn(3, 2), rtol=True)),
        ("ode_log_likelihood atol=False", "error",
         lambda t: sde.ode_log_likelihood(lambda x, s: -x, torch.randn(3, 2), atol=False)),
        ("dequantize 0..255", "error", lambda t: sde.dequantize(img * 255)),
        ("flow_matching_loss 0..255", "error",
         lambda t: flow.flow_matching_loss(UNet(preset("tiny", T=5)), img * 255, 4)),
        ("linear_path NaN tau", "error",
         lambda t: flow.linear_path(img, img, float("nan"))),
        ("linear_path NaN in a tau tensor", "error",
         lambda t: flow.linear_path(img, img, torch.tensor([0.5, float("nan")]))),
        ("vp_to_linear(inf, 1)", "error", lambda t: flow.vp_to_linear(float("inf"), 1.0)),
        ("vp_to_linear(1, nan)", "error", lambda t: flow.vp_to_linear(1.0, float("nan"))),
        ("velocity_field K smaller than the model's", "error",
         lambda t: flow.velocity_field(UNet(preset("tiny", T=11)), 4)),
        ("results.load of a JSON list", "error", lambda t: _results(t, "list")),
        ("results.load of a NaN", "error", lambda t: _results(t, "nan")),
        ("results.load of an Infinity", "error", lambda t: _results(t, "inf")),
        ("results.save 'CI' then load 'ci'", "fn", lambda t: _results(t, "case")),
        # left from the earlier probe
        ("glue NaN", "error", lambda t: glue.glue("x", float("nan"), display=False)),
        ("glue -inf (NumPy)", "error", lambda t: glue.glue("x", -np.float64("inf"),
                                                           display=False)),
        ("cosine_betas(s=-1)", "error", lambda t: diffusion.cosine_betas(10, s=-1)),
        ("cosine_betas(max_beta=0)", "error", lambda t: diffusion.cosine_betas(10, max_beta=0)),
        ("VAE(hidden=(0,))", "error", lambda t: VAE(hidden=(0,))),
        ("Classifier(width=0)", "error", lambda t: Classifier(width=0)),
        ("Autoencoder(latent_dim=2.7)", "error", lambda t: Autoencoder(latent_dim=2.7)),
        ("Autoencoder(hidden=(64.5,))", "error", lambda t: Autoencoder(hidden=(64.5,))),
        ("VAE.elbo_terms(n_samples=0)", "error",
         lambda t: VAE(4).elbo_terms(img.round(), n_samples=0)),
        ("HierarchicalVAE.elbo_terms(n_samples=0)", "error",
         lambda t: HierarchicalVAE().elbo_terms(img.round(), n_samples=0)),
        ("MarkovianHVAE.elbo_terms(n_samples=0)", "error",
         lambda t: MarkovianHVAE().elbo_terms(img.round(), n_samples=0)),
        ("accuracy with one label", "error",
         lambda t: accuracy(Classifier(width=2).eval(), img, torch.tensor([1]))),
        ("worst_perturbation(radius=nan)", "error",
         lambda t: worst_perturbation(Autoencoder(2), img, float("nan"))),
        ("mean_top_probability on an empty batch", "error",
         lambda t: metrics.mean_top_probability(torch.zeros(0, 10))),
        ("kl_quadrature on a decreasing grid", "error",
         lambda t: kl.kl_quadrature(lambda g: -g ** 2, lambda g: -g ** 2,
                                    torch.linspace(3, -3, 50))),
        ("image_grid on 0..255", "error", lambda t: plot.image_grid(img * 255)),
        ("image_grid on [-1, 1]", "error", lambda t: plot.image_grid(img * 2 - 1)),
        ("ddpm: foreign checkpoint as resume_from", "fn", _foreign_copy),
        ("ddpm: Ctrl-C during the early checkpoint's copy", "fn", _atomic_copy),
    ]
    return out


def _downloads():
    from companion.data import downloads_allowed

    return downloads_allowed()


def run_case(name: str, kind: str, call, tmp: str) -> str:
    old = signal.signal(signal.SIGALRM, _alarm)
    # the torchrun cases bound their own process groups (40 s)
    signal.alarm(90 if "torchrun" in name or "python with" in name else LIMIT_S)
    try:
        got = call(tmp)
    except Hang:
        return "hang"
    except (ValueError, TypeError, OSError, LookupError, RuntimeError) as err:
        if kind == "fn":
            return "cryptic"
        bare = type(err) in (IndexError, KeyError, OSError, RuntimeError)
        ours = "companion" in traceback.extract_tb(err.__traceback__)[-1].filename
        return "clear" if ours and not bare else "cryptic"
    except Exception:
        return "cryptic"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close("all")
    if kind == "error":
        return "silent"
    return got or "silent"


def main(argv=None) -> Counter:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", action="store_true", help="one line per case")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    counts, start = Counter(), time.perf_counter()
    keep_env = {k: os.environ.get(k) for k in ("BOOK_CACHE", "BOOK_PROFILE")}
    for name, kind, call in cases():
        with tempfile.TemporaryDirectory() as tmp:
            verdict = run_case(name, kind, call, tmp)
        for k, v in keep_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        counts[verdict] += 1
        if args.v:
            print(f"{verdict:8s} {name}", flush=True)
    print(f"{sum(counts.values())} cases in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{counts[k]} {k}" for k in ("clear", "correct", "cryptic", "silent",
                                                   "lost", "hang")))
    return counts


if __name__ == "__main__":
    main()
