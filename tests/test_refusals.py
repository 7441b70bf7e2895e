"""The new chapters' modules refuse what they cannot compute (issue 55, points 1-12): a
hang, and silent wrong answers, each made a clear error (what was wrong, the value, how to
fix it). One test (or a few) per point, each failing on the code before the fix.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from companion import compare, fewstep, masked
from companion.run import checks, glue, memory


# --- 1. ode_map: a field that returns NaN is an error, and the solve has a bound -----------------
def _nan_field(x, tau):
    return torch.full_like(x, float("nan"))


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
@pytest.mark.parametrize("start", [0.0, 1.0])
def test_01_ode_map_refuses_a_field_that_returns_nan(start):
    began = time.monotonic()
    with pytest.raises(checks.ArgumentError, match=r"4 non-finite values.*tau = 1 .*4 of 4"):
        fewstep.ode_map(_nan_field, torch.full((2, 2), start))
    assert time.monotonic() - began < 5


@pytest.mark.slow  # runs the map up to its bound: seconds
def test_01_ode_map_stops_at_its_evaluation_bound():
    calls = []

    def stiff(x, tau):  # finite but stiff: an explicit solver takes tiny steps
        calls.append(tau)
        return 1e7 * torch.sin(1e3 * x + 1e4 * tau)

    with pytest.raises(RuntimeError, match=r"500 evaluations.*max_evals"):
        fewstep.ode_map(stiff, torch.ones(2, 2), max_evals=500)
    assert len(calls) <= 500


# --- 2. a teacher or student built for another number of steps is refused -----------------------
class _GridNet(torch.nn.Module):
    """A velocity model on a grid of T steps (its config.T, as the U-Net's): v = 0."""

    def __init__(self, T):
        super().__init__()
        self.config = type("Config", (), {"T": T})()

    def forward(self, x, step):
        return torch.zeros_like(x)


_WRONG = r"was built for T = 41 steps but the grid of tau, K \+ 1 = 11 times.*T=11"


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_02_distillation_losses_refuse_a_model_of_another_grid(who):
    x0 = torch.zeros(4, 2)
    nets = {"student": _GridNet(11), "teacher": _GridNet(11)}
    nets[who] = _GridNet(41)
    with pytest.raises(checks.ArgumentError, match=f"the {who} {_WRONG}"):
        fewstep.progressive_distillation_loss(nets["student"], nets["teacher"], x0, 2, 10)
    with pytest.raises(checks.ArgumentError, match=f"the {who} {_WRONG}"):
        fewstep.consistency_distillation_loss(nets["student"], nets["teacher"], x0, 4, 10)


def test_02_grid_field_velocity_and_reflow_loss_refuse_a_model_of_another_grid():
    net, x = _GridNet(41), torch.zeros(4, 2)
    with pytest.raises(checks.ArgumentError, match=_WRONG):
        fewstep.grid_field(net, 10)
    with pytest.raises(checks.ArgumentError, match=_WRONG):
        fewstep.grid_velocity(net, x, torch.ones(4), 10)
    with pytest.raises(checks.ArgumentError, match=_WRONG):
        fewstep.coupled_flow_matching_loss(net, x, x, 10)


def test_02_a_model_of_the_right_grid_is_taken():
    net, x = _GridNet(11), torch.zeros(4, 2)
    assert fewstep.grid_field(net, 10)(x, 1.0).shape == x.shape
    assert fewstep.progressive_distillation_loss(net, net, x, 2, 10) == 0
    assert fewstep.consistency_distillation_loss(net, net, x, 4, 10) >= 0


# --- 3. masked sampling with NaN logits -----------------------------------------------------------
@pytest.mark.parametrize("order", ["random", "confidence"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_03_masked_sampling_refuses_non_finite_logits(order, bad):
    def diverged(z):
        return torch.full(z.shape, bad)

    with pytest.raises(checks.ArgumentError, match=r"non-finite logits.*step 1 of 4: 36 of 36"):
        masked.sample(diverged, (4, 9), 4, order=order)


def test_03_nan_from_a_later_step_is_named():
    def late(z):  # NaN once half the pixels are revealed
        out = torch.zeros(z.shape)
        return out.fill_(float("nan")) if bool((z != masked.MASK).float().mean() >= 0.5) \
            else out

    with pytest.raises(checks.ArgumentError, match=r"step [3-4] of 4"):
        masked.sample(late, (2, 8), 4)


# --- 4. masked_cross_entropy checks shapes and targets, and selects the masked pixels -----------
def test_04_a_mask_of_another_shape_is_refused():
    logits, x0 = torch.zeros(3, 5), torch.ones(3, 5)
    with pytest.raises(checks.ArgumentError, match=r"same shape.*\(3, 5\), \(3, 5\) and \(3, 1\)"):
        masked.masked_cross_entropy(logits, x0, torch.full((3, 1), masked.MASK))
    with pytest.raises(checks.ArgumentError, match=r"same shape.*\(3, 5\), \(5,\) and \(3, 5\)"):
        masked.masked_cross_entropy(logits, x0[0], torch.full((3, 5), masked.MASK))


def test_04_targets_holding_the_mask_value_are_refused():
    x0 = torch.full((2, 4), masked.MASK)
    with pytest.raises(checks.ArgumentError, match=r"x0 must hold binary pixels"):
        masked.masked_cross_entropy(torch.zeros(2, 4), x0, torch.full((2, 4), masked.MASK))


def test_04_a_nan_logit_at_a_revealed_pixel_adds_nothing():
    logits = torch.tensor([[float("nan"), 0.0, 2.0]], requires_grad=True)
    x0 = torch.tensor([[1.0, 0.0, 1.0]])
    z = torch.tensor([[1.0, masked.MASK, masked.MASK]])  # the NaN pixel is revealed
    ce = masked.masked_cross_entropy(logits, x0, z)
    want = torch.nn.functional.softplus(torch.tensor(0.0)) + \
        torch.nn.functional.softplus(torch.tensor(-2.0))
    assert torch.isfinite(ce).all() and torch.allclose(ce, want.reshape(1))
    ce.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0] == 0


# --- 5. an inconsistent posterior pair and w(0) are errors ---------------------------------------
def test_05_posterior_refuses_a_state_revealed_as_another_value_than_x0():
    x0 = torch.tensor([[0.0, 1.0, 1.0]])
    z_t = torch.tensor([[1.0, 1.0, masked.MASK]])  # pixel 0 revealed as 1, but x0 is 0
    with pytest.raises(checks.ArgumentError, match=r"1 revealed pixel.*differs from x0"):
        masked.posterior(z_t, x0, 0.2, 0.6)
    with pytest.raises(checks.ArgumentError, match=r"same shape"):
        masked.posterior(z_t[:, :1], x0, 0.2, 0.6)
    ok = masked.posterior(torch.tensor([[0.0, 1.0, masked.MASK]]), x0, 0.2, 0.6)
    assert torch.allclose(ok.sum(-1), torch.ones(1, 3))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_05_the_weight_at_t_0_is_refused(name):
    sched = masked.Schedule(name)
    with pytest.raises(checks.ArgumentError, match=r"w\(t\).*\(0, 1\].*t = 0"):
        sched.weight(0.0)
    with pytest.raises(checks.ArgumentError, match=r"w\(t\).*\(0, 1\]"):
        sched.weight(torch.tensor([0.5, 0.0]))
    assert torch.isfinite(sched.weight(torch.tensor([1e-6, 0.5, 1.0]))).all()


# --- 6. map_chunks: one row out per row in; out of memory names the chunk size -------------------
def test_06_map_chunks_refuses_a_function_that_reduces_over_the_chunk(monkeypatch):
    x = torch.ones(10, 784)
    with pytest.raises(checks.ArgumentError, match=r"returned 1 rows for a chunk of 10 .*one row"):
        memory.map_chunks(lambda b: b.sum(0, keepdim=True), x)
    monkeypatch.setattr(memory, "MAX_IMAGES", 4)  # the same call in chunks of 4
    with pytest.raises(checks.ArgumentError, match=r"returned 1 rows for a chunk of 4"):
        memory.map_chunks(lambda b: b.sum(0, keepdim=True), x)
    with pytest.raises(checks.ArgumentError, match=r"returned a 0-dim tensor"):
        memory.map_chunks(lambda b: b.sum(), x)
    with pytest.raises(checks.ArgumentError, match=r"output 2 of .*returned 1 rows"):
        memory.map_chunks(lambda b: (b, b[:1]), x)
    assert memory.map_chunks(lambda b: (b, b.sum(1)), x)[1].shape == (10,)


def test_06_out_of_memory_in_a_chunk_says_which_limit_to_lower():
    def hungry(b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(torch.cuda.OutOfMemoryError,
                       match=r"chunk of 10 rows.*MAX_IMAGES = 1000.*memory.MAX_IMAGES = 500"):
        memory.map_chunks(hungry, torch.ones(10, 784))
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"MAX_IMAGES_WITH_GRAD = 128"):
        memory.map_chunks(hungry, torch.ones(10, 784), grad=True)


# --- 7. compare and paired_bootstrap refuse n <= 0 and draws of different shapes ------------------
@pytest.mark.parametrize("n", [0, -3])
def test_07_compare_refuses_n_below_one_even_with_df(n):
    with pytest.raises(checks.ArgumentError, match=rf"n .*got {n}"):
        compare.compare(0.5, 0.1, n, df=5)
    with pytest.raises(checks.ArgumentError, match=rf"n .*got {n}"):
        compare.paired_bootstrap(0.5, torch.randn(50), torch.randn(50), n)


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_07_paired_bootstrap_refuses_draws_of_different_shapes():
    with pytest.raises(checks.ArgumentError, match=r"boot_a and boot_b.*\(50,\) and \(1,\)"):
        compare.paired_bootstrap(0.5, torch.randn(50), torch.zeros(1), 100)
    with pytest.raises(checks.ArgumentError, match=r"boot_a and boot_b.*\(50,\) and \(49,\)"):
        compare.paired_bootstrap(0.5, torch.randn(50), torch.randn(49), 100)
    with pytest.raises(checks.ArgumentError, match=r"NaN"):
        compare.paired_bootstrap(0.5, torch.full((50,), float("nan")), torch.randn(50), 100)
    assert compare.paired_bootstrap(0.5, torch.randn(50), torch.randn(50), 100).n == 100


# --- 8. glue: NaN inside containers, digits for an int, the prose's rounding ----------------------
def _glued(value, **kwargs):
    import IPython.display

    seen, real = [], IPython.display.display
    IPython.display.display = lambda obj, **kw: seen.append(obj)
    try:
        glue.glue("ch_x", value, display=False, **kwargs)
    finally:
        IPython.display.display = real
    return seen[0][glue.GLUE_PREFIX + "text/plain"]


@pytest.mark.parametrize("value", [torch.tensor([float("nan")]), np.array([np.inf]),
                                   [float("nan")], (1.0, float("-inf")),
                                   torch.tensor([[1.0, float("nan")]]), {"a": float("nan")}])
def test_08_glue_refuses_nan_inside_a_tensor_array_or_list(value):
    with pytest.raises(ValueError, match=r"glue\('ch_x'.*NaN or infinite"):
        _glued(value)


@pytest.mark.parametrize("value", [3, 2.5, "text", [1, 2]])
@pytest.mark.parametrize("digits", [-1, 0, 2.5, True])
def test_08_glue_refuses_bad_digits_whatever_the_value(value, digits):
    with pytest.raises(ValueError, match=r"digits must be a whole number >= 1"):
        _glued(value, digits=digits)


def test_08_a_stored_value_never_rounds_differently_from_the_value():
    """0.0497 to one or two digits was stored as 0.05 (mantissa '5.0', read as not ending in
    5), which the prose's :.1f shows as 0.1 where 0.0497 gives 0.0."""
    assert glue.round_significant(0.0497, 1) == 0.0497
    assert f"{glue.round_significant(0.0497, 2):.1f}" == f"{0.0497:.1f}" == "0.0"
    assert _glued(0.049997) == "0.049997"
    rng = np.random.default_rng(8)
    ties = [(k + 0.5) * 10.0 ** e + s for k in range(10) for e in range(-4, 4)
            for s in (1e-9, -1e-9, 3e-7, -3e-7)]
    for x in [*ties, *(rng.uniform(-1, 1, 2000) * 10.0 ** rng.integers(-6, 6, 2000))]:
        x = float(x)
        for digits in range(1, 7):
            stored = glue.round_significant(x, digits)
            exponent = int(np.floor(np.log10(abs(x)))) if x else 0
            for shown in range(0, digits - exponent):  # fixed point, to the decimals stored
                assert f"{stored:.{shown}f}" == f"{x:.{shown}f}", (x, digits, shown)
            for shown in range(1, digits + 1):  # significant digits
                assert f"{stored:.{shown - 1}e}" == f"{x:.{shown - 1}e}", (x, digits, shown)


# --- 9. tables.markdown: a line break in a cell or a header ---------------------------------------
@pytest.mark.parametrize("columns, rows, where", [
    (["sampler", "FD"], [["DDPM\nancestral", 1.5]], r"row 0, column 'sampler'"),
    (["sampler", "FD"], [["DDPM", 1.5], ["DDIM\r", 2.0]], r"row 1, column 'sampler'"),
    (["sampler", "FD\n(x 1000)"], [["DDPM", 1.5]], r"the header of column 1"),
])
def test_09_markdown_refuses_a_line_break_in_a_cell_or_a_header(columns, rows, where):
    from companion.run import tables

    with pytest.raises(ValueError, match=rf"one line.*{where} holds a line break.*Join"):
        tables.markdown(columns, rows)
    # and what it said before: a table whose row broke in two, silently
    assert tables.markdown(["a", "b"], [["x y", 1]]).count("\n") == 2


# --- 10. pdf_check: a PDF that cannot be checked is one line naming the file ----------------------
ONE_PAGE = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
            b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
            b"trailer<</Root 1 0 R>>\n%%EOF\n")
POPPLER = pytest.mark.skipif(__import__("shutil").which("pdfinfo") is None,
                             reason="needs poppler-utils (pdfinfo)")


def _pdf_check():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / "pdf_check.py"
    spec = importlib.util.spec_from_file_location("pdf_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pdf_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, content, said", [
    ("missing", None, r"book\.pdf: no such file; build the PDF first \(make pdf\)"),
    ("directory", None, r"book\.pdf is a directory, not a PDF; give the PDF's path"),
    ("empty", b"", r"book\.pdf is empty \(0 bytes\).*\(see book\.log\); rebuild it"),
    ("garbage", b"<html>not a pdf</html>", r"book\.pdf is not a PDF: it starts with b'<html'"),
    pytest.param("zero pages", ONE_PAGE.replace(b"[3 0 R]/Count 1", b"[]/Count 0"),
                 r"book\.pdf has no pages", marks=POPPLER),
    pytest.param("truncated", ONE_PAGE[:40], r"book\.pdf: pdfinfo cannot read it \(exit \d+: "
                 r".*Error.*\); the file is damaged or incomplete, rebuild it", marks=POPPLER),
    pytest.param("no log", ONE_PAGE, r"book\.log: no such file; the check reads LaTeX's log",
                 marks=POPPLER),
], ids=["missing", "directory", "empty", "garbage", "zero-pages", "truncated", "no-log"])
def test_10_pdf_check_says_in_one_line_what_is_wrong_with_which_file(tmp_path, capsys, kind,
                                                                     content, said):
    """Was: a missing PDF reported as a missing .log (FileNotFoundError), and the others a
    CalledProcessError traceback with poppler's message thrown away."""
    pdf_check = _pdf_check()
    pdf = tmp_path / "book.pdf"
    if kind == "directory":
        pdf.mkdir()
    elif content is not None:
        pdf.write_bytes(content)
    assert pdf_check.main([str(pdf)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("pdf_check: "), err
    assert re.search(said, err), err
    with pytest.raises(pdf_check.Unreadable, match=said):
        pdf_check.check(pdf)


# --- 11. a checkpoint path that is a symbolic link: written through, the link kept ----------------
def _fit_into(path, steps):
    from torch import nn

    from companion.train import fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
    torch.manual_seed(0)
    return fit(nn.Linear(3, 1), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (x, y),
               steps=steps, batch_size=4, quiet=True, checkpoint=path)


def _step(path):
    return torch.load(path, weights_only=True)["step"]


@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_11_a_checkpoint_through_a_symlink_is_written_through_the_link(tmp_path):
    """Was: fit resumed from latest.pt -> run.pt, then replaced the link with a regular file,
    leaving run.pt stale at the step it was resumed from."""
    run = tmp_path / "runs" / "run.pt"
    _fit_into(run, 2)
    (tmp_path / "latest.pt").symlink_to(Path("runs") / "run.pt")  # a relative link
    done = _fit_into(tmp_path / "latest.pt", 4)
    assert done.steps == 4 and (tmp_path / "latest.pt").is_symlink()
    assert _step(run) == 4 and _step(tmp_path / "latest.pt") == 4
    # a link to a link, and one whose file is not there yet (a new run)
    (tmp_path / "chain.pt").symlink_to(tmp_path / "latest.pt")
    assert _fit_into(tmp_path / "chain.pt", 6).steps == 6 and _step(run) == 6
    (tmp_path / "new.pt").symlink_to(tmp_path / "runs" / "new-run.pt")
    _fit_into(tmp_path / "new.pt", 2)
    assert (tmp_path / "new.pt").is_symlink() and _step(tmp_path / "runs" / "new-run.pt") == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if not p.is_dir()) == [
        "chain.pt", "latest.pt", "new-run.pt", "new.pt", "run.pt"]  # no lock or tmp left


def test_11_a_checkpoint_symlink_in_a_loop_is_refused(tmp_path):
    from companion.run.checkpoint import CheckpointSaveError

    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    with pytest.raises(CheckpointSaveError, match=r"a\.pt.*symbolic link.*loop"):
        _fit_into(tmp_path / "a.pt", 2)


# --- 12. BOOK_SMOKE=1 with downloads allowed leaves ~/.cache/companion alone ----------------------
def test_12_a_smoke_run_downloads_into_its_own_folder_not_the_users_cache(tmp_path, monkeypatch):
    """Was: the download went to ~/.cache/companion/data (torchvision makes the folders even
    when the download then fails), although a smoke run's cache is its own."""
    import http.server
    import threading

    datasets = pytest.importorskip("torchvision.datasets")
    from companion import data
    from companion.run import checkpoint

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("BOOK_DATA", "BOOK_CACHE", "BOOK_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BOOK_SMOKE", "1")
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors",
                        [f"http://127.0.0.1:{httpd.server_address[1]}/"])
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "no-debian")
    try:
        with pytest.raises(data.DataUnavailableError) as err:
            data.load("fashion", verbose=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not (tmp_path / "home" / ".cache").exists(), list((tmp_path / "home").rglob("*"))
    own = checkpoint.cache_dir() / "data"
    assert (own / "FashionMNIST" / "raw").is_dir() and str(own) in str(err.value)
    # outside the smoke run the user's folder is the one
    monkeypatch.delenv("BOOK_SMOKE")
    assert data.default_root() == tmp_path / "home" / ".cache" / "companion" / "data"
    monkeypatch.setenv("BOOK_DATA", " ")  # empty means unset (was: the current folder)
    assert data.default_root() == tmp_path / "home" / ".cache" / "companion" / "data"
    monkeypatch.setenv("BOOK_DATA", "~/mnist")  # was: a folder named '~' in the current one
    assert data.default_root() == tmp_path / "home" / "mnist"


# --- beyond the list (found by tests/test_properties.py's probe) ----------------------------------
def test_beyond_ode_log_likelihood_refuses_a_nan_field_instead_of_hanging():
    """Was: a field that returns NaN kept scipy's RK45 shrinking its step for ever (no answer
    in 20 s), the hang of point 1 in sde; and NaN points a scipy traceback."""
    from companion import sde

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    start = time.monotonic()
    with pytest.raises(checks.ArgumentError, match=r"NaN or infinite at t = 0 .*evaluation 1"):
        sde.ode_log_likelihood(lambda y, t: y * float("nan"), x)
    with pytest.raises(checks.ArgumentError, match=r"x holds 1 NaN or infinite value \(of 8\)"):
        sde.ode_log_likelihood(lambda y, t: -y, torch.where(x == x[0, 0], float("nan"), x))
    with pytest.raises(RuntimeError, match=r"stopped after 5 evaluations.*raise max_evals"):
        sde.ode_log_likelihood(lambda y, t: -y, x, max_evals=5)
    assert time.monotonic() - start < 10
    assert torch.isfinite(sde.ode_log_likelihood(lambda y, t: -y, x).log_p).all()


def test_beyond_metrics_memory_and_compare_refuse_with_their_own_words():
    """Was: auroc, active_units and label_histogram said 'the Fréchet distance needs finite
    numbers'; knn_labels of images of two sizes a torch RuntimeError (X1 and X2 must have the
    same number of columns); memory of a 0-dim tensor a
    torch TypeError, of a list an AttributeError; compare of a str or a (2,) tensor 'must be
    real number, not str' / 'only one element tensors...'; welch_df of a negative variance
    df = 0."""
    from companion import metrics

    with pytest.raises(ValueError, match=r"scores holds 1 NaN/inf.*; auroc needs finite"):
        metrics.auroc(torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"active_units needs finite numbers: a diverged"):
        metrics.active_units(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match=r"a classifier's probabilities needs finite"):
        metrics.label_histogram(torch.full((3, 10), float("nan")))
    ref, labels = torch.rand(6, 1, 4, 4), torch.arange(6) % 2
    with pytest.raises(checks.ArgumentError, match=r"x and reference must be images of one"):
        metrics.knn_labels(torch.rand(3, 1, 5, 5), ref, labels)
    assert metrics.knn_labels(torch.rand(3, 1, 4, 4), ref, labels, k=3).shape == (3,)
    with pytest.raises(checks.ArgumentError, match=r"x must have rows to split.*0-dim"):
        memory.rows_per_call(torch.tensor(1.0))
    with pytest.raises(checks.ArgumentError, match=r"tensor 0 must be a torch tensor"):
        memory.map_chunks(lambda a: a, [1, 2])
    for bad in ("0.1", torch.tensor([0.1, 0.2])):
        with pytest.raises(checks.ArgumentError, match=r"diff must be one real number"):
            compare.compare(bad, 0.1, 5)
    assert compare.compare(torch.tensor(0.1), np.float32(0.05), 5).n == 5
    with pytest.raises(checks.ArgumentError, match=r"var_a \(a sample variance\) must be"):
        compare.welch_df(-1.0, 3, 1.0, 3)


def test_beyond_predict_x0_and_predict_eps_refuse_a_broadcast_and_a_division_by_zero():
    """Was: eps of shape (B, 1) broadcast over x_t (B, D) silently, and alpha_bar = 0 (1 for
    predict_eps) gave inf."""
    from companion import diffusion

    x = torch.rand(3, 4)
    with pytest.raises(checks.ArgumentError, match=r"x_t and eps must be tensors of the same"):
        diffusion.predict_x0(x, x[:, :1], 0.5)
    with pytest.raises(checks.ArgumentError, match=r"x_t and x0 must be tensors of the same"):
        diffusion.predict_eps(x, x[:1], 0.5)
    with pytest.raises(checks.ArgumentError, match=r"alpha_bar \(x_0 is lost.*\(0, 1\], got 0"):
        diffusion.predict_x0(x, x, 0.0)
    with pytest.raises(checks.ArgumentError, match=r"alpha_bar \(no noise.*\[0, 1\), got 1"):
        diffusion.predict_eps(x, x, 1.0)
    eps = diffusion.predict_eps(x, x * 0.5, torch.full((3, 1), 0.3))
    assert torch.allclose(diffusion.predict_x0(x, eps, torch.full((3, 1), 0.3)), x * 0.5,
                          atol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "heun", "euler_maruyama", "ddim"])
def test_beyond_the_sde_solvers_refuse_to_end_in_nan(solver):
    """Was: a field returning NaN (or NaN in x) came out as a NaN state, silently."""
    from companion import sde

    vp, x, ts = sde.VPSDE(), torch.randn(3, 2), [1.0, 0.5, 0.0]
    run = {"euler": lambda f, y: sde.euler(f, y, ts), "heun": lambda f, y: sde.heun(f, y, ts),
           "euler_maruyama": lambda f, y: sde.euler_maruyama(f, lambda t: 1.0, y, ts),
           "ddim": lambda f, y: sde.ddim(f, vp, y, [0.9, 0.5, 0.0])}[solver]
    assert torch.isfinite(run(lambda y, t: -y, x)).all()
    with pytest.raises(checks.ArgumentError, match=rf"{solver} ended with 6 NaN or infinite"):
        run(lambda y, t: y * float("nan"), x)
    with pytest.raises(checks.ArgumentError, match=rf"{solver} ended with [1-6] NaN"):
        run(lambda y, t: -y, torch.where(x > x.max() - 1e-6, float("nan"), x))


def test_beyond_a_table_format_that_does_not_fit_names_its_column():
    """Was: Python's bare 'Unknown format code 'd' for object of type 'float''."""
    from companion.run import tables

    with pytest.raises(ValueError, match=r"format ',d' cannot show row 1, column 'FD', 2\.5 "
                                         r"\(Unknown format code 'd'.*such as '\.3f'"):
        tables.markdown(["sampler", "FD"], [["a", 3], ["b", 2.5]], formats=[None, ",d"])
