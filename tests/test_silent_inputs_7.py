"""Cryptic errors of chapters 18-20's modules and the explorers made clear (issue 78, point
10): each case ended inside torch, NumPy or Python with a message that named no argument
("'NoneType' object is not callable", "'int' object is not iterable", "new(): invalid data
type 'str'", "manual_seed expected a long", "mat1 and mat2 shapes cannot be multiplied",
KeyError: 'lo', "Object arrays cannot be loaded"), and each now fails on a check at the public
entry point that names the argument and says what it needs. Each test failed on the code
before its fix. A few inputs that failed that way were valid: they now give their answer.

The rules, one a family (companion/run/checks.py): a function argument is callable with its
arity (`checks.function`); a sequence is not a number, None or a string (`sequence`); numbers
convert, or the error names them (`numeric`); a seed is a whole number >= 0 (`seed`); a
generator, a device and a dtype are of their kind (`generator`, `device`, `floating_dtype`);
shapes broadcast or are refused by name (`broadcastable`, `same_shape`); a stored file is
checked for its kind and arrays before it is read (`page_explorers._npz`); a profile is a
Profile (`recipes._profile`). The probe that found them: 742 calls, 219 cryptic before, 2
after (the denoiser's own check, which now names D).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from companion import masked as mk
from companion import metrics as M
from companion import page_explorers as PE
from companion import recipes as R
from companion import vdm
from companion.models import quantizer as Q
from companion.models.code_prior import ARPrior
from companion.run import checks
from companion.run.profiles import get_profile

# 174 cases, about 4 s with their imports: `make test` runs them, check-fast keeps its minute
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "notebooks" / "explorers"
FAST = 0.5  # seconds: a refusal checks its arguments first


def zeros_eps(z, gamma):
    return torch.zeros_like(z)


def one(lam):
    return torch.ones_like(lam)


class Stepper(nn.Module):
    """A network of integer steps, model(z, t), built for T steps."""

    def __init__(self, T=10, width=None):
        super().__init__()
        self.config = type("Config", (), {"T": T})()
        self.width = width

    def forward(self, z, t):
        return z if self.width is None else torch.zeros(len(z), self.width)


X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
LAM = torch.linspace(-5, 5, 11, dtype=torch.float64)
LIN = vdm.LinearSchedule()
REAL = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
FAKE = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
CI = get_profile("ci")


def _refused(call, match):
    start = time.perf_counter()
    with pytest.raises(checks.ArgumentError, match=match):
        call()
    assert time.perf_counter() - start < FAST


def _adapter():
    return vdm.StepAdapter.linear(Stepper(10))


def _ar():
    return ARPrior(4, grid=(2, 2), width=8, depth=1, heads=1)


def _toy():
    from companion.toy import BinaryTable

    return BinaryTable.from_prototypes(torch.eye(3, dtype=torch.float64), [1, 1, 1], flip=0.1)


# --- a function argument that is no function, or of another arity (checks.function) ------------
FUNCTIONS = {
    "continuous loss, eps_model None": (lambda: vdm.continuous_diffusion_loss(None, LIN, X),
                                        r"^eps_model must be a function \(z_t"),
    "continuous loss, eps_model of one argument": (
        lambda: vdm.continuous_diffusion_loss(lambda z: z, LIN, X),
        r"^eps_model must be a function of 2 arguments"),
    "discrete loss, eps_model None": (lambda: vdm.discrete_diffusion_loss(None, LIN, X, 10),
                                      r"^eps_model must be a function"),
    "vdm_bound, eps_model None": (lambda: vdm.vdm_bound(None, LIN, X, decoder="gaussian"),
                                  r"^eps_model must be a function"),
    "reconstruction_nll, eps_model 3": (
        lambda: vdm.reconstruction_nll(LIN, X, decoder="gaussian", eps_model=3),
        r"^eps_model must be a function"),
    "weighted_loss, eps_model None": (lambda: vdm.weighted_loss(None, LIN, X, one),
                                      r"^eps_model must be a function"),
    "weighted_loss, weighting of no argument": (
        lambda: vdm.weighted_loss(zeros_eps, LIN, X, lambda: 1.0),
        r"^weighting must be a function of 1 argument"),
    "is_monotone_weighting, None": (lambda: vdm.is_monotone_weighting(None, LAM),
                                    r"^weighting must be a function w\(lambda\)"),
    "is_monotone_weighting, a name": (lambda: vdm.is_monotone_weighting("elbo", LAM),
                                      r"^weighting must be .*not its name"),
    "weighted_loss_as_elbos, None": (
        lambda: vdm.weighted_loss_as_elbos(None, LAM, torch.zeros(11)),
        r"^weighting must be a function"),
    "gaussian_weighted_loss, None": (lambda: vdm.gaussian_weighted_loss(None, LAM, 1.0),
                                     r"^weighting must be a function"),
    "FunctionSchedule, gamma_fn of no argument": (
        lambda: vdm.FunctionSchedule(lambda: 1.0), r"^gamma_fn must be a function of 1"),
    "StepAdapter, model None": (lambda: vdm.StepAdapter(None, torch.linspace(-5, 5, 10)),
                                r"^model must be a function of integer steps"),
    "sampler_law, denoiser None": (lambda: mk.sampler_law(None, 3, 3),
                                   r"^denoiser must be a function of the states z"),
    "sampler_law, denoiser of no argument": (lambda: mk.sampler_law(lambda: 0, 3, 3),
                                             r"^denoiser must be a function of 1 argument"),
    "sample, denoiser None": (lambda: mk.sample(None, (2, 3), 3), r"^denoiser must be"),
    "loss, model None": (lambda: mk.loss(None, torch.zeros(2, 3)), r"^model must be"),
}


@pytest.mark.parametrize("case", list(FUNCTIONS))
def test_a_function_argument_that_is_no_function_is_refused_by_name(case):
    _refused(*FUNCTIONS[case])


# --- a sequence given as a number or None (checks.sequence) -------------------------------------
SEQUENCES = {
    "FSQ(5)": (lambda: Q.FSQ(5), r"^levels must be a sequence .*e\.g\. \(8, 5, 5, 5\), got 5"),
    "FSQ(None)": (lambda: Q.FSQ(None), r"^levels must be a sequence"),
    "ARPrior(grid=7)": (lambda: ARPrior(4, grid=7, width=8, depth=1, heads=1),
                        r"^grid must be a sequence .*\(7, 7\)"),
    "masked.sample(shape=5)": (lambda: mk.sample(_toy().denoiser, 5, 3),
                               r"^shape must be a sequence"),
    "masked.sample(shape=())": (lambda: mk.sample(_toy().denoiser, (), 3),
                                r"^shape must hold at least"),
    "kl_page(weights=5)": (lambda: PE.kl_page(weights=5), r"^weights must be a sequence"),
    "solvers_page(steps=5)": (lambda: PE.solvers_page(steps=5), r"^steps must be a sequence"),
    "fewstep_page(steps=None)": (lambda: PE.fewstep_page(steps=None),
                                 r"^steps must be a sequence"),
    "grid_page(steps=5)": (lambda: PE.grid_page(steps=5), r"^steps must be a sequence"),
    "guidance_page(weights=5)": (lambda: PE.guidance_page(weights=5),
                                 r"^weights must be a sequence"),
    "bound_page(steps=5)": (lambda: PE.bound_page(5), r"^steps must be a sequence"),
    "latent_page(dims=0)": (lambda: PE.latent_page(STORED / "ch6-latent-decoder.npz", dims=0),
                            r"^dims must be a sequence"),
    "chapter18_schedules(ends=5)": (lambda: PE.chapter18_schedules(5),
                                    r"^ends must be a sequence"),
    "chapter18_schedules(three ends)": (lambda: PE.chapter18_schedules((1.0, 2.0, 3.0)),
                                        r"^ends must hold 2 entries"),
    "snapshots(fractions=0.5)": (lambda: R.snapshots(R.vdm, R.vdm_checkpoint, X, CI, "cpu",
                                                     fractions=0.5),
                                 r"^fractions must be a sequence"),
}


@pytest.mark.parametrize("case", list(SEQUENCES))
def test_a_sequence_given_as_a_number_is_refused_by_name(case):
    _refused(*SEQUENCES[case])


# --- numbers given as strings, None, ragged lists, complex (checks.numeric) ---------------------
NUMBERS = {
    "ChainSchedule('a')": (lambda: vdm.ChainSchedule("a"), r"^alphas_bar must be numbers"),
    "StepAdapter.chain(None)": (lambda: vdm.StepAdapter.chain(Stepper(), None),
                                r"^alphas_bar must be numbers"),
    "snr(complex)": (lambda: vdm.snr(torch.tensor([1 + 1j])), r"^gamma must be real"),
    "mean_top_probability('x')": (lambda: M.mean_top_probability("x"),
                                  r"^probs must be numbers"),
    "frechet_terms(ragged)": (lambda: M.frechet_terms([[1.0, 2.0], [1.0]], FAKE),
                              r"^a must be numbers .*one length"),
    "frechet_terms(dict)": (lambda: M.frechet_terms({"x": 1}, FAKE), r"^a must be numbers"),
    "frechet_line(distances 'x')": (lambda: M.frechet_line([1, 2], "x"),
                                    r"^distances must be numbers"),
    "frechet_line(complex)": (lambda: M.frechet_line([1, 2], torch.tensor([1 + 1j, 2 + 0j])),
                              r"^distances must be real"),
    "jackknife_se(None)": (lambda: M.jackknife_se(None), r"^loo \(the left-out values\) must"),
    "kl_page(means strings)": (lambda: PE.kl_page(means=("a", "b")),
                               r"^every mean in means must be a real number"),
    "kl_page(stds 0)": (lambda: PE.kl_page(stds=(0.0, 0.0)), r"^every std in stds must be"),
    "kl_page(weights 0)": (lambda: PE.kl_page(weights=(0.0, 0.0)),
                           r"^weights must not all be 0"),
    "elbo_page(W 'a')": (lambda: PE.elbo_page("a", [0.0, 0.0], 0.5, [0.0, 0.0]),
                         r"^W must be numbers"),
    "elbo_page(x of 3 for D = 2)": (lambda: PE.elbo_page([[1.0], [1.0]], [0.0, 0.0], 0.5,
                                                         [0.0, 0.0, 0.0]),
                                    r"^x must be one data point of D = 2"),
    "pack('x')": (lambda: PE.pack("x"), r"^a must be numbers"),
    "pack(None)": (lambda: PE.pack(None), r"^a must be numbers"),
    "pack(dtype 'f8')": (lambda: PE.pack([1.0], "f8"), r"^dtype must be one of"),
    "pack(300 as u8)": (lambda: PE.pack([300.0], "u8"), r"^a must hold grey levels 0\.\.255"),
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_numbers_that_do_not_convert_are_refused_by_name(case):
    _refused(*NUMBERS[case])


# --- seeds, generators, devices, dtypes ---------------------------------------------------------
KINDS = {
    "pinned_page(seed='x')": (lambda: PE.pinned_page(0.0, 1.5, 2, seed="x"),
                              r"^seed must be a whole number in 0\.\."),
    "pinned_page(seed=-1)": (lambda: PE.pinned_page(0.0, 1.5, 2, seed=-1), r"^seed must be"),
    "forward_page(seed=None)": (lambda: PE.forward_page(seed=None), r"^seed must be"),
    "solvers_page(seed=1.5)": (lambda: PE.solvers_page(seed=1.5), r"^seed must be"),
    "fewstep_page(seed='x')": (lambda: PE.fewstep_page(seed="x"), r"^seed must be"),
    "guidance_page(seed='x')": (lambda: PE.guidance_page(seed="x"), r"^seed must be"),
    "grid_page(seed='x')": (lambda: PE.grid_page(seed="x"), r"^seed must be"),
    "frechet_bootstrap(seed='x')": (lambda: M.frechet_bootstrap({"a": FAKE}, REAL, 2,
                                                                seed="x"), r"^seed must be"),
    "LearnedSchedule(generator=0)": (lambda: vdm.LearnedSchedule(hidden=4, generator=0),
                                     r"^generator must be a torch\.Generator or None"),
    "stratified_times(generator='x')": (lambda: vdm.stratified_times(4, generator="x"),
                                        r"^generator must be"),
    "continuous loss(generator='x')": (lambda: vdm.continuous_diffusion_loss(
        zeros_eps, LIN, X, generator="x"), r"^generator must be"),
    "restart_dead_codes(generator='x')": (lambda: _restart(generator="x"),
                                          r"^generator must be"),
    "ARPrior.sample(generator=0)": (lambda: _ar().sample(2, generator=0),
                                    r"^generator must be"),
    "draw_values(generator='x')": (lambda: mk.draw_values(torch.zeros(2, 3), generator="x"),
                                   r"^generator must be"),
    "stratified_times(device='gpu')": (lambda: vdm.stratified_times(4, device="gpu"),
                                       r"^device must be a device such as 'cpu'"),
    "ARPrior.sample(device='gpu')": (lambda: _ar().sample(2, device="gpu"),
                                     r"^device must be a device"),
    "masked.sample(device='gpu')": (lambda: mk.sample(_toy().denoiser, (2, 3), 3,
                                                      device="gpu"), r"^device must be"),
    "vdm_sampler(device='gpu')": (lambda: R.vdm_sampler(vdm.DiffusionModel(_adapter(), LIN),
                                                        CI, "gpu"), r"^device must be"),
    "stratified_times(dtype=long)": (lambda: vdm.stratified_times(4, dtype=torch.long),
                                     r"^dtype must be a floating-point torch dtype"),
    "ends(dtype='float64')": (lambda: LIN.ends("float64"), r"^dtype must be a floating"),
    "ends(dtype=int)": (lambda: LIN.ends(torch.long), r"^dtype must be a floating"),
}


def _restart(generator=None, z=None):
    vq = Q.VectorQuantizer(K=4, D=2)
    vq.unused_steps.fill_(5)
    return vq.restart_dead_codes(torch.randn(2, 2, 3, 3) if z is None else z, 1,
                                 generator=generator)


@pytest.mark.skipif(torch.cuda.is_available(), reason="'cuda' names a device here")
def test_cuda_without_a_gpu_is_refused_by_name():
    _refused(lambda: _ar().sample(2, device="cuda"), r"^device is 'cuda', but this machine "
             r"has no usable CUDA GPU")


@pytest.mark.parametrize("case", list(KINDS))
def test_a_seed_generator_device_or_dtype_of_another_kind_is_refused_by_name(case):
    _refused(*KINDS[case])


# --- tensors given as lists to the public halves of what forward checks once ------------------
def _ema():
    return Q.VectorQuantizer(K=4, D=2, ema=True)


TENSORS = {
    "count_unused(list)": (lambda: Q.VectorQuantizer(4, 2).count_unused([0, 1]),
                           r"^indices must be a torch tensor"),
    "count_unused(floats)": (lambda: Q.VectorQuantizer(4, 2).count_unused(torch.zeros(3)),
                             r"^indices must be an integer tensor of codes 0\.\.3"),
    "count_unused(code K)": (lambda: Q.VectorQuantizer(4, 2).count_unused(torch.tensor([4])),
                             r"^indices must hold codes 0\.\.3"),
    "ema_update(rows list)": (lambda: _ema().ema_update([[0.0, 0.0]], torch.tensor([0])),
                              r"^rows must be a torch tensor"),
    "ema_update(rows of 3 for D = 2)": (lambda: _ema().ema_update(torch.zeros(1, 3),
                                                                  torch.tensor([0])),
                                        r"^rows must be encoder outputs \(N, D\) = \(N, 2\)"),
    "ema_update(index K)": (lambda: _ema().ema_update(torch.zeros(1, 2), torch.tensor([4])),
                            r"^indices must hold codes"),
    "ema_update(lengths differ)": (lambda: _ema().ema_update(torch.zeros(2, 2),
                                                             torch.tensor([0])),
                                   r"^rows must be .* and indices their codes"),
    "nearest_code(list)": (lambda: Q.nearest_code([[0.0]], torch.zeros(4, 2)),
                           r"^z must be a torch tensor"),
    "nearest_code(1-D z)": (lambda: Q.nearest_code(torch.zeros(2), torch.zeros(4, 2)),
                            r"^z must have 2 dimensions"),
    "nearest_code(widths differ)": (lambda: Q.nearest_code(torch.zeros(3, 2),
                                                           torch.zeros(4, 3)),
                                    r"^z \(N, D\) and codebook \(K, D\) must have one D"),
    "nearest_code(empty codebook)": (lambda: Q.nearest_code(torch.zeros(3, 2),
                                                            torch.zeros(0, 2)),
                                     r"^codebook is empty"),
    "straight_through(list)": (lambda: Q.straight_through([0.0], torch.zeros(1)),
                               r"^value must be a torch tensor"),
    "straight_through((1,) over (3,))": (lambda: Q.straight_through(torch.zeros(1),
                                                                    torch.zeros(3)),
                                         r"^value and z must be tensors of the same shape"),
    "FSQ.bound(list)": (lambda: Q.FSQ((3, 4)).bound([[0.0]]), r"^z must be a torch tensor"),
    "FSQ.bound(3 channels for 2)": (lambda: Q.FSQ((3, 4)).bound(torch.zeros(1, 3, 1, 1)),
                                    r"^z must be encoder outputs \(B, D, H, W\) = \(B, 2"),
    "restart_dead_codes(empty batch)": (lambda: _restart(z=torch.zeros(0, 2, 3, 3)),
                                        r"^z_e \(0, 2, 3, 3\) holds no positions"),
    "draw_values(list)": (lambda: mk.draw_values([[0.0]]), r"^logits must be a torch tensor"),
    "draw_values(1-D)": (lambda: mk.draw_values(torch.zeros(3)),
                         r"^logits must be \(n, D\) Bernoulli logits or \(n, K, D\)"),
    "latent_mean_image(list z)": (lambda: PE.latent_mean_image(_layers(), [[0.0, 0.0]]),
                                  r"^z must be a torch tensor"),
    "latent_mean_image(z of 3)": (lambda: PE.latent_mean_image(_layers(), torch.zeros(1, 3)),
                                  r"^z must be latent codes \(\.\.\., 2\)"),
    "latent_mean_image(no layers)": (lambda: PE.latent_mean_image([], torch.zeros(1, 2)),
                                     r"^layers must be the decoder's \(W, b\) pairs"),
    "solver_errors(list)": (lambda: PE.solver_errors([[0.0, 0.0]], torch.zeros(1, 2),
                                                     torch.zeros(2, 2)),
                            r"^x must be a torch tensor"),
    "solver_errors(ref of 2 for 3 ends)": (lambda: PE.solver_errors(
        torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(2, 2)),
        r"^ref must be one reference point per end of x"),
    "bits_per_dim('x')": (lambda: vdm.VDMBound(*[torch.zeros(2)] * 3, 4).bits_per_dim("x"),
                          r"^nats must be a number or a tensor"),
    "interior(int tensor)": (lambda: vdm.LearnedSchedule(hidden=4).interior(
        torch.tensor([2, 3])), r"^t must lie in \[0, 1\]"),
    "adapter.steps(None)": (lambda: _adapter().steps(None), r"^gamma must be a number"),
}


def _layers():
    return PE.latent_decoder(STORED / "ch6-latent-decoder.npz")


@pytest.mark.parametrize("case", list(TENSORS))
def test_a_tensor_argument_of_the_wrong_kind_is_refused_by_name(case):
    _refused(*TENSORS[case])


# --- shapes that broadcast into a torch error or silently -----------------------------------
SHAPES = {
    "gaussian_eps_mse(model_std (3,) for std (2,))": (
        lambda: vdm.gaussian_eps_mse(0.0, [1.0, 2.0], [1.0, 1.0, 1.0]),
        r"^model_std must be one number or one per dimension of std \(2,\), got 3"),
    "gaussian_weighted_loss(model_std (3,))": (
        lambda: vdm.gaussian_weighted_loss(one, LAM, [1.0, 2.0], [1.0, 1.0, 1.0]),
        r"^model_std must be one number"),
    "gaussian_continuous_loss(snr (2,) and (3,))": (
        lambda: vdm.gaussian_continuous_loss(torch.tensor([5.0, 6.0]),
                                             torch.tensor([1.0, 2.0, 3.0]), 1.0),
        r"^snr_0 and snr_1 must have shapes that broadcast together"),
    "gaussian_bound(mean (3,), std (2,))": (
        lambda: vdm.gaussian_bound(LIN, [0.0, 0.0, 0.0], [1.0, 1.0]),
        r"^mean must be one number or one per dimension of std \(2,\), got 3"),
    "gaussian_weighted_loss(w one short)": (
        lambda: vdm.gaussian_weighted_loss(lambda lam: lam[1:], LAM, 1.0),
        r"^weighting\(lam\) must return one weight per log-SNR"),
    "gaussian_weighted_loss(w (N, 1))": (
        lambda: vdm.gaussian_weighted_loss(lambda lam: lam[:, None], LAM, 1.0),
        r"^weighting\(lam\) must return one weight per log-SNR"),
    "gaussian_weighted_loss(w < 0)": (
        lambda: vdm.gaussian_weighted_loss(lambda lam: -torch.ones_like(lam), LAM, 1.0),
        r"^weighting\(lam\) must be finite and >= 0"),
    "gaussian_partial_loss(lam 1000)": (
        lambda: vdm.gaussian_partial_loss(torch.tensor([1000.0], dtype=torch.float64), -5.0,
                                          1.0), r"^lam must be log-SNRs within"),
    "FunctionSchedule(derivative_fn (N, 1))": (
        lambda: vdm.FunctionSchedule(lambda t: 10 * t - 5,
                                     lambda t: torch.full_like(t, 10.0)[:, None]),
        r"^derivative_fn must return a tensor shaped like t, got \(5, 1\)"),
    "FunctionSchedule(derivative_fn a number)": (
        lambda: vdm.FunctionSchedule(lambda t: 10 * t - 5, lambda t: 10.0),
        r"^derivative_fn must return a tensor shaped like t, got float"),
    "StepAdapter(interpolate, model (B, 1))": (
        lambda: vdm.StepAdapter.linear(Stepper(10, width=1), interpolate=True)(
            X, torch.zeros(4)), r"^model\(z, t\) returned shape \(8, 1\)"),
    "diffuse(noise of integers)": (lambda: vdm.diffuse(X, torch.zeros(4), X.long()),
                                   r"^noise must be a floating-point tensor"),
    "is_monotone_weighting(rtol='x')": (lambda: vdm.is_monotone_weighting(one, LAM, "x"),
                                        r"^rtol must be a real number >= 0"),
    "knn_labels(labels a list)": (lambda: M.knn_labels(X, X, [0, 1, 2, 3], k=1),
                                  r"^labels must be a torch tensor"),
    "knn_labels(labels (M, 1))": (lambda: M.knn_labels(X, X, torch.zeros(4, 1).long(), k=1),
                                  r"^labels must have 1 dimensions"),
    "knn_labels(labels floats)": (lambda: M.knn_labels(X, X, torch.zeros(4), k=1),
                                  r"^labels must be an integer tensor of class labels"),
    "knn_labels(reference None)": (lambda: M.knn_labels(X, None, torch.zeros(4).long()),
                                   r"^reference must be a torch tensor"),
    "label_histogram(classes='10')": (lambda: M.label_histogram(torch.full((2, 10), 0.1),
                                                                "10"),
                                      r"^classes must be a whole number"),
    "frechet_jackknife(a list)": (lambda: M.frechet_jackknife([FAKE], REAL),
                                  r"^features must be a dict \{name: \(N, d\) features\}"),
    "frechet_jackknife({})": (lambda: M.frechet_jackknife({}, REAL),
                              r"^features must be a dict .*\(empty\)"),
    "frechet_bootstrap({a: None})": (lambda: M.frechet_bootstrap({"a": None}, REAL, 2, seed=0),
                                     r"^features\['a'\] must be a feature matrix"),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_a_shape_or_kind_that_broadcasts_or_fails_inside_torch_is_refused_by_name(case):
    _refused(*SHAPES[case])


# --- stored files: their kind and arrays checked before they are read (page_explorers._npz) ------
@pytest.mark.parametrize("page, writer", [(PE.chain_page, "store_chain"),
                                          (PE.completions_page, "store_completions"),
                                          (PE.corruption_page, "store_corruptions"),
                                          (PE.latent_page, "save_latent_decoder"),
                                          (PE.text_unmasking_page, "store_text_unmasking")])
def test_a_stored_file_of_another_kind_is_refused_by_name(page, writer, tmp_path):
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    other = STORED / ("ch9-chain.npz" if writer != "store_chain" else "ch20-corruptions.npz")
    for stored, match in ((None, rf"^stored must be the path of an \.npz file written by "
                                 rf"{writer}, got None"),
                          (tmp_path / "none.npz", rf"^stored must be an \.npz file written "
                                                  rf"by {writer}, but .*none\.npz' is no file"),
                          (text, r"^stored must be an \.npz file .* is another kind of file"),
                          (other, r"^stored lacks \[.*\] of the arrays .*another explorer")):
        _refused(lambda s=stored: page(s), match)


def test_the_stored_explorers_of_the_book_still_load():
    for name, page in (("ch9-chain", PE.chain_page), ("ch12-completions", PE.completions_page),
                       ("ch20-corruptions", PE.corruption_page),
                       ("ch6-latent-decoder", PE.latent_page),
                       ("ch22-unmasking", PE.text_unmasking_page)):
        assert page(STORED / f"{name}.npz")["kind"]


# --- stores: what they are given is of its kind, or refused naming the field ------------------
def _frames():
    image = torch.zeros(2, 1, 28, 28)
    return {10: (image, image), 0: (image, image)}


def _text_states():
    """One sentence of two positions over the alphabet "ab" (padding: 2), in two steps."""
    frames = torch.tensor([[[-1, -1]], [[0, -1]], [[0, 2]]])
    return {"random": frames, "confidence": frames.clone()}


MASKS = {"left": ("left half", torch.ones(2, 28, 28))}
COMPLETIONS = {("m", "left"): torch.zeros(3, 2, 28, 28)}
NUMBERS_ROW = {("m", "left"): [1.0, 2.0, 3.0, 4.0, 5.0]}
TRUTH = torch.zeros(2, 28, 28)
CLEAN = {"lo": [0.9] * 6, "hi": [1.1] * 6}


def _sweep(**change):
    out = {}
    for i, k in enumerate(("blur", "noise")):
        v = ["unit", [0.0, 0.5, 1.0], [[100 * i + 10 * lv + j for j in range(6)]
                                       for lv in range(3)], torch.full((3, 2, 28, 28), 0.5)]
        for where, value in change.items():
            v[int(where[1:])] = value
        out[k] = tuple(v)
    return out


STORES = {
    "store_chain(frames {})": (lambda: PE.store_chain("c", {}, np.ones(10), "cpu"),
                               r"^frames must be a dict \{t: \(x_t, x0_pred\)\}"),
    "store_chain(frames of one image)": (
        lambda: PE.store_chain("c", {10: (torch.zeros(2, 1, 28, 28),)}, np.ones(10), "cpu"),
        r"^frames\[10\] must be a pair \(x_t, x0_pred\)"),
    "store_chain(frames keyed by strings)": (
        lambda: PE.store_chain("c", {"10": _frames()[10]}, np.ones(10), "cpu"),
        r"^every step t in frames must be a whole number"),
    "store_chain(snr 'x')": (lambda: PE.store_chain("c", _frames(), "x", "cpu"),
                             r"^snr must be numbers"),
    "store_chain(snr NaN)": (lambda: PE.store_chain("c", _frames(), np.full(10, np.nan), "cpu"),
                             r"^store_chain: its page would refuse .*snr must be the "
                             r"schedule's \(T,\) signal-to-noise ratios"),
    "store_chain(profile None)": (lambda: PE.store_chain("c", _frames(), np.ones(10), None),
                                  r"^profile must be the run's profile"),
    "store_text_unmasking(states None)": (
        lambda: PE.store_text_unmasking("u", None, "ab", "cpu"),
        r"^states must be a dict \{order: ids \(K \+ 1, S, L\)\} with exactly the orders "
        r"\('random', 'confidence'\), both sampled, got None"),
    "store_text_unmasking(an order misnamed)": (
        lambda: PE.store_text_unmasking("u", {"random": _text_states()["random"],
                                              "confident": _text_states()["random"]}, "ab",
                                        "cpu"),
        r"^states must be a dict .*got the keys \['confident', 'random'\]"),
    "store_text_unmasking(states 'x')": (
        lambda: PE.store_text_unmasking("u", {**_text_states(), "random": "x"}, "ab", "cpu"),
        r"^states\['random'\] must be numbers"),
    "store_text_unmasking(alphabet None)": (
        lambda: PE.store_text_unmasking("u", _text_states(), None, "cpu"),
        r"^alphabet must be the tokenizer's characters, a string of distinct ones"),
    "store_text_unmasking(alphabet 'aa')": (
        lambda: PE.store_text_unmasking("u", _text_states(), "aa", "cpu"),
        r"^alphabet must be the tokenizer's characters"),
    "store_text_unmasking(alphabet of 65)": (
        lambda: PE.store_text_unmasking("u", _text_states(), "".join(map(chr, range(65, 130))),
                                        "cpu"),
        r"^len\(alphabet\) must be at most 64, got 65"),
    "store_text_unmasking(alphabet one too short)": (
        lambda: PE.store_text_unmasking("u", _text_states(), "a", "cpu"),
        r"^states\['random'\] must hold ids -1 \(masked\) to 1 \(padding"),
    "store_text_unmasking(13 sentences)": (
        lambda: PE.store_text_unmasking("u", {o: v.expand(-1, 13, -1) for o, v in
                                              _text_states().items()}, "ab", "cpu"),
        r"^states\['random'\]'s sentences S must be at most 12, got 13"),
    "store_text_unmasking(129 positions)": (
        lambda: PE.store_text_unmasking("u", {o: v[..., :1].expand(-1, -1, 129) for o, v in
                                              _text_states().items()}, "ab", "cpu"),
        r"^states\['random'\]'s positions L must be at most 128, got 129"),
    "store_text_unmasking(profile None)": (
        lambda: PE.store_text_unmasking("u", _text_states(), "ab", None),
        r"^profile must be the run's profile"),
    "store_completions(masks {})": (
        lambda: PE.store_completions("k", TRUTH, {}, COMPLETIONS, NUMBERS_ROW, 10),
        r"^masks must be a dict, at least one entry"),
    "store_completions(mask without description)": (
        lambda: PE.store_completions("k", TRUTH, {"left": torch.ones(2, 28, 28)}, COMPLETIONS,
                                     NUMBERS_ROW, 10),
        r"^masks\['left'\] must be a pair \(its description"),
    "store_completions(keys not pairs)": (
        lambda: PE.store_completions("k", TRUTH, MASKS, {"m": torch.zeros(3, 2, 28, 28)},
                                     NUMBERS_ROW, 10),
        r"^completions and numbers must be keyed by \(method, mask\) pairs"),
    "store_completions(numbers strings)": (
        lambda: PE.store_completions("k", TRUTH, MASKS, COMPLETIONS,
                                     {("m", "left"): ["a"] * 5}, 10),
        r"^numbers\['m', 'left'\] must be numbers"),
    "store_completions(n_digits 'x')": (
        lambda: PE.store_completions("k", TRUTH, MASKS, COMPLETIONS, NUMBERS_ROW, "x"),
        r"^n_digits \(the test digits the numbers are over\) must be a whole number"),
    "store_completions(truth of 3 digits for 2)": (
        lambda: PE.store_completions("k", torch.zeros(3, 28, 28), MASKS, COMPLETIONS,
                                     NUMBERS_ROW, 10),
        r"its page would refuse .*truth must be the 2 digits shown"),
    "store_completions(completions 14 x 14)": (
        lambda: PE.store_completions("k", TRUTH, MASKS, {("m", "left"): torch.zeros(
            3, 2, 14, 14)}, NUMBERS_ROW, 10),
        r"its page would refuse .*completions must be \(methods, masks, K, S, 28, 28\)"),
    "store_corruptions(clean {})": (lambda: PE.store_corruptions("s", _sweep(), {}),
                                    r"^clean must be \{'lo': \(6,\), 'hi': \(6,\)\}"),
    "store_corruptions(clean None)": (lambda: PE.store_corruptions("s", _sweep(), None),
                                      r"^clean must be"),
    "store_corruptions(clean strings)": (
        lambda: PE.store_corruptions("s", _sweep(), {"lo": ["a"] * 6, "hi": [1.0] * 6}),
        r"^clean\['lo'\] must be numbers"),
    "store_corruptions(clean lo > hi)": (
        lambda: PE.store_corruptions("s", _sweep(), {"lo": [2.0] * 6, "hi": [1.0] * 6}),
        r"its page would refuse .*clean's band must be finite with lo <= hi"),
    "store_corruptions(a list)": (lambda: PE.store_corruptions("s", list(_sweep().values()),
                                                               CLEAN),
                                  r"^corruptions must be a dict"),
    "store_corruptions(three fields)": (
        lambda: PE.store_corruptions("s", {k: v[:3] for k, v in _sweep().items()}, CLEAN),
        r"^corruptions\['blur'\] must be \(unit, strengths, measures, images\)"),
    "store_corruptions(measures strings)": (
        lambda: PE.store_corruptions("s", _sweep(m2=[["a"] * 6] * 3), CLEAN),
        r"^corruptions\['blur'\]'s measures must be numbers"),
    "store_corruptions(unit None)": (lambda: PE.store_corruptions("s", _sweep(m0=None), CLEAN),
                                     r"the unit a string"),
    "store_corruptions(2 strengths for 3 levels)": (
        lambda: PE.store_corruptions("s", _sweep(m1=[0.0, 1.0]), CLEAN),
        r"its page would refuse .*the strengths must be \(corruptions, strengths\) = \(2, 3\)"),
    "store_corruptions(images 14 x 14)": (
        lambda: PE.store_corruptions("s", _sweep(m3=torch.zeros(3, 2, 14, 14)), CLEAN),
        r"its page would refuse .*images must be \(corruptions, strengths, S, 28, 28\)"),
    "save_latent_decoder(model None)": (lambda: PE.save_latent_decoder(None, "d.npz"),
                                        r"^model must be a VAE with arch='mlp'"),
    "save_latent_decoder(path None)": (lambda: PE.save_latent_decoder(_vae(), None),
                                       r"^path must be a file name"),
    "store_latent_decoder(a Linear)": (lambda: PE.store_latent_decoder(nn.Linear(2, 2), "d"),
                                       r"^model must be a VAE"),
}


def _vae():
    from companion.models.vae import VAE

    return VAE(latent_dim=2, hidden=(8,))


@pytest.mark.parametrize("case", list(STORES))
def test_a_store_refuses_a_field_of_the_wrong_kind_by_name(case, monkeypatch):
    monkeypatch.delenv(PE.STORE_VAR, raising=False)
    _refused(*STORES[case])


# --- sliders: a span and step that miss where a slider starts ---------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: PE.straight_page("x"), r"^span must be a real number > 0, got 'x'"),
    (lambda: PE.straight_page(-1.0), r"^span must be a number > 0, got -1"),
    (lambda: PE.straight_page(0.0), r"^span must be a number > 0"),
    (lambda: PE.straight_page(step=0.3), r"^span = 2\.5 and step = 0\.3 put no slider "
                                         r"position at 0\.9 and 0\.4, where the sliders "
                                         r"start: .*multiples of step .*2\.5 and 0\.1\)"),
    (lambda: PE.latent_page(STORED / "ch6-latent-decoder.npz", span=0.12),
     r"^span = 0\.12 and step = 0\.05 put no slider position at 0, where each slider"),
    (lambda: PE.latent_page(STORED / "ch6-latent-decoder.npz", span="x"), r"^span must be"),
])
def test_a_span_and_step_that_miss_the_sliders_start_are_refused_by_name(call, match):
    _refused(call, match)


# --- the recipes: a profile by name, a model of another kind, sizes that are no numbers --------
RECIPES = {
    "vq_settings('ci')": (lambda: R.vq_settings("ci"),
                          r"^profile must be a companion Profile, got 'ci': pass "
                          r"companion\.run\.profiles\.get_profile\('ci'\)"),
    "vqvae_start(None)": (lambda: R.vqvae_start(None), r"^profile must be a companion Profile"),
    "vdm(profile 'xx')": (lambda: R.vdm(torch.rand(2, 1, 28, 28), "xx", "cpu"),
                          r"^profile must be a companion Profile"),
    "vdm_eps_function(a Linear)": (lambda: R.vdm_eps_function(nn.Linear(2, 2), "cpu"),
                                   r"^model must be what recipes\.vdm returns"),
    "vdm_sampler(None)": (lambda: R.vdm_sampler(None, CI, "cpu"),
                          r"^model must be what recipes\.vdm returns"),
    "vq_steps(n_train '100')": (lambda: R.vq_steps(CI, "100"), r"^n_train \(the training "
                                                                r"digits\) must be a whole"),
    "vq_steps(n_train 0)": (lambda: R.vq_steps(CI, 0), r"^n_train .* must be a whole number"),
    "chosen_variant(a list)": (lambda: R.chosen_variant(["plain"]),
                               r"^runs must be a dict \{variant: FitResult\}"),
    "chosen_variant(None run)": (lambda: R.chosen_variant({"plain": None}),
                                 r"^runs\['plain'\] must be a FitResult"),
    "chosen_variant(history of strings)": (
        lambda: R.chosen_variant({"plain": type("Run", (), {"history": {
            "reconstruction": ["a"] * 5}})()}),
        r"^runs\['plain'\]'s logged reconstruction terms must be numbers"),
    "code_prior(vq None)": (lambda: R.code_prior(torch.rand(2, 1, 28, 28), CI, "cpu", vq=None,
                                                 variant="fsq"),
                            r"^vq must be the trained autoencoder"),
    "snapshots(total 'x')": (lambda: R.snapshots(R.vdm, R.vdm_checkpoint, X, CI, "cpu",
                                                 total="x"), r"^total .* must be a whole"),
    "vdm_checkpoint(prefix None)": (lambda: R.vdm_checkpoint(CI, prefix=None),
                                    r"^prefix must be a non-empty string"),
}


@pytest.mark.parametrize("case", list(RECIPES))
def test_a_recipe_refuses_an_argument_of_another_kind_by_name(case):
    _refused(*RECIPES[case])


STEPS_PAST = {  # issue 96: no recipe trains past its profile's full run (lm_model's bound)
    "ddpm": (lambda x: R.ddpm(x, CI, "cpu", steps=10**12), "pixel", 100),
    "flow_matching": (lambda x: R.flow_matching(x, CI, "cpu", steps=10**12), "flows", 100),
    "edm": (lambda x: R.edm(x, CI, "cpu", steps=10**12), "preconditioned", 100),
    "vdm": (lambda x: R.vdm(x, CI, "cpu", steps=10**12), "variational", 100),
    "latent_denoiser": (lambda x: R.latent_denoiser(None, x, CI, "cpu", scale=1.0,
                                                    steps=10**12), "latents", 300),
    "code_prior": (lambda x: R.code_prior(x, CI, "cpu", vq=None, variant="fsq",
                                          steps=10**12), "discrete", 300),
}


@pytest.mark.parametrize("recipe", list(STEPS_PAST))
def test_a_recipe_refuses_steps_past_its_full_run_before_training(recipe, monkeypatch,
                                                                   tmp_path):
    """10^12 steps trained until the process was killed; now refused first of all, with
    the bound (the profile's full run) and what to do for a longer one."""
    import importlib

    call, family, full = STEPS_PAST[recipe]

    def trains(*a, **k):
        raise AssertionError("trained before refusing")

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.import_module(f"companion.recipes.{family}"), "fit", trains)
    with pytest.raises(checks.ArgumentError, match=rf"^steps \(the updates of an early run, "
                                                   rf"or None for the full run\) must be at "
                                                   rf"most {full:,}, got 1,000,000,000,000: "
                                                   r"an early run stops partway"):
        call(torch.rand(8, 1, 28, 28))
    assert not (tmp_path / "checkpoints").exists()


def test_the_command_line_refuses_an_empty_profile(capsys):
    from companion import __main__ as cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["vdm", "--profile", ""])
    assert exit_.value.code == 2
    assert "--profile is empty: give ci, cpu or gpu" in capsys.readouterr().err


def test_a_sampler_given_another_d_than_its_denoisers_hears_of_d():
    _refused(lambda: mk.sampler_law(_toy().denoiser, 4, 2),
             r"^z \(the states of this table's D = 3 pixels; a sampler or bound given "
             r"another D\?\) must be states of shape \(B, 3\), got \(1, 4\)")


# --- inputs that failed inside torch and were valid: now their answers -----------------------
def test_valid_inputs_that_failed_inside_torch_now_give_their_answers():
    vq = Q.VectorQuantizer(K=4, D=2).eval()
    empty = vq(torch.zeros(0, 2, 3, 3))  # was: cannot reshape tensor of 0 elements
    assert empty.z_q.shape == (0, 2, 3, 3) and empty.indices.shape == (0, 3, 3)
    prior = _ar()
    codes = torch.randint(0, 4, (3, 2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.log_prob(codes.int()), prior.log_prob(codes))  # int32 targets
    one_std = vdm.gaussian_bound(LIN, [0.1, 0.2], 0.5)  # was: expanded size (1) ... (2)
    both = vdm.gaussian_bound(LIN, [0.1, 0.2], [0.5, 0.5])
    assert one_std.total == both.total and one_std.dims == 2
    learned = vdm.LearnedSchedule(hidden=4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5], dtype=torch.float64)
    assert torch.equal(learned.interior([0.5])[0], learned.interior(t)[0])  # was: no .dtype
    adapter = _adapter()
    assert torch.equal(adapter.steps([0.0]), adapter.steps(torch.zeros(1, dtype=torch.float64)))
    bound = vdm.VDMBound(*[torch.ones(2)] * 3, 4)
    assert torch.equal(bound.bits_per_dim([1.0, 2.0]),
                       bound.bits_per_dim(torch.tensor([1.0, 2.0], dtype=torch.float64)))
    grad = torch.ones(2, requires_grad=True)  # was: Can't call numpy() on a tensor that ...
    assert PE.pack(grad) == PE.pack(torch.ones(2))
    model = vdm.DiffusionModel(_adapter(), LIN)
    eps = R.vdm_eps_function(model, "cpu")
    z = torch.zeros(2, 1, 4, 4)
    assert torch.equal(eps(z, [0.0, 0.0]), eps(z, torch.zeros(2)))  # was: list has no .detach


def test_store_chain_takes_a_profile_as_its_name(tmp_path, monkeypatch):
    """Was: the Profile stored as an object array, which the page could not load."""
    monkeypatch.setenv(PE.STORE_VAR, str(tmp_path))
    path = PE.store_chain("c.npz", _frames(), np.linspace(5, 0.1, 10), CI)
    assert PE.chain_page(path)["profile"] == "ci"


def test_store_text_unmasking_takes_a_profile_as_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv(PE.STORE_VAR, str(tmp_path))
    path = PE.store_text_unmasking("u.npz", _text_states(), "ab", CI)
    assert PE.text_unmasking_page(path)["profile"] == "ci"


def test_the_checks_cost_nothing_on_valid_input_and_keep_its_answer():
    """The checks only read shapes, kinds and (on the CPU) values: a few calls of the
    families above, each the same value as the unchecked computation."""
    w = vdm.gaussian_weighted_loss(lambda lam: 1.0, LAM, 1.0)  # a constant weighting: one number
    assert math.isfinite(float(w))
    fsq = Q.FSQ((3, 4))
    z = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fsq.bound(z), fsq._bound(z))
