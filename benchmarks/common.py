"""What every benchmark needs: the device, timing, FLOP counting, the matmul yardstick.

Timing on CUDA synchronizes before reading the clock; everything else is left to run
asynchronously, as in real training.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from companion import data as cdata


@dataclass
class Context:
    """The machine and the sizes one run of the benchmarks uses.

    gpu_sizes: the gpu profile's models and step counts (for a GPU); else the small ones,
    which finish in a few minutes on two CPU cores.
    """

    device: torch.device
    gpu_sizes: bool
    mnist: cdata.ImageData
    budget_s: float
    matmul_tflops: float = float("nan")
    sampling: bool = True  # False (--step): the training step alone, no sampling chains
    # what a benchmark measured so far, written at once (a run cut off keeps it)
    partial: Callable[[dict], None] = lambda result: None
    notes: list[str] = field(default_factory=list)

    def pick(self, small, large):
        return large if self.gpu_sizes else small


def have(module: str) -> bool:
    """Whether `module` can be imported (a benchmark skips, with a line, when it cannot)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work."""
    sync(device)
    return time.perf_counter()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """A file name for the results: 'cpu', 'nvidia-h100-80gb-hbm3', ..."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def matmul_tflops(device: torch.device, seconds: float = 2.0) -> dict:
    """The measured dense matrix-multiply rate: the yardstick for achieved FLOP rates.

    On CUDA: bf16 8192^3 products (the dtype the GPU trains in; fp16 below compute
    capability 8.0, where bf16 is emulated). On the CPU: 2048^3 in the dtype it trains the
    U-Net in (`companion.run.precision`): bf16 with native bf16 units, else float32.
    """
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        dtype = torch.bfloat16 if major >= 8 else torch.float16
        n = 8192
    else:
        from companion.run.precision import cpu_bf16_native

        dtype, n = (torch.bfloat16 if cpu_bf16_native() else torch.float32), 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, clock(device)
    while True:
        for _ in range(10):
            a @ b
        reps += 10
        elapsed = clock(device) - t0
        if elapsed > seconds:
            break
    return {"matmul_dtype": str(dtype).replace("torch.", ""), "matmul_n": n,
            "matmul_tflops": 2 * n**3 * reps / elapsed / 1e12}


def training_flops_per_image(step, batch: int) -> float:
    """FLOPs (multiply-add = 2) of one training step's forward and backward, per image.

    step: a function running the loss and its backward on `batch` images. Counted by
    torch.utils.flop_counter (matrix multiplies, convolutions, attention; the elementwise
    work of norms and activations is not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def count_syncs(fn) -> int | None:
    """How many times `fn` made the CPU wait for the GPU (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # not the one-time notice that the debug mode is a prototype
    return sum("called a synchronizing" in str(w.message) for w in caught)


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A plain-text table (also valid Markdown)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "" if v is None else str(v)

    cells = [header] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [f"\n{title}", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in cells[1:]])
