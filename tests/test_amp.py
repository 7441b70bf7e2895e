"""Mixed precision follows the device, and fit's loop never waits for the GPU."""

import warnings

import pytest
import torch
from torch import nn

from companion.run import precision
from companion.run.precision import autocast_dtype
from companion.train import fit


def regression_data(n=512, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x.to(device), (x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7).to(device)


def mse(model, batch):
    x, y = batch
    return ((model(x).float() - y) ** 2).mean()


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), torch.bfloat16),   # H100
    ((8, 0), torch.bfloat16),   # A100: the first with native bf16
    ((8, 6), torch.bfloat16),   # RTX 30xx
    ((7, 5), torch.float16),    # T4 (Colab): bf16 only emulated
    ((7, 0), torch.float16),    # V100
    ((6, 1), torch.float16),    # P100-era
])
def test_autocast_dtype_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype(torch.device("cuda")) == expected
    assert autocast_dtype("cuda:0") == expected


def _conv_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())


def _caps(monkeypatch, **flags):
    """Pretend torch reports these x86 capabilities (the rest False)."""
    monkeypatch.delenv(precision.CPU_BF16_VAR, raising=False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(flags), raising=False)


@pytest.mark.parametrize("flags, native", [
    ({"amx_bf16": True, "avx512_bf16": True}, True),   # Sapphire Rapids and later
    ({"avx512_bf16": True}, True),                      # Cooper Lake, Zen 4
    ({"avx512_f": True}, False),                        # AVX-512 without bf16: emulated
    ({"avx2": True}, False),                            # Zen 3, most laptops
])
def test_cpu_bf16_follows_the_units_torch_reports(monkeypatch, flags, native):
    _caps(monkeypatch, **flags)
    assert precision.cpu_bf16_native() is native
    assert autocast_dtype("cpu", _conv_net()) == (torch.bfloat16 if native else None)
    assert precision.describe("cpu") == ("bf16" if native else "float32")


def test_cpu_baseline_kernels_train_in_float32(monkeypatch):
    """make test's capability pass (ATEN_CPU_CAPABILITY=default) keeps float32 even where
    the units exist: its outputs must hold on any CPU."""
    _caps(monkeypatch, amx_bf16=True, avx512_bf16=True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert not precision.cpu_bf16_native()
    assert autocast_dtype("cpu", _conv_net()) is None


def test_small_mlps_stay_float32_on_a_bf16_cpu(monkeypatch):
    _caps(monkeypatch, amx_bf16=True)
    small = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
    wide = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024))
    assert sum(p.numel() for p in small.parameters()) < precision.CPU_BF16_MIN_PARAMS
    assert autocast_dtype("cpu", small) is None
    assert autocast_dtype("cpu", wide) == torch.bfloat16
    assert autocast_dtype("cpu") is None  # no network named: float32


@pytest.mark.parametrize("value, native", [("1", True), ("0", False), ("off", False)])
def test_cpu_bf16_variable_overrides_the_detection(monkeypatch, value, native):
    _caps(monkeypatch, amx_bf16=not native)
    monkeypatch.setenv(precision.CPU_BF16_VAR, value)
    assert precision.cpu_bf16_native() is native


def test_cpu_bf16_variable_refuses_a_typo(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_VAR, "bf16")
    with pytest.raises(ValueError, match=precision.CPU_BF16_VAR):
        precision.cpu_bf16_native()


def test_fit_trains_a_conv_net_under_bf16_on_a_bf16_cpu(monkeypatch):
    """The rule reaches fit: on a CPU with the units the loss runs under bf16 autocast, and
    no gradient scaler is made (bf16 has float32's exponent range)."""
    _caps(monkeypatch, amx_bf16=True)
    made = _recording_scaler(monkeypatch)
    seen = []
    x = torch.randn(64, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    y = x.sum((1, 2, 3)).unsqueeze(1) / 5

    def loss_fn(model, batch):
        seen.append(torch.get_autocast_dtype("cpu")
                    if torch.is_autocast_enabled("cpu") else None)
        xb, yb = batch
        return ((model(xb).float().sum(1, keepdim=True) - yb) ** 2).mean()

    fit(_conv_net(), loss_fn, (x, y), epochs=2, batch_size=32, lr=1e-2, quiet=True)
    assert set(seen) == {torch.bfloat16}
    assert made == [False]


def _recording_scaler(monkeypatch):
    made = []
    real = precision.grad_scaler

    def record(device, enabled):
        made.append(enabled)
        return real(device, enabled)

    monkeypatch.setattr(precision, "grad_scaler", record)
    return made


@pytest.mark.parametrize("dtype, scaled", [(torch.bfloat16, False), (torch.float16, True),
                                           (None, False)])
@pytest.mark.slow  # over 0.4 s: make test, not check-fast
def test_fit_trains_under_the_chosen_dtype(monkeypatch, dtype, scaled):
    """fit runs the loss under autocast(dtype) and scales the loss exactly when fp16.

    The CPU stands in for the GPU: autocast and the gradient scaler both run there.
    """
    monkeypatch.setattr(precision, "autocast_dtype", lambda device, model=None: dtype)
    made = _recording_scaler(monkeypatch)
    seen = []

    def loss_fn(model, batch):
        enabled = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        return mse(model, batch)

    result = fit(nn.Linear(4, 1), loss_fn, regression_data(), epochs=20, batch_size=64,
                 lr=3e-2, clip=10.0, quiet=True)
    assert set(seen) == {dtype}
    assert made == [scaled]
    assert result.history["loss"][-1] < 0.05 * result.history["loss"][0]


def test_amp_false_means_full_precision(monkeypatch):
    monkeypatch.setattr(precision, "autocast_dtype", lambda device, model=None: torch.float16)
    made = _recording_scaler(monkeypatch)
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return mse(model, batch)

    fit(nn.Linear(4, 1), loss_fn, regression_data(), steps=3, amp=False, quiet=True)
    assert seen == [False] * 3 and made == [False]


def test_failing_compile_falls_back_to_eager(monkeypatch):
    class Broken(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise RuntimeError("backend compiler failed (simulated)")

    monkeypatch.setattr(precision, "try_compile", lambda model, mode=None: Broken(model))
    model = nn.Linear(4, 1)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        result = fit(model, mse, regression_data(), steps=20, batch_size=64, lr=3e-2,
                     compile=True, quiet=True)
    assert result.steps == 20
    assert result.history["loss"][-1] < result.history["loss"][0]


@pytest.mark.parametrize("compile_", [True, False])
def test_compiled_training_sees_one_batch_shape(monkeypatch, compile_):
    """Compiled, the partial last batch is skipped: a new shape would recompile."""
    seen = []

    def loss(model, batch):
        seen.append(len(batch[0]))
        return mse(model, batch)

    monkeypatch.setattr(precision, "try_compile", lambda model, mode=None: model)
    fit(nn.Linear(4, 1), loss, regression_data(100), steps=10, batch_size=32,
        compile=compile_, quiet=True)
    # 100 = 3 x 32 + 4: eager training keeps the batch of 4, compiled training skips it
    assert seen == ([32] * 10 if compile_ else [32, 32, 32, 4] * 2 + [32, 32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fit_loop_does_not_synchronize_with_the_gpu(monkeypatch, dtype):
    """Only the batched loss checks (every check_every steps) may wait for the GPU."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    monkeypatch.setattr(precision, "autocast_dtype", lambda device, model=None: dtype)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()
    data = regression_data(2048, "cuda")
    fit(model, mse, data, steps=2, quiet=True)  # warm-up: lazy CUDA initialization
    steps, every = 60, 25
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(model, mse, data, steps=steps, batch_size=64, check_every=every, clip=1.0,
                ema=0.99, quiet=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # torch also warns once that the debug mode is a prototype: that notice is no sync
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    flushes = steps // every + 1
    # + 1: one sync while fit sets up (seen once per fit call on an H100, torch 2.11);
    # a sync inside the step would add 60
    assert len(syncs) <= flushes + 1, [f"{w.filename}:{w.lineno}" for w in syncs[:8]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_this_gpu_gets_its_native_dtype():
    major, _ = torch.cuda.get_device_capability()
    assert autocast_dtype("cuda") == (torch.bfloat16 if major >= 8 else torch.float16)


def test_compile_mode_uses_cuda_graphs_only_on_a_gpu(monkeypatch):
    assert precision.compile_mode("cuda") == "reduce-overhead"
    assert precision.compile_mode(torch.device("cuda", 0)) == "reduce-overhead"
    assert precision.compile_mode("cpu") is None
    modes = []
    monkeypatch.setattr(precision, "try_compile",
                        lambda model, mode=None: modes.append(mode) or model)
    fit(nn.Linear(4, 1), mse, regression_data(64), steps=2, batch_size=32, compile=True,
        quiet=True)
    assert modes == [None]  # this CPU run asked for the default mode


class _Recording(nn.Module):
    """A stand-in network (x, t) -> x W^T per pixel that records what each call sees."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[0.9, 0.1], [-0.2, 0.7]]))
        self.seen = []

    def forward(self, x, t):
        self.seen.append((torch.is_autocast_enabled("cpu"), x.dtype))
        return (x.reshape(len(x), 2, -1).transpose(1, 2) @ self.w.T).transpose(1, 2).reshape(
            x.shape)


@pytest.mark.slow  # over a second: make test, not check-fast
def test_likelihood_path_runs_the_network_in_float32_with_autocast_off(monkeypatch):
    """With the GPU's bf16 chosen for the device (the CPU stands in), the likelihood path
    (`network_function(..., precision="float32")` through `sde.ode_log_likelihood` and a chain
    clock) calls the network in float32 with autocast off, even inside a caller's autocast;
    the sampling path (`eps_function`) does use the mixed precision there."""
    from companion import recipes, sde
    from companion.diffusion import linear_betas

    monkeypatch.setattr(precision, "autocast_dtype", lambda device, model=None: torch.bfloat16)
    clock = sde.ChainClock(torch.cumprod(1 - linear_betas(50, 2e-3, 0.4).double(), 0))
    fake = _Recording()
    net = recipes.network_function(fake, "cpu", precision="float32")
    field = clock.sde.ode_drift(clock.sde.score_from_eps(clock.eps(net)))
    x = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = sde.ode_log_likelihood(field, x, t0=clock.time(1), probes=1, rtol=1e-4,
                                     atol=1e-4, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(res.log_p).all() and len(fake.seen) == res.nfe > 5
    assert set(fake.seen) == {(False, torch.float32)}
    sampled = _Recording()
    out = recipes.eps_function(sampled, "cpu")(x, torch.full((3,), 5))
    assert sampled.seen == [(True, torch.float32)] and out.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be"):
        recipes.network_function(fake, "cpu", precision="bf16")
