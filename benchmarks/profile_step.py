"""Where the DDPM training step spends its time: a torch.profiler trace of `fit`'s steps.

    python -m benchmarks.profile_step                  # the cpu U-Net, batch 128
    python -m benchmarks.profile_step --gpu-sizes --trace /tmp/step.json   # on a GPU

The H100 run of `make bench` found the gpu U-Net's step taking about 43 ms at batch 128
and 44 ms at batch 512 (benchmarks/README.md): four times the arithmetic in the same time,
so at batch 128 something other than the GPU's arithmetic sets the pace. This prints, per
training step, the wall time, the host (CPU) time and the device time, and the operators
that take the most of each. Read it this way:
  - host time per step close to the wall time, device time well below it: the step is
    launch-bound (Python, dispatch, kernel launches), and CUDA graphs or a compiled
    optimizer step are the remedy;
  - autograd `ConvolutionBackward0` nodes although the model is compiled: part of the
    model runs eagerly (a graph break, or a recompilation limit reached). A compiled
    model's backward is one `CompiledFunctionBackward` node; its convolutions still show
    as `aten::convolution` calls, so those prove nothing;
  - device time close to the wall time: the kernels themselves are slow, and the top
    device operators say which.
A measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from companion.data import load
from companion.diffusion import Diffusion, linear_betas
from companion.models.unet import UNet, preset
from companion.run import precision
from companion.run.precision import default_optimizer
from companion.run.runtime import get_device, seed_everything
from companion.train import fit


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-sizes", action="store_true", help="the gpu U-Net (~15M parameters)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (after warm-up)")
    ap.add_argument("--no-compile", action="store_true", help="eager even on CUDA")
    ap.add_argument("--trace", default=None, help="also write a Chrome trace to this file")
    ap.add_argument("--mode", default=None,
                    help="torch.compile mode instead of fit's (default, reduce-overhead, ...)")
    ap.add_argument("--channels-last", action="store_true",
                    help="weights and images in channels-last (NHWC) memory format")
    args = ap.parse_args(argv)

    seed_everything(0)
    device = get_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    x = load("mnist", device=device).x_train * 2 - 1
    diffusion = Diffusion(linear_betas(1000), device=device)
    model = UNet(preset("gpu" if args.gpu_sizes else "cpu")).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if args.mode:  # fit compiles through precision.try_compile: give it the mode asked for
        precision.compile_mode = lambda device: None if args.mode == "default" else args.mode
    kw = dict(optimizer=default_optimizer(model.parameters(), 2e-4, device), clip=1.0,
              ema=0.9999, quiet=True, compile=cuda and not args.no_compile,
              batch_size=args.batch, check_every=10**6)

    # one fit call for warm-up and measurement, as in real training: compilation happens
    # in the first steps, and a second fit call would wrap the model again
    warm = 30 if cuda else 3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, schedule=torch.profiler.schedule(
        wait=warm, warmup=2, active=args.steps, repeat=1))
    marks: list[float] = []

    def step_loss(m, xb):
        # fit calls the loss eagerly once per step (only the model is compiled): the place
        # to advance the profiler's schedule and read the clock
        prof.step()
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return diffusion.simple_loss(m, xb)

    with prof:
        fit(model, step_loss, x, steps=warm + 2 + args.steps + 1, **kw)
    active = marks[warm + 2:warm + 2 + args.steps + 1]
    wall_ms = 1e3 * (active[-1] - active[0]) / args.steps
    events = prof.key_averages()
    host_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    # the ProfilerStep# rows carry the whole step's span as "self" device time: leave them
    # out, or every kernel is counted twice
    device_ms = (sum(e.self_device_time_total for e in events
                     if not e.key.startswith("ProfilerStep")) / 1e3 / args.steps
                 if cuda else float("nan"))
    variant = ", ".join(v for v in (args.mode, "channels-last" * args.channels_last) if v)
    print(f"[{variant or 'default'}] "
          f"{device}, batch {args.batch}, {args.steps} steps: wall {wall_ms:.1f} ms/step, "
          f"host (self CPU) {host_ms:.1f} ms/step, device {device_ms:.1f} ms/step")
    print("(the wall time here synchronizes once per step; the host time includes the "
          "profiler's own overhead)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))
    if cuda:
        print(events.table(sort_by="self_device_time_total", row_limit=15,
                           max_name_column_width=50))

    def nodes(name):  # autograd nodes run per step (each is also logged once by name)
        return sum(e.count for e in events if e.key == name) / args.steps

    eager, compiled = nodes("ConvolutionBackward0"), nodes("CompiledFunctionBackward")
    print(f"per step: {eager:.0f} eager convolution backward nodes, {compiled:.0f} compiled "
          "backward graphs")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace}")
    return dict(wall_ms=wall_ms, host_ms=host_ms, device_ms=device_ms,
                eager_conv_backward=eager, compiled_backward=compiled)


if __name__ == "__main__":
    main()
