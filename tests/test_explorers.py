"""Tests of what the explorers compute (the widgets only wire sliders to these)."""

import base64
import functools
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from companion.explorers import elbo_terms, pinned_samples, plot_q_against_posterior  # noqa: E402
from companion.toy import LinearGaussian  # noqa: E402

F64 = torch.float64


def model():
    return LinearGaussian(torch.tensor([[1.5], [-0.5]], dtype=F64),
                          torch.tensor([0.2, 0.1], dtype=F64), 0.6)


def test_elbo_terms_satisfy_both_identities():
    m = model()
    x = torch.tensor([1.0, -0.4], dtype=F64)
    t = elbo_terms(m, x, 0.3, 0.8)
    assert abs(t["elbo"] + t["gap"] - t["log_px"]) < 1e-12
    assert abs(t["reconstruction"] - t["kl_prior"] - t["elbo"]) < 1e-12
    pm, pc = m.posterior(x)
    tight = elbo_terms(m, x, pm[0, 0].item(), pc[0, 0].sqrt().item())
    assert abs(tight["gap"]) < 1e-12 and abs(tight["elbo"] - tight["log_px"]) < 1e-12
    with pytest.raises(ValueError, match="std must be > 0"):
        elbo_terms(m, x, 0.0, -1.0)


def test_plot_returns_the_same_terms():
    m = model()
    x = torch.tensor([1.0, -0.4], dtype=F64)
    _, terms = plot_q_against_posterior(m, x, 0.3, 0.8)
    assert terms == elbo_terms(m, x, 0.3, 0.8)


def test_pinned_samples_have_variance_sigma2_plus_s2():
    xs = pinned_samples(1.0, 1.5, 1.5, 200_000, torch.Generator().manual_seed(0))
    assert abs(xs.var().item() - 2 * 1.5**2) < 0.05


def test_latent_page_carries_the_decoder(tmp_path):
    """Chapter 6's web explorer: the decoder saved in half precision decodes as the VAE does
    (to half-precision rounding), and the sliders are latent_explorer's (-2.5..2.5 by 0.05)."""
    from companion.models.vae import VAE
    from companion.page_explorers import (
        latent_decoder,
        latent_mean_image,
        page_state,
        save_latent_decoder,
    )

    vae = VAE(latent_dim=2, hidden=(64,))
    save_latent_decoder(vae, tmp_path / "dec.npz")
    z = torch.randn(5, 2)
    with torch.no_grad():
        want = vae.mean_image(z)[:, 0]
    got = latent_mean_image(latent_decoder(tmp_path / "dec.npz"), z)
    assert (got - want).abs().max() < 5e-3
    state = page_state("latent", stored=str(tmp_path / "dec.npz"), span=2.5)
    values = state["controls"][0]["values"]
    assert len(values) == 101 and values[0] == -2.5 and values[-1] == 2.5
    with pytest.raises(ValueError, match="arch='mlp'"):
        save_latent_decoder(VAE(latent_dim=2, arch="conv"), tmp_path / "x.npz")


def test_a_chapter_stores_its_decoder_only_in_a_storing_run(tmp_path, monkeypatch):
    """store_latent_decoder writes under $BOOK_EXPLORERS, which tools/run_notebooks.py sets
    when it stores a chapter's outputs; nbval, Colab and dry runs write nothing."""
    from companion.models.vae import VAE
    from companion.page_explorers import STORE_VAR, latent_decoder, store_latent_decoder

    vae = VAE(latent_dim=2, hidden=(16,))
    monkeypatch.delenv(STORE_VAR, raising=False)
    assert store_latent_decoder(vae, "dec.npz") is None
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(STORE_VAR, str(tmp_path / "explorers"))
    path = store_latent_decoder(vae, "dec.npz")
    assert path == tmp_path / "explorers" / "dec.npz"
    assert [W.shape for W, _ in latent_decoder(path)] == [(16, 2), (784, 16)]


def _sweep(levels=3, shown=2, kinds=("blur", "noise")):
    """A small sweep of the kind chapter 20 stores: measure j of corruption c at level l is
    100 c + 10 l + j, digit q of it is filled with (l + q) / 8."""
    return {k: ("unit", [0.5 * l for l in range(levels)],
                [[100 * c + 10 * l + j for j in range(6)] for l in range(levels)],
                torch.tensor([[(l + q) / 8] for l in range(levels)
                              for q in range(shown)]).expand(-1, 784)
                .reshape(levels, shown, 28, 28))
            for c, k in enumerate(kinds)}


def test_corruption_page_carries_the_chapters_sweep(tmp_path, monkeypatch):
    """Chapter 20's explorer: store_corruptions writes only in a storing run, and the page's
    state holds each corruption's measures at each level, its strengths and its digits
    (0..255), in the order stored; a sweep of uneven shapes is refused by name."""
    import base64

    from companion.page_explorers import STORE_VAR, page_state, store_corruptions

    clean = {"lo": [0.9] * 6, "hi": [1.1] * 6}
    monkeypatch.delenv(STORE_VAR, raising=False)
    assert store_corruptions("sweep.npz", _sweep(), clean) is None
    monkeypatch.setenv(STORE_VAR, str(tmp_path))
    path = store_corruptions("sweep.npz", _sweep(), clean)
    state = page_state("corruption", stored=str(path))
    assert state["corruptions"] == ["blur", "noise"] and state["units"] == ["unit"] * 2
    assert state["controls"][0]["values"] == [0, 1, 2]

    def arr(p, key, dtype):
        return np.frombuffer(base64.b64decode(p[key]), dtype).reshape(p["shape"])

    m = arr(state["measures"], "f64", "<f8")
    assert m[1, 2, 4] == 124 and m.shape == (2, 3, 6)
    assert arr(state["strength"], "f64", "<f8")[0].tolist() == [0, 0.5, 1.0]
    img = arr(state["images"], "u8", "u1")
    assert img.shape == (2, 3, 2, 28, 28) and img[0, 2, 1, 5, 5] == 96  # 255 * 3 / 8
    uneven = {**_sweep(), "narrow": _sweep(levels=4)["blur"]}
    with pytest.raises(ValueError, match="every corruption needs strengths of one shape"):
        store_corruptions("bad.npz", uneven, clean)


def test_chain_page_carries_the_chapters_chain(tmp_path, monkeypatch):
    """Chapter 9's explorer: store_chain writes only in a storing run; the page's state
    holds the kept steps from T down to 0 as the slider's positions, x_t and the guess of
    x_0 at each as grey levels ([-1, 1] to 0..255), the schedule's SNR and the run's
    profile; frames of
    uneven shapes, and steps that do not fall to 0, are refused by name."""
    import base64

    from companion.page_explorers import STORE_VAR, page_state, store_chain

    def frames(steps=(20, 10, 0), shown=2):
        return {t: (torch.full((shown, 1, 28, 28), t / 20 - 1.0),
                    torch.full((shown, 1, 28, 28), 1 - t / 20)) for t in steps}

    snr = torch.linspace(10, 0.1, 20)
    monkeypatch.delenv(STORE_VAR, raising=False)
    assert store_chain("chain.npz", frames(), snr, "ci") is None
    monkeypatch.setenv(STORE_VAR, str(tmp_path))
    state = page_state("chain", stored=str(store_chain("chain.npz", frames(), snr, "ci")))
    assert state["controls"][0]["values"] == [20, 10, 0] and state["T"] == 20
    assert state["profile"] == "ci"

    def arr(key, dtype):
        p = state[key]
        return np.frombuffer(base64.b64decode(p[key if key in p else "u8"]), dtype).reshape(
            p["shape"])

    x_t, x0 = arr("x_t", "u1"), arr("x0", "u1")
    assert x_t.shape == (3, 2, 1, 28, 28) and x_t[2].max() == 0 and x0[2].min() == 255
    assert x_t[0].min() == x_t[0].max() == 128  # 255 * (0 + 1) / 2, rounded
    snr_state = np.frombuffer(base64.b64decode(state["snr"]["f64"]), "<f8")
    assert np.allclose(snr_state, snr.numpy())
    uneven = {**frames(), 5: (torch.zeros(3, 1, 28, 28), torch.zeros(3, 1, 28, 28))}
    with pytest.raises(ValueError, match="one shape"):
        store_chain("bad.npz", uneven, snr, "ci")
    with pytest.raises(ValueError, match="must fall to 0"):
        page_state("chain", stored=str(store_chain("up.npz", frames((20, 10)), snr, "ci")))
    # the step's control links chapter 9's equation by default; a page without one (21) none
    assert state["controls"][0]["equation"] == "ch9-ancestral"
    bare = page_state("chain", stored=str(store_chain("bare.npz", frames(), snr, "ci",
                                                      equation=None)))
    assert "equation" not in bare["controls"][0]
    with pytest.raises(ValueError, match="equation's label"):
        store_chain("bad.npz", frames(), snr, "ci", equation="two words")


def _unmasked(final: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Every step's states (K + 1, S, L) of sentences final (S, L), position (s, j) masked
    (-1) before step[s, j] and final[s, j] from then on."""
    K = int(step.max())
    return torch.stack([torch.where(step <= k, final, -1) for k in range(K + 1)])


def text_states(S=3, L=7, K=4, pad=3, seed=0) -> dict:
    """A sampler's record of the kind chapter 22 stores, over an alphabet of `pad`
    characters: each order reveals S sentences of L positions in its own random order, in
    K steps (every step reveals some), the sentences ending in padding (id pad)."""
    g = torch.Generator().manual_seed(seed)
    final = torch.randint(0, pad, (S, L), generator=g)
    final[:, L - 2:] = pad
    out = {}
    for order in ("random", "confidence"):
        rank = torch.randperm(S * L, generator=g).reshape(S, L)
        out[order] = _unmasked(final, 1 + rank * K // (S * L))  # steps 1..K
    return out


def test_text_unmasking_page_carries_the_chapters_sampler(tmp_path, monkeypatch):
    """Chapter 22's explorer: store_text_unmasking writes only in a storing run; the page's
    state holds each order's last ids and the step each position is revealed at, which
    give back every step's states; a step slider over 0..K that plays, both orders, the
    alphabet and the profile."""
    from companion.page_explorers import STORE_VAR, page_state, store_text_unmasking

    states = text_states()
    monkeypatch.delenv(STORE_VAR, raising=False)
    assert store_text_unmasking("u.npz", states, "ab.", "ci") is None
    monkeypatch.setenv(STORE_VAR, str(tmp_path))
    path = store_text_unmasking("u.npz", states, "ab.", "ci")
    assert path == tmp_path / "u.npz"
    state = json.loads(json.dumps(page_state("textunmasking", stored=str(path))))
    assert state["kind"] == "textunmasking" and state["profile"] == "ci"
    assert state["K"] == 4 and state["alphabet"] == "ab." and \
        state["orders"] == ["random", "confidence"]
    (k,) = state["controls"]
    assert k["name"] == "k" and k["values"] == [0, 1, 2, 3, 4] and k["play"]
    assert k["value"] == 2 and "equation" not in k

    def arr(key):
        p = state[key]
        return torch.from_numpy(np.frombuffer(base64.b64decode(p["u8"]), "u1").reshape(
            p["shape"]).astype(np.int64))

    ids, revealed = arr("ids"), arr("revealed")
    assert ids.shape == revealed.shape == (2, 3, 7)
    for o, order in enumerate(state["orders"]):
        assert torch.equal(_unmasked(ids[o], revealed[o]), states[order])


@pytest.mark.parametrize("change, match", [
    (lambda s: {"random": s["random"]}, r"^states must be a dict .* exactly the orders "
                                        r"\('random', 'confidence'\).*got the keys \['random'\]"),
    (lambda s: {**s, "confidence": s["confidence"][:, :2]},
     r"^both orders need states of one shape"),
    (lambda s: {**s, "random": s["random"][0]}, r"^states\['random'\] must be \(K \+ 1, S, L\)"),
    (lambda s: {**s, "random": s["random"].float()}, r"^states\['random'\] must be token ids"),
    (lambda s: {**s, "confidence": _masked_again(s["confidence"])},
     r"its page would refuse .*order 'confidence': position \d+ of sentence \d+ is \d+ at "
     r"step 1 and -1 at step 2 \(-1: masked\), but a step only reveals positions"),
    (lambda s: {o: v[1:] for o, v in s.items()},
     r"its page would refuse .*order 'random' must be all masked at step 0"),
    (lambda s: {o: v[:-1] for o, v in s.items()},
     r"its page would refuse .*order 'random' must be all masked at step 0 and none at step "
     r"K = 3, got 0 revealed at step 0 and \d+ masked at step K"),
    (lambda s: {**s, "random": torch.where(s["random"] == 3, 4, s["random"])},
     r"^states\['random'\] must hold ids -1 \(masked\) to 3 \(padding"),
    (lambda s: {o: _unmasked(s[o][-1], torch.full((3, 7), 201)) for o in s},
     r"^states\['random'\]'s frames K \+ 1 must be at most 201, got 202"),
], ids=["one order", "shapes differ", "one frame", "floats", "masked again",
        "step 0 revealed", "step K masked", "id past padding", "202 frames"])
def test_text_unmasking_store_refuses_what_its_page_could_not_show(change, match,
                                                                    monkeypatch):
    """A missing order, states of another shape or kind, a revealed position masked again,
    a first step not all masked or a last one not all revealed, ids past the padding and
    more frames than the slider keeps are refused by name, in every run."""
    from companion.page_explorers import STORE_VAR, store_text_unmasking
    from companion.run import checks

    monkeypatch.delenv(STORE_VAR, raising=False)
    with pytest.raises(checks.ArgumentError, match=match):
        store_text_unmasking("u.npz", change(text_states()), "ab.", "ci")


def _first_revealed(frames: torch.Tensor) -> tuple[int, int]:
    """(sentence, position) of the first position that step 1 reveals."""
    s, j = (frames[1] != -1).nonzero()[0].tolist()
    return s, j


def _masked_again(frames: torch.Tensor) -> torch.Tensor:
    """frames with a position that step 1 reveals masked again at step 2."""
    frames = frames.clone()
    frames[2][_first_revealed(frames)] = -1
    return frames


def test_text_unmasking_store_refuses_a_revealed_position_that_changes(monkeypatch):
    """A position revealed as one character and shown as another two steps later (the
    states of two runs mixed, or of a sampler that re-draws what it revealed) is refused,
    naming the position and the steps."""
    from companion.page_explorers import STORE_VAR, store_text_unmasking
    from companion.run import checks

    monkeypatch.delenv(STORE_VAR, raising=False)
    states = text_states()
    frames = states["confidence"]
    s, j = _first_revealed(frames)
    was = int(frames[1, s, j])
    frames[3:, s, j] = (was + 1) % 4
    with pytest.raises(checks.ArgumentError, match=rf"order 'confidence': position {j} of "
                                                   rf"sentence {s} is {was} at step 2 and "
                                                   rf"{(was + 1) % 4} at step 3 \(-1: masked\)"):
        store_text_unmasking("u.npz", states, "ab.", "ci")


def test_completions_page_carries_the_chapters_table(tmp_path, monkeypatch):
    """Chapter 12's explorer: store_completions writes only in a storing run; the page's
    state holds every method's completions under every mask (0..255), the known pixels and
    the table's numbers in its order; a method missing under a mask is refused by name."""
    import base64

    from companion.page_explorers import STORE_VAR, page_state, store_completions

    S, K, methods, names = 3, 2, ["replacement", "VAE MAP"], ["left", "keep20"]
    truth = torch.full((S, 28, 28), 0.5)
    masks = {n: (f"{n} missing", torch.ones(S, 28, 28) * (j == 0)) for j, n in
             enumerate(names)}
    comp = {(m, n): torch.full((K, S, 28, 28), (i + 2 * j) / 4) for i, m in enumerate(methods)
            for j, n in enumerate(names)}
    nums = {(m, n): [i, j, 0.25, 0.5, 100] for i, m in enumerate(methods)
            for j, n in enumerate(names)}
    monkeypatch.delenv(STORE_VAR, raising=False)
    assert store_completions("c.npz", truth, masks, comp, nums, 32) is None
    monkeypatch.setenv(STORE_VAR, str(tmp_path))
    state = page_state("completions", stored=str(store_completions("c.npz", truth, masks,
                                                                    comp, nums, 32)))
    assert state["methods"] == methods and state["masks"] == names
    assert state["descriptions"] == ["left missing", "keep20 missing"]
    assert state["controls"][0]["values"] == [1, 2, 3] and state["n_digits"] == 32

    def arr(key, code, dtype):
        p = state[key]
        return np.frombuffer(base64.b64decode(p[code]), dtype).reshape(p["shape"])

    c = arr("completions", "u8", "u1")
    assert c.shape == (2, 2, K, S, 28, 28) and c[1, 1].min() == c[1, 1].max() == 191
    assert arr("known", "u8", "u1")[:, 0, 0, 0].tolist() == [1, 0]
    assert arr("numbers", "f64", "<f8")[1, 0].tolist() == [1, 0, 0.25, 0.5, 100]
    del comp["VAE MAP", "keep20"]
    with pytest.raises(ValueError, match=r"missing: \[\('VAE MAP', 'keep20'\)\]"):
        store_completions("bad.npz", truth, masks, comp, nums, 32)


# --- chapters 13 and 15: the solver explorers, over the chapters' own points ---------------
ROOT = Path(__file__).resolve().parent.parent
STATE_BYTES = 700_000  # a solver explorer's state on the page (it draws 300 points)


@pytest.fixture
def one_thread():
    """One thread, as the book's build computes the states: these small tensors only pay
    for synchronization with more (and crawl when the cores are busy). The default dtype
    stays float32: the chapters' time grids are float32 linspaces."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _explorer_cell(stem: str, name: str) -> dict:
    """The cell of notebooks/<stem>.ipynb whose metadata names the web explorer `name`."""
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    return next(c for c in cells if c["metadata"].get("explorer", {}).get("name") == name)


@functools.cache
def _chapter_state(stem: str, name: str) -> dict:
    """The explorer's state as the book's build makes it: `page_state` with the arguments
    the chapter's cell names, then through JSON (what the page gets)."""
    from companion.page_explorers import page_state

    args = _explorer_cell(stem, name)["metadata"]["explorer"].get("args", {})
    return json.loads(json.dumps(page_state(name, **args)))


def _numbers(state: dict, key: str, solver: str, n: int) -> float:
    """The state's `key` (rms or median) for `solver` with n steps, from its base64."""
    p = state[key][solver]
    values = np.frombuffer(base64.b64decode(p["f64"]), "<f8")
    return float(values[state["steps"].index(n)])


def _assert_state_is(state, solver, n, x, ref, means):
    """The state's RMS, median and flips for (solver, n) are those of the ends x (N, 2)."""
    d = (x.double() - ref).pow(2).sum(1).sqrt()  # (N,), as the chapters compute it
    flips = (torch.cdist(x.double(), means).argmin(1) != torch.cdist(ref, means).argmin(1))
    assert state["points"]["n"] == len(x)
    assert abs(_numbers(state, "rms", solver, n) - d.pow(2).mean().sqrt().item()) < 1e-9
    assert abs(_numbers(state, "median", solver, n) - d.median().item()) < 1e-9
    assert state["flips"][solver][state["steps"].index(n)] == int(flips.sum())


def test_solver_errors_are_rms_median_and_flips():
    """solver_errors: the RMS and the median (torch's lower middle value) of the distances,
    and the points that end nearest another mode than their reference."""
    from companion.page_explorers import solver_errors

    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    ref = torch.tensor([[0.9, 0.0], [0.8, 0.0], [-0.9, 0.0], [-1.1, 0.0]], dtype=F64)
    x = ref + torch.tensor([[0.0, 0.3], [0.0, 0.4], [0.0, 1.2], [2.0, 0.0]], dtype=F64)
    rms, median, flips = solver_errors(x, ref, means)
    assert abs(rms - ((0.09 + 0.16 + 1.44 + 4.0) / 4) ** 0.5) < 1e-12
    assert abs(median - 0.4) < 1e-12 and flips == 1  # only the last crosses to x > 0


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_solvers_explorer_is_chapter_13s_computation():
    """Chapter 13's explorer: its RMS, median and flips at the table's step counts are what
    the chapter's own code gives on its 2,000 points (seed 4) against its reference (Heun,
    4,000 steps), to 1e-9; Heun is charged two evaluations a step; the table's 5, 10, 20
    and 50 steps are slider positions; the state stays light."""
    from companion import sde
    from companion.page_explorers import chapter8_mixture
    from companion.toy import diffused_score

    state = _chapter_state("13_continuous_time", "solvers")
    assert {5, 10, 20, 50} <= set(state["steps"])
    assert state["evaluations"] == {"DDIM": 1, "Euler": 1, "Heun": 2}
    assert len(json.dumps(state, separators=(",", ":"))) < STATE_BYTES
    mix, vp = chapter8_mixture(), sde.VPSDE()

    def mix_score(x, t):  # the chapter's cell, as it reads
        return diffused_score(mix, x, vp.alpha_bar(t))

    def mix_eps(x, t):
        return -vp.sigma(t) * mix_score(x, t)

    ode = vp.ode_drift(mix_score)
    solvers = {"DDIM": lambda x, ts: sde.ddim(mix_eps, vp, x, ts),
               "Euler": lambda x, ts: sde.euler(ode, x, ts),
               "Heun": lambda x, ts: sde.heun(ode, x, ts)}
    x_T = torch.randn(2_000, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    ref = sde.heun(ode, x_T, torch.linspace(1, 0, 4001).tolist())
    for name, n in [("DDIM", 5), ("Euler", 20), ("Heun", 10)]:
        x = solvers[name](x_T, torch.linspace(1, 0, n + 1).tolist())
        _assert_state_is(state, name, n, x, ref, mix.means.to(F64))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fewstep_explorer_is_chapter_15s_computation():
    """Chapter 15's explorer: its numbers are `fewstep.ode_sample` from the chapter's x1
    (2,000 points of seed 1) against `fewstep.ode_map`, to 1e-9, at the printout's
    evaluations; the printout's 1 to 64 evaluations of Euler are slider positions."""
    from companion import fewstep
    from companion.page_explorers import chapter8_mixture

    state = _chapter_state("15_fewer_steps", "fewstep")
    assert {1, 2, 4, 8, 16, 32, 64} <= set(state["steps"])
    assert state["evaluations"] == {"Euler": 1, "Heun": 2}
    assert len(json.dumps(state, separators=(",", ":"))) < STATE_BYTES
    mix = chapter8_mixture()
    path = fewstep.MixturePath(mix)
    x1 = torch.randn(2_000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact_map = fewstep.ode_map(path.velocity, x1)
    for name, n in [("Euler", 32), ("Heun", 4), ("Euler", 1)]:
        x = fewstep.ode_sample(path.velocity, x1, n, solver=name.lower())
        _assert_state_is(state, name, n, x, exact_map, mix.means.to(F64))


def _table_cells(outputs: list) -> dict[int, list[str]]:
    """Chapter 13's table from its stored markdown output: {steps: [the cells]}."""
    text = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    rows = re.findall(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", text, re.M)
    return {int(n): [c.strip() for c in rest.split("|")] for n, rest in rows}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_solver_explorers_agree_with_the_chapters_printouts():
    """What the chapters print above their explorers (their stored outputs) is what the
    page's explorers show where the step counts meet: chapter 13's table (RMS, median,
    flips at 5, 10, 20 and 50 steps) and chapter 15's printout (the number of points, and
    the RMS of Euler and Heun at 1 to 64 evaluations). A chapter run with another count
    of points (chapter 15's N_TOY in another profile) fails here until its explorer's
    metadata names that count (args: {n: ...})."""
    state = _chapter_state("13_continuous_time", "solvers")
    table = _table_cells(_explorer_cell("13_continuous_time", "solvers")["outputs"])
    shared = [n for n in table if n in state["steps"]]
    assert shared == [5, 10, 20, 50], table
    for n in shared:
        k = state["steps"].index(n)
        want = [f"{_numbers(state, 'rms', s, n):.1e}, {_numbers(state, 'median', s, n):.1e}, "
                f"{state['flips'][s][k]}" for s in state["solvers"]]
        assert table[n] == want, (n, table[n], want)
    state = _chapter_state("15_fewer_steps", "fewstep")
    text = "".join("".join(o.get("text", "")) for o in
                   _explorer_cell("15_fewer_steps", "fewstep")["outputs"])
    count = re.search(r"exact map of ([\d,]+) points", text)
    assert count and int(count[1].replace(",", "")) == state["points"]["n"], count
    lines = re.findall(r"(\d+) evaluations: Euler ([\d.]+)(?:, Heun ([\d.]+))?", text)
    assert len(lines) == 7, text
    for evals, euler, heun in lines:
        assert euler == f"{_numbers(state, 'rms', 'Euler', int(evals)):.3f}", evals
        if heun:
            assert heun == f"{_numbers(state, 'rms', 'Heun', int(evals) // 2):.3f}", evals


def _grid_err(state: dict, rho: float, n: int, solver: str) -> float:
    """The grid explorer's RMS error for (rho, n steps, solver), from its base64."""
    err = np.frombuffer(base64.b64decode(state["err"]["f64"]), "<f8").reshape(
        state["err"]["shape"])
    r = next(k for k, v in enumerate(state["controls"][0]["values"]) if abs(v - rho) < 1e-9)
    return float(err[r, state["steps"].index(n), state["solvers"].index(solver)])


def test_grid_explorer_draws_at_most_its_points():
    """Issue 96: n = 4 with n_paths = 8 reported 8 paths drawn of 4 points (the solver
    pages' ends were already cut to their points)."""
    from companion.page_explorers import grid_page

    page = grid_page(n=4, n_paths=8, steps=(2, 3))
    assert (page["points"], page["drawn"]) == (4, 4)
    paths = np.frombuffer(base64.b64decode(page["paths"]["f32"]), "<f4")
    # rho 1..12, step counts 2 and 3, 3 solvers: (count + 1) levels of 4 points each
    assert len(paths) == 12 * 3 * (3 + 4) * 4
    assert grid_page(n=4, n_paths=3, steps=(2, 3))["drawn"] == 3


@pytest.mark.slow  # over a second: make test, not check-fast
@pytest.mark.usefixtures("one_thread")
def test_grid_explorer_is_chapter_17s_computation():
    """Chapter 17's grid explorer: its errors are edm's solvers with the exact denoiser
    from the chapter's 256 points (80 N(0, I), seed 5) on the rho grid, against the exact
    flow at sigma = 0, to 1e-9; Heun is charged 2n - 1 evaluations on n steps, Euler and
    DPM-Solver++(2M) n; its drawn paths start on the exact flow's scaled value and end at
    the solver's own ends; the chapter's table of grids (its stored output) is the
    explorer's numbers where they meet (Heun, rho = 1, 3 and 7, 5, 10 and 18 steps)."""
    from companion import edm, sde
    from companion.page_explorers import chapter17_gaussian

    state = _chapter_state("17_design_space", "grid")
    assert len(json.dumps(state, separators=(",", ":"))) < STATE_BYTES
    mean, std = chapter17_gaussian()
    x = 80 * torch.randn(256, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    exact = edm.gaussian_flow(mean, std, x, 80.0, 0.0)
    denoise = edm.gaussian_denoiser(mean, std)
    for solver, fn, rho, n in [("Heun", edm.heun, 7, 10), ("Euler", edm.euler, 2, 32),
                               ("DPM-Solver++(2M)", edm.dpm_solver_pp_2m, 12, 3)]:
        counted = sde.Counted(denoise)
        out = fn(counted, x, edm.rho_grid(n, rho=rho))
        want = (out - exact).pow(2).sum(1).mean().sqrt().item()
        assert abs(_grid_err(state, rho, n, solver) - want) < 1e-9 * max(1, want)
        k, j = state["steps"].index(n), state["solvers"].index(solver)
        assert state["evaluations"][k][j] == counted.calls == (2 * n - 1 if solver == "Heun"
                                                               else n)
    # the drawn paths: (rho, steps, solver, level, point), flattened in that order
    paths = np.frombuffer(base64.b64decode(state["paths"]["f32"]), "<f4")
    first = torch.as_tensor(paths[:state["drawn"]].astype(float))
    scaled = (x[:state["drawn"], 0] - mean[0]) / (std[0] ** 2 + 80.0 ** 2).sqrt()
    assert torch.allclose(first, scaled, rtol=1e-6)  # rho = 1, the first count, Euler
    n0 = state["steps"][0]
    end = edm.euler(denoise, x, edm.rho_grid(n0, rho=1.0))[:state["drawn"], 0]
    last = paths[n0 * state["drawn"]:(n0 + 1) * state["drawn"]].astype(float)
    assert np.allclose(last, ((end - mean[0]) / std[0]).numpy(), rtol=1e-5)
    cell = next(c for c in json.loads((ROOT / "notebooks" / "17_design_space.ipynb")
                                      .read_text())["cells"]
                if "grid_kinds = {" in "".join(c["source"]))
    text = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in
                   cell["outputs"])
    for label, rho in [("uniform in σ (ρ = 1)", 1), ("ρ = 3", 3), ("ρ = 7", 7)]:
        row = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", text, re.M)
        assert row, (label, text)
        want = [f"{_grid_err(state, rho, n, 'Heun'):.2e}" for n in (5, 10, 18)]
        assert [c.strip() for c in row[1].split("|")] == want, (label, row[1], want)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_guidance_explorer_is_chapter_16s_computation():
    """Chapter 16's guidance explorer: at w = 3 its numbers are the chapter's cell run with
    its ci profile's 1,000 samples (x_T from seed 17, the chain's noise from seed 18), to
    1e-12; and what the chapter's sentence about the explorer says holds in its state: the
    tilted density is component Y to three decimals at every slider weight > 0 (mean u 1,
    sd 0.12); the samples are not: at w = 0.5 a tenth or more end in other classes and
    their sd is wider, at w = 1 their mean u is the component's within two standard
    errors, and at every weight above 1 it is beyond by more than two and their sd below
    the tilted one."""
    import math

    from companion import diffusion as dm
    from companion import score as S
    from companion.page_explorers import chapter8_mixture
    from companion.toy import diffused_log_posterior_grad, diffused_score

    state = _chapter_state("16_scores_guidance", "guidance")
    w_all = state["controls"][0]["values"]
    stats = np.frombuffer(base64.b64decode(state["stats"]["f64"]), "<f8").reshape(
        len(w_all), 5)
    mix, Y = chapter8_mixture(), state["y"]
    diff = dm.Diffusion(dm.linear_betas(1000))
    field = S.classifier_guided_score(  # the chapter's guided_eps(3.0), as it reads
        lambda x, t: diffused_score(mix, x, diff.alphas_bar_[t]),
        lambda x, t: diffused_log_posterior_grad(mix, x, Y, diff.alphas_bar_[t]), 3.0)
    x_T = torch.randn(1_000, 2, generator=torch.Generator().manual_seed(17), dtype=F64)
    x = diff.sample(lambda x, t: diff.eps_from_score(x, t, field(x, t)), (1_000, 2),
                    x_T=x_T.clone(), generator=torch.Generator().manual_seed(18), quiet=True)
    u = x @ mix.means[Y]
    k = w_all.index(3.0)
    assert abs(stats[k, 0] - u.mean().item()) < 1e-12
    assert abs(stats[k, 2] - u.std().item()) < 1e-12
    assert stats[k, 4] == (mix.map_encode(x) == Y).double().mean().item()
    for j, w in enumerate(w_all):
        if w > 0:
            assert round(stats[j, 1], 3) == 1.0 and round(stats[j, 3], 3) == 0.12, w
    se = stats[:, 2] / math.sqrt(state["n"])
    half, one = w_all.index(0.5), w_all.index(1.0)
    assert stats[half, 4] < 0.9 and stats[half, 2] > 0.15  # some in other classes; wider
    assert abs(stats[one, 0] - stats[one, 1]) < 2 * se[one]  # w = 1: the component
    for j, w in enumerate(w_all):
        if w > 1:  # past it, narrower
            assert stats[j, 0] > stats[j, 1] + 2 * se[j] and stats[j, 2] < stats[j, 3], w


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_unmasking_explorer_is_chapter_14s_toy():
    """Chapter 14's unmasking explorer: its toy is the chapter's (the entropy the chapter
    prints), its numbers are KL(p || q_K) and H(q_K) of `masked.sampler_law`, and what the
    chapter says of it holds: in random order with K = 9, q_K is the data's law."""
    from companion import masked as mk
    from companion.page_explorers import chapter14_toy

    state = _chapter_state("14_discrete_diffusion", "unmasking")
    toy = chapter14_toy()
    cell = next(c for c in json.loads((ROOT / "notebooks" / "14_discrete_diffusion.ipynb")
                                      .read_text())["cells"]
                if "toy = BinaryTable.from_prototypes" in "".join(c["source"]))
    printed = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    assert f"entropy H(p) = {toy.entropy():.4f} nats" in printed, printed
    numbers = np.frombuffer(base64.b64decode(state["numbers"]["f64"]), "<f8").reshape(-1, 2)
    Ks = state["controls"][0]["values"]
    for order, K in [("confidence", 4), ("random", 2)]:
        q = mk.sampler_law(toy.denoiser, 9, K, order=order)
        row = state["orders"].index(order) * len(Ks) + Ks.index(K)
        kl = (toy.probs * (toy.probs.log() - q.log())).sum().item()
        assert abs(numbers[row, 0] - kl) < 1e-12
        assert abs(numbers[row, 1] + (q * q.log()).sum().item()) < 1e-12
    assert abs(numbers[state["orders"].index("random") * len(Ks) + Ks.index(9), 0]) < 1e-6


def test_bound_explorer_is_chapter_18s_computation():
    """Chapter 18's bound explorer: its exact L_inf is the one the chapter's table prints,
    each L_T is `vdm.gaussian_discrete_loss` and the sum of the step terms the page draws,
    each term at least the curve's area over its step (I(SNR(s)) - I(SNR(t)), I-MMSE),
    never below L_inf (an upper Riemann sum), falling with T and with the most steps within
    a thousandth of its one-step gap: what the chapter's sentence about the explorer says."""
    from companion import vdm
    from companion.page_explorers import chapter18_schedules

    state = _chapter_state("18_variational_diffusion", "bound")
    text = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in
                   _explorer_cell("18_variational_diffusion", "bound")["outputs"])
    assert f"exact L_∞ = {state['exact']:.5f} nats" in text, text
    loss = np.frombuffer(base64.b64decode(state["loss"]["f64"]), "<f8").reshape(3, -1)
    terms = np.frombuffer(base64.b64decode(state["terms"]["f64"]), "<f8")
    levels = np.frombuffer(base64.b64decode(state["levels"]["f64"]), "<f8")
    Ts = state["controls"][0]["values"]
    std = torch.logspace(-1.3, 0, 8, dtype=F64)
    start = 0
    for j, (name, schedule) in enumerate(chapter18_schedules().items()):
        assert state["schedules"][j] == name
        for k, T in enumerate(Ts):
            want = vdm.gaussian_discrete_loss(schedule, T, std).item()
            assert abs(loss[j, k] - want) < 1e-9 * want
            assert abs(terms[start:start + T].sum() - want) < 1e-9 * want
            first = start + j * len(Ts) + k  # each earlier grid has one level more
            g = levels[first:first + T + 1].copy()
            area = (vdm.gaussian_mutual_information(torch.exp(-torch.as_tensor(g[:-1])), std)
                    - vdm.gaussian_mutual_information(torch.exp(-torch.as_tensor(g[1:])), std))
            assert (torch.tensor(terms[start:start + T]) >= area - 1e-12).all()
            start += T
        assert (loss[j] >= state["exact"]).all() and (np.diff(loss[j]) < 0).all()
        assert loss[j, -1] - state["exact"] < 1e-3 * (loss[j, 0] - state["exact"])


def test_straight_explorer_is_chapter_19s_toy():
    """Chapter 19's straight-through explorer: at the chapter's z_e = (0.9, 0.4) its
    gradients are the ones the chapter prints (the straight-through one, the slope at code
    1); what the chapter's sentence says holds on its grid: near the code the two
    gradients nearly agree, and across the border between codes 0 and 1 (at 0.75) the
    straight-through gradient jumps while the smooth one barely moves."""
    state = _chapter_state("19_discrete_latents", "straight")
    vals = state["controls"][0]["values"]
    num = np.frombuffer(base64.b64decode(state["numbers"]["f64"]), "<f8").reshape(-1, 6)
    code = np.frombuffer(base64.b64decode(state["code"]["u8"]), "u1")

    def at(a, b):
        i = next(j for j, v in enumerate(vals) if abs(v - b) < 1e-9) * len(vals) + next(
            j for j, v in enumerate(vals) if abs(v - a) < 1e-9)
        return num[i], int(code[i])

    text = "".join("".join(o.get("text", "")) for o in next(
        c for c in json.loads((ROOT / "notebooks" / "19_discrete_latents.ipynb").read_text())
        ["cells"] if "toy_vq = VectorQuantizer" in "".join(c["source"]))["outputs"])
    row, k = at(0.9, 0.4)
    assert f"nearest code e_{k} = [1.5, 0.0]" in text, text
    printed = re.search(r"straight-through gradient\s+\[([-\d. ]+)\]", text)[1].split()
    assert [f"{v:.6f}" for v in row[4:]] == [f"{float(p):.6f}" for p in printed]
    near, _ = at(1.4, 0.0)
    assert np.hypot(*(near[2:4] - near[4:])) < 0.2 * np.hypot(*(row[2:4] - row[4:]))
    (left, k0), (right, k1) = at(0.7, 0.0), at(0.8, 0.0)
    assert (k0, k1) == (0, 1)
    assert np.hypot(*(left[4:] - right[4:])) > 10 * np.hypot(*(left[2:4] - right[2:4]))
