"""Precision and compile choices for fit: the mixed-precision dtype a device trains in, the
gradient scaler fp16 needs, the default optimizer, and torch.compile with its fallback.

`companion.train.fit` looks these up here at each call (`precision.autocast_dtype(device)`),
so a test that patches one of them here reaches fit.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import runtime


def autocast_dtype(device) -> torch.dtype | None:
    """The mixed-precision dtype for training on `device`, or None for full precision.

    bf16 on CUDA GPUs of compute capability 8.0 and up (Ampere, Hopper: native bf16 tensor
    cores, and bf16 has float32's exponent range, so no loss scaling); fp16 on older CUDA
    GPUs such as Colab's T4 (7.5), where bf16 is emulated and slower than float32, so fp16
    with a gradient scaler is the fast path; None on the CPU (autocast there mostly adds
    casts to these small models). Under BOOK_T4=1 (runtime.t4_emulated) fp16 on
    every CUDA GPU: the T4's path, run on a bigger one.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if runtime.t4_emulated():
        return torch.float16
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


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
