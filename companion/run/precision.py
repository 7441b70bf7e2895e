"""Precision and compile choices for fit: the mixed-precision dtype a device trains in, the
gradient scaler fp16 needs, the default optimizer, and torch.compile with its fallback.

`companion.train.fit` looks these up here at each call (`precision.autocast_dtype(device,
model)`), so a test that patches one of them here reaches fit. The one precision rule, GPUs
and CPUs alike, is `autocast_dtype`.
"""

from __future__ import annotations

import os
import platform
import warnings

import torch
from torch import nn

from .profiles import t4_emulated

# A CPU trains under bf16 autocast where its matrix units take bf16 natively and the network
# is big enough to gain. Measured on an Intel Xeon with AMX-BF16 (2 threads, torch 2.14,
# issue 82): a 2048^2 matmul 0.37 TFLOP/s in float32, 2.35 in bf16; two 64-channel 3x3
# convolutions on 128 x 28 x 28, forward and backward, 153 -> 57 ms; chapter 9's cpu U-Net
# step 212 -> 139 ms. Without those units bf16 is emulated and slower (benchmarks/README.md,
# "Precision on the CPU"): float32. Below CPU_BF16_MIN_PARAMS an MLP's matrices are too
# small for the casts to pay; a convolution's work grows with the image, not its weights.
CPU_BF16_VAR = "BOOK_CPU_BF16"
CPU_BF16_MIN_PARAMS = 1_000_000


def cpu_bf16_native() -> bool:
    """True where this CPU's matrix units take bf16 natively, as torch reports them.

    AMX-BF16 or AVX512-BF16 on x86 (torch.cpu.get_capabilities), oneDNN's bf16 on Arm
    (Graviton 3, Apple M2 and later); never under ATEN_CPU_CAPABILITY=default (torch's
    baseline kernels: `make test`'s capability pass, whose outputs must hold on any CPU).
    BOOK_CPU_BF16=1 or 0 overrides the detection (1: emulate a bf16 CPU's numerics here;
    0: float32 everywhere).
    """
    from .profiles import env_flag

    if os.environ.get(CPU_BF16_VAR, "").strip():
        return env_flag(CPU_BF16_VAR)
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        return False
    if platform.machine().lower() in ("arm64", "aarch64"):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def cpu_bf16_pays(model: nn.Module | None) -> bool:
    """True for a network that gains from bf16 on a CPU with the units: one with a
    convolution, or with at least CPU_BF16_MIN_PARAMS parameters; False for None."""
    if not isinstance(model, nn.Module):  # None, or a plain function of the inputs
        return False
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return True
    return sum(p.numel() for p in model.parameters()) >= CPU_BF16_MIN_PARAMS


def autocast_dtype(device, model: nn.Module | None = None) -> torch.dtype | None:
    """The mixed-precision dtype for training (or sampling) `model` on `device`, or None for
    full precision.

    bf16 on CUDA GPUs of compute capability 8.0 and up (Ampere, Hopper: native bf16 tensor
    cores, and bf16 has float32's exponent range, so no loss scaling); fp16 on older CUDA
    GPUs such as Colab's T4 (7.5), where bf16 is emulated and slower than float32, so fp16
    with a gradient scaler is the fast path. Under BOOK_T4=1 (profiles.t4_emulated) fp16 on
    every CUDA GPU: the T4's path, run on a bigger one. On a CPU: bf16 where
    `cpu_bf16_native()` and `cpu_bf16_pays(model)`, else None (float32; also when no model
    is named).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_native() and cpu_bf16_pays(model) else None
    if device.type != "cuda":
        return None
    if t4_emulated():
        return torch.float16
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def describe(device) -> str:
    """The precision rule on `device` in one word, for the setup line: 'bf16' (a GPU with
    bf16, or a CPU with native bf16 units: its convolutional and large networks), 'fp16'
    (older GPUs, BOOK_T4=1) or 'float32'."""
    device = torch.device(device)
    if device.type == "cpu":
        return "bf16" if cpu_bf16_native() else "float32"
    dtype = autocast_dtype(device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "float32")


def default_optimizer(params, lr: float, device) -> torch.optim.Optimizer:
    """Adam; on CUDA the fused kernel, which also takes fp16 loss scaling without a sync."""
    fused = torch.device(device).type == "cuda"
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def grad_scaler(device: torch.device, enabled: bool):
    """A gradient scaler for fp16 training (a pass-through when not enabled)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def compile_mode(device) -> str | None:
    """The torch.compile mode fit uses: CUDA graphs on a GPU, the default elsewhere.

    Measured on an H100 (benchmarks/README.md): the compiled gpu U-Net's training step at
    batch 128 ran 12 ms of kernels in about 43 ms, the rest being the host launching some
    1,300 kernels one by one; replaying them as a CUDA graph ("reduce-overhead") removes
    that cost. On a CPU there is nothing to replay.
    """
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def try_compile(model: nn.Module, mode: str | None = None) -> nn.Module:
    """torch.compile(model, mode=mode), or the model itself where compile is unavailable.

    Compilation itself happens at the first call; fit falls back to eager mode (with a
    warning) when that call fails, e.g. without Triton or a C++ compiler.
    """
    try:
        return torch.compile(model, mode=mode)
    except Exception as err:  # e.g. a Python version torch.compile does not support yet
        warnings.warn(f"torch.compile is unavailable ({err}); training without it",
                      stacklevel=3)
        return model


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The context a forward pass runs in: autocast to `dtype`, or nothing when None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
