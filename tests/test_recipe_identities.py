"""Every recipe's checkpoints keep their names and identities (tests/data/recipe_identities.json).

A stored checkpoint loads only while the run that asks for it has the identity it was saved
with (`companion.run.checkpoint.identity`: the model's class, size and module tree, the
config, the data's shapes and checksums, the optimizer, the EMA decay, the batch size) and
its file name (`checkpoint_path`). Moving or tidying `companion.recipes` must change
neither, or every reader's cache and the shipped weights would train again.

Each recipe that trains is called here on tiny fake data of the right shapes, in the ci, cpu
and gpu profiles, with `Run.session` (where fit computes the identity, before any update)
replaced by a recorder that takes no step, and `seed_from` (an early run resumed) by one
that records what it would check. Nothing trains and nothing is written. What is recorded:
the file name, the updates the run is asked for (its budget: a shipped file must have as
many, tests/test_shipped.py), and the identity with the module tree as its SHA-256 and
line count and the data's per-row sums left out (the shapes, dtypes and sampled sums stay).

When a recipe is meant to change (and so to retrain), write the file again:
    python tests/test_recipe_identities.py --write
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "data" / "recipe_identities.json"
PROFILES = ("ci", "cpu", "gpu")


def _summary(ident: dict) -> dict:
    """The identity as JSON: the module tree as its hash, the data without per-row sums."""
    out = dict(ident)
    structure = out.pop("structure")
    out["structure"] = {"lines": len(structure),
                        "sha256": hashlib.sha256("\n".join(structure).encode()).hexdigest()}
    if "data" in out:
        out["data"] = [{k: v for k, v in d.items() if k != "rows"} for d in out["data"]]
    return json.loads(json.dumps(out))


@contextlib.contextmanager
def recording(monkeypatch, calls: list):
    """fit and the resume of an early run record what they would check, and take no step."""
    from companion import train
    from companion.run import checkpoint as ck
    from companion.run import session

    class Average(train.EMA):  # at step 0 the average is the model: no copy of its weights
        def __init__(self, model, decay=0.999):
            super().__init__(torch.nn.Identity(), decay)  # the decay checked as fit checks it
            self.model = model

    def record(self, checkpoint, config, ema_decay, *_):
        ident = ck.identity(self.model, config, self.tensors if checkpoint is not None else (),
                            self.optimizer, ema_decay, self.batch_size)
        calls.append({"checkpoint": Path(checkpoint).name if checkpoint is not None else None,
                      "updates": int(self.total), "identity": _summary(ident)})
        self.total = self.step  # no update: the model stays as the recipe built it
        yield self

    def seed_from(path, source, expected, total):
        calls.append({"checkpoint": Path(path).name, "resume_from": Path(source).name,
                      "total": int(total), "identity": _summary(expected)})

    monkeypatch.setattr(session.Run, "session", contextlib.contextmanager(record))
    monkeypatch.setattr(ck, "seed_from", seed_from)
    monkeypatch.setattr(train, "EMA", Average)
    yield calls


def _cases(recipes, profile):
    """(name, call) for every recipe that trains, on fake data of the right shapes."""
    from companion.toy import GaussianMixture

    g = torch.Generator().manual_seed(0)
    # 8-bit grey levels with a bar of ink of its own size and place in each image (chapter
    # 21's captions cut the ink's width, thickness and slant into three levels)
    x = torch.randint(0, 100, (64, 1, 28, 28), generator=g)
    for i, (r, c, h, w) in enumerate(torch.randint(2, 12, (64, 4), generator=g).tolist()):
        x[i, 0, r:r + h + 4, c + r // 3:c + r // 3 + w] = 230
    x = x.float() / 255
    labels = torch.arange(64) % 10
    data = SimpleNamespace(x_train=x, y_train=labels, source="test")
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.2)
    tokens = torch.randint(0, 20, (64, 16), generator=g)
    p, dev = profile, "cpu"
    R = recipes

    def flow_teacher():
        return R.flow_matching(x, p, dev)[0]

    def vq(variant):
        return R.vqvae(x, p, dev, variant=variant)[0]

    def latent(**kw):
        return R.latent_denoiser(R.latent_vae(x, p, dev, source="test")[0], x, p, dev,
                                 scale=1.25, **kw)

    return {
        "chapter1_autoencoder": lambda: R.chapter1_autoencoder("ae", x, p, dev),
        "chapter1_autoencoder-settings": lambda: R.chapter1_autoencoder(
            "cae", x, p, dev, latent=2, radius=2.0),
        "single_level_vae": lambda: R.single_level_vae(x, p, dev, source="test"),
        "hierarchical_vae": lambda: R.hierarchical_vae(x, p, dev, source="test"),
        "hierarchical_vae-free_bits": lambda: R.hierarchical_vae(
            x, p, dev, source="test", free_bits=0.5, name="hvae-fb", epochs=3),
        "eight_bit_vae": lambda: R.eight_bit_vae(x, p, dev, source="test"),
        "eight_bit_vae-hierarchical": lambda: R.eight_bit_vae(x, p, dev, source="test",
                                                              hierarchical=True),
        "toy_eps": lambda: R.toy_eps(mix, p, dev),
        "ddpm": lambda: R.ddpm(x, p, dev),
        "ddpm-snapshots": lambda: R.snapshots(R.ddpm, R.ddpm_checkpoint, x, p, dev),
        "classifier": lambda: R.classifier(data, p, dev),
        "classifier-seed1": lambda: R.classifier(data, p, dev, seed=1),
        "ddpm_cond": lambda: R.ddpm_cond(x, labels, p, dev),
        "noisy_classifier": lambda: R.noisy_classifier(data, p, dev),
        "latent_vae": lambda: R.latent_vae(x, p, dev, source="test"),
        "latent_denoiser": lambda: latent(),
        "latent_denoiser-conditional": lambda: latent(labels=labels),
        "latent_denoiser-early": lambda: latent(steps=100),
        "flow_matching": lambda: R.flow_matching(x, p, dev),
        "masked_diffusion": lambda: R.masked_diffusion(x, p, dev),
        "reflow": lambda: R.reflow(flow_teacher(), (x * 2 - 1, torch.randn_like(x)), p, dev),
        "progressive_distillation": lambda: R.progressive_distillation(flow_teacher(), x, p,
                                                                       dev),
        "consistency_distillation": lambda: R.consistency_distillation(flow_teacher(), x, p,
                                                                       dev),
        "edm": lambda: R.edm(x, p, dev),
        "edm-snapshots": lambda: R.snapshots(R.edm, R.edm_checkpoint, x, p, dev,
                                             P_mean=-0.4, P_std=1.4),
        "vdm": lambda: R.vdm(x, p, dev),
        "vdm-sigmoid": lambda: R.vdm(x, p, dev, weighting="sigmoid"),
        **{f"vqvae-{v}": (lambda v=v: R.vqvae(x, p, dev, variant=v)) for v in R.VQ_VARIANTS},
        "vqvae-plain-seed1": lambda: R.vqvae(x, p, dev, variant="plain", seed=1),
        "code_prior-masked": lambda: R.code_prior(x, p, dev, vq=vq("fsq"), variant="fsq"),
        "code_prior-autoregressive-snapshots": lambda: R.snapshots(
            R.code_prior, R.code_prior_checkpoint, x, p, dev, total=R.vq_settings(p)["steps"],
            vq=vq("ema"), variant="ema", kind="autoregressive"),
        "code_prior-masked-long-snapshots": lambda: R.snapshots(
            R.code_prior, R.code_prior_checkpoint, x, p, dev,
            total=R.vq_settings(p)["long_steps"], fractions=R.long_stages(p), vq=vq("fsq"),
            variant="fsq", long=True),
        **{f"ch21_model-{n}-label": (lambda n=n: R.ch21_model(x, labels, p, dev, network=n))
           for n in ("unet", "dit-S", "dit-M", "dit-L", "dit-L/2")},
        "ch21_model-unet-label-seed1": lambda: R.ch21_model(x, labels, p, dev, network="unet",
                                                            seed=1),
        **{f"ch21_model-dit-M-{c}": (lambda c=c: R.ch21_model(x, labels, p, dev, cond=c))
           for c in ("adaln", "in_context", "cross")},
        **{f"ch21_model-unet-{c}": (lambda c=c: R.ch21_model(x, labels, p, dev, network="unet",
                                                             cond=c))
           for c in ("pooled", "in_context", "cross")},
        "ch21_snapshots": lambda: R.ch21_snapshots(x, labels, p, dev, network="dit-S"),
        **{f"lm_model-{k}": (lambda k=k: R.lm_model(tokens, 20, p, dev, kind=k))
           for k in R.LM_KINDS + ("fim",)},
        "lm_snapshots": lambda: R.lm_snapshots(tokens, 20, p, dev, kind="masked"),
        "lm_snapshots-long": lambda: R.lm_snapshots(tokens, 20, p, dev, kind="masked",
                                                    long=True, fractions=(0.5,)),
    }


def record_all(monkeypatch, tmp_path, profiles=PROFILES) -> dict:
    """{profile: {case: [what each fit and resume of the call would check, in order]}}."""
    from companion import recipes
    from companion.run.profiles import get_profile

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))  # no stored checkpoint changes a path
    for var in ("BOOK_SMOKE", "BOOK_TRAIN", "BOOK_WORK_LOG"):
        monkeypatch.delenv(var, raising=False)
    out = {}
    for name in profiles:
        out[name] = {}
        for case, call in _cases(recipes, get_profile(name)).items():
            calls = []
            with recording(monkeypatch, calls):
                call()
            out[name][case] = calls
    return out


def differences(golden, now, where: str = "") -> list[str]:
    """Where `now` differs from `golden`: floats within 1e-6 relative (as the checkpoints
    compare them), everything else exactly."""
    from companion.run.checkpoint import same_value

    if isinstance(golden, dict) and isinstance(now, dict):
        out = [f"{where}/{k}: only in the golden file" for k in golden if k not in now]
        out += [f"{where}/{k}: not in the golden file" for k in now if k not in golden]
        for k in golden:
            if k in now:
                out += differences(golden[k], now[k], f"{where}/{k}")
        return out
    if isinstance(golden, list) and isinstance(now, list) and len(golden) == len(now) and \
            any(isinstance(g, (dict, list)) for g in golden):
        return [d for i, (g, n) in enumerate(zip(golden, now, strict=True))
                for d in differences(g, n, f"{where}[{i}]")]
    if not same_value(golden, now):
        return [f"{where}: {str(golden)[:120]} -> {str(now)[:120]}"]
    return []


@pytest.mark.slow  # the gpu profile builds chapter 9's 15M U-Net some thirty times
@pytest.mark.parametrize("profile", PROFILES)
def test_every_recipes_checkpoint_keeps_its_name_and_identity(monkeypatch, tmp_path, profile):
    golden = json.loads(GOLDEN.read_text())[profile]
    diff = differences(golden, record_all(monkeypatch, tmp_path, (profile,))[profile],
                       profile)
    assert not diff, ("recipes whose checkpoints changed name or identity (every cache and "
                      "shipped file of theirs would train again):\n  " + "\n  ".join(diff[:40]))


def test_the_comparison_sees_a_changed_setting():
    """A planted change in a config, a file name or a structure is found; a float's last
    digits are not."""
    a = {"ci": {"ddpm": [{"checkpoint": "ch9-ddpm-ci.pt",
                          "identity": {"config": {"lr": 0.002, "T": 100},
                                       "structure": {"lines": 3, "sha256": "ab"}}}]}}
    assert differences(a, json.loads(json.dumps(a))) == []
    b = json.loads(json.dumps(a))
    b["ci"]["ddpm"][0]["identity"]["config"]["lr"] = 0.002 * (1 + 1e-9)
    assert differences(a, b) == []
    b["ci"]["ddpm"][0]["identity"]["config"]["T"] = 200
    b["ci"]["ddpm"][0]["checkpoint"] = "ch9-ddpm-cpu.pt"
    assert differences(a, b) == ["/ci/ddpm[0]/checkpoint: ch9-ddpm-ci.pt -> ch9-ddpm-cpu.pt",
                                 "/ci/ddpm[0]/identity/config/T: 100 -> 200"]
    b["ci"]["ddpm"].append(b["ci"]["ddpm"][0])
    assert len(differences(a, b)) == 1


def dump(recorded: dict) -> str:
    """The golden file's text: one line per fit or resume, so that a change shows as the
    line of the call it changes."""
    def block(items, indent, inner):
        lines = [f"{indent} {json.dumps(k)}: {inner(v, indent + ' ')}" for k, v in items]
        return "{\n" + ",\n".join(lines) + f"\n{indent}}}"

    def calls(cs, indent):
        return "[\n" + ",\n".join(f"{indent}  {json.dumps(c, sort_keys=True)}" for c in cs) \
            + f"\n{indent} ]"

    return block(sorted(recorded.items()), "",
                 lambda cases, ind: block(sorted(cases.items()), ind, calls)) + "\n"


if __name__ == "__main__":  # python tests/test_recipe_identities.py --write
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    import os
    import tempfile

    # no shipped set, as under pytest (tests/conftest.py): a listed full run skips the
    # resume of its early run (recipes.common._continue), which would go unrecorded
    os.environ["BOOK_SHIPPED"] = tempfile.mkdtemp(prefix="book-identities-shipped-")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's
    import companion

    print(f"recording the recipes of {Path(companion.__file__).parent}")
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        recorded = record_all(mp, Path(tmp))
    GOLDEN.write_text(dump(recorded))
    print(f"wrote {GOLDEN} ({sum(len(c) for p in recorded.values() for c in p.values())} calls)")
