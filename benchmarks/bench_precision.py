"""Precision on the CPU: float32 against bf16 autocast for the book's networks, and what the
rule in `companion.run.precision.autocast_dtype` picks.

    python -m benchmarks.bench_precision            # this CPU; --compile adds torch.compile

Reported, each measured here, with nothing else running:
  - the dense matmul rate (2048^3) in float32 and in bf16: the yardsticks;
  - for chapter 6's MLP VAE (batch 128) and chapter 9's cpu U-Net (batch 64; the gpu
    preset too with --gpu-sizes), one training step (forward, backward, Adam) in float32
    and under bf16 autocast, eagerly and in channels-last (and compiled, with --compile):
    the first two steps' seconds (a cold compile included), the median ms of a step after
    them, the step's FLOPs, its achieved rate and its share of the matmul rate of
    the dtype it runs in;
  - which precision the rule picks for the network, and whether that was the faster one.
Measurements, not tests: nothing here asserts a time. On a CPU without native bf16 units
the bf16 rows are emulated (oneDNN converts in software) and show why the rule keeps float32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from companion.diffusion import Diffusion, linear_betas
from companion.models.unet import UNet, n_params, preset
from companion.models.vae import VAE, ELBOLoss
from companion.run import precision

from .common import Context, table, training_flops_per_image

MATMUL_N = 2048


def matmul_rate(dtype: torch.dtype, n: int = MATMUL_N, seconds: float = 2.0) -> float:
    """TFLOP/s of n x n @ n x n products in `dtype` on the CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _networks(gpu_sizes: bool):
    """(name, network, loss(model, x), batch of inputs) for each network benchmarked."""
    torch.manual_seed(0)
    diffusion = Diffusion(linear_betas(1000))
    vae_loss = ELBOLoss(binarize=False)
    grey = torch.rand(128, 1, 28, 28)
    digits = torch.rand(64, 1, 28, 28) * 2 - 1
    nets = [("ch6 MLP VAE, batch 128", VAE(20, hidden=(400,)), vae_loss, grey),
            ("ch9 U-Net (cpu preset), batch 64", UNet(preset("cpu")),
             diffusion.simple_loss, digits)]
    if gpu_sizes:
        nets.append(("ch9 U-Net (gpu preset), batch 64", UNet(preset("gpu")),
                     diffusion.simple_loss, digits))
    return nets


def _step_ms(model, loss_fn, x, dtype, steps: int, warm: int = 2) -> tuple[float, float]:
    """(seconds of the first `warm` steps, compilation included; the median milliseconds of
    the `steps` after them): a step is autocast to dtype (or float32), backward, Adam. The
    median, since a shared machine's slow moments would move a mean."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with precision.autocast(torch.device("cpu"), dtype):
            loss = loss_fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warm):
        step()
    warm_s, times = time.perf_counter() - t0, []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return warm_s, statistics.median(times) * 1e3


def _loss_value(out):
    return out[0] if isinstance(out, tuple) else out


def run(ctx: Context | None = None, *, gpu_sizes: bool = False, compile_: bool = False,
        steps: int = 10) -> dict:
    """The measurements as a dict (see the module's docstring)."""
    if ctx is not None and ctx.device.type != "cpu":
        return {"skipped": "the CPU's precision benchmark runs on a CPU"}
    if ctx is not None:
        gpu_sizes = gpu_sizes or ctx.gpu_sizes
    rates = {"float32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    res = {"cpu_bf16_native": precision.cpu_bf16_native(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads(), "matmul_n": MATMUL_N,
           "matmul_tflops_float32": rates["float32"], "matmul_tflops_bf16": rates["bf16"],
           "networks": []}
    for name, model, loss, x in _networks(gpu_sizes):
        def loss_fn(m, xb, loss=loss):
            return _loss_value(loss(m, xb))

        def backward(model=model, x=x, loss_fn=loss_fn):
            loss_fn(model, x).backward()

        flops = training_flops_per_image(backward, len(x))
        model.zero_grad(set_to_none=True)
        conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        layouts = ["eager", "channels-last"] if conv else ["eager"]
        if compile_ and conv:  # the VAE's loss calls its encoder and decoder, not forward
            layouts.append("compiled")
        rows = []
        for layout in layouts:
            for dname, dtype in (("float32", None), ("bf16", torch.bfloat16)):
                m, xb = model, x
                if layout == "channels-last":
                    m = model.to(memory_format=torch.channels_last)
                    xb = x.contiguous(memory_format=torch.channels_last)
                if layout == "compiled":  # a cold compile: an empty inductor cache
                    torch._dynamo.reset()
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
                    m = torch.compile(model)
                warm_s, ms = _step_ms(m, loss_fn, xb, dtype, steps)
                model.to(memory_format=torch.contiguous_format)
                tflops = flops * len(x) / (ms / 1e3) / 1e12
                rows.append({"layout": layout, "precision": dname, "warmup_s": warm_s,
                             "ms_per_step": ms,
                             "tflops": tflops, "share_of_matmul": tflops / rates[dname]})
        eager = {r["precision"]: r["ms_per_step"] for r in rows if r["layout"] == "eager"}
        with_units = precision.cpu_bf16_pays(model)  # the pick on a CPU that has them
        picks = precision.autocast_dtype("cpu", model)
        res["networks"].append({
            "name": name, "params": n_params(model), "flops_per_step": flops * len(x),
            "rows": rows, "bf16_speedup": eager["float32"] / eager["bf16"],
            "rule_on_units": "bf16" if with_units else "float32",
            "rule_here": "bf16" if picks == torch.bfloat16 else "float32",
            "faster_here": "bf16" if eager["bf16"] < eager["float32"] else "float32"})
    return res


def print_tables(res: dict) -> None:
    units = "native bf16 units" if res["cpu_bf16_native"] else "no native bf16 units"
    print(f"CPU: {units}, capability {res['cpu_capability']}, {res['threads']} threads; "
          f"{res['matmul_n']}^3 matmul {res['matmul_tflops_float32']:.3f} TFLOP/s in "
          f"float32, {res['matmul_tflops_bf16']:.2g} in bf16 "
          f"({res['matmul_tflops_bf16'] / res['matmul_tflops_float32']:.2f}x)")
    for net in res["networks"]:
        rows = [[r["layout"], r["precision"], r["warmup_s"], r["ms_per_step"], r["tflops"],
                 r["share_of_matmul"]] for r in net["rows"]]
        print(table(f"{net['name']}: {net['params'] / 1e6:.2f}M parameters, "
                    f"{net['flops_per_step'] / 1e9:.2f} GFLOP a step; rule here: "
                    f"{net['rule_here']}, with bf16 units: {net['rule_on_units']}; "
                    f"faster here: {net['faster_here']} "
                    f"(bf16 {net['bf16_speedup']:.2f}x float32's speed)",
                    ["layout", "precision", "first 2 steps (s)", "ms / step", "TFLOP/s",
                     "share of its matmul rate"], rows))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-sizes", action="store_true", help="the gpu preset's U-Net too")
    ap.add_argument("--compile", action="store_true", help="torch.compile rows too")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    args = ap.parse_args(argv)
    res = run(gpu_sizes=args.gpu_sizes, compile_=args.compile, steps=args.steps)
    print_tables(res)
    return res


if __name__ == "__main__":
    main()
