"""Seconds per training step of score matching's objectives against the dimension D.

    python -m benchmarks.score_cost                 # D = 2, 64, 784, batch 64, this CPU
    python -m benchmarks.score_cost --dims 2 64 --batch 128 --width 256

One step: the loss of a small MLP score model (D -> width -> width -> D, SiLU), its
backward pass and an Adam update, on standard normal data. The implicit loss's exact trace
costs D backward passes (each kept in the graph), the sliced loss one per projection, the
denoising loss none: why only the denoising form scales to 784 pixels. A measurement, not
a test: nothing asserts a time. Run it under the CPU lock on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from companion import score as S

OBJECTIVES = {
    "implicit": lambda net, x: S.implicit_score_matching(net, x),
    "sliced": lambda net, x: S.sliced_score_matching(net, x, 1),
    "denoising": lambda net, x: S.denoising_score_matching(net, x, 0.5),
}


def mlp(D: int, width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(D, width), torch.nn.SiLU(),
                               torch.nn.Linear(width, width), torch.nn.SiLU(),
                               torch.nn.Linear(width, D))


def seconds_per_step(objective, D: int, batch: int, width: int, budget: float) -> float:
    """The median time of one step, over as many steps as `budget` seconds allow (3..50)."""
    net = mlp(D, width)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(batch, D)
    times: list[float] = []
    for k in range(51):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        objective(net, x).backward()
        opt.step()
        if k:  # the first step warms up the allocator
            times.append(time.perf_counter() - start)
        if len(times) >= 3 and sum(times) > budget:
            break
    return statistics.median(times)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 784])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per cell")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"MLP width {args.width}; seconds per step (median)")
    print(f"{'D':>5} " + " ".join(f"{n:>10}" for n in OBJECTIVES) + "   implicit / denoising")
    rows = []
    for D in args.dims:
        row = {"D": D} | {n: seconds_per_step(f, D, args.batch, args.width, args.budget)
                          for n, f in OBJECTIVES.items()}
        rows.append(row)
        print(f"{D:>5} " + " ".join(f"{row[n]:>10.2e}" for n in OBJECTIVES)
              + f"   {row['implicit'] / row['denoising']:>8.0f}x")
    return rows


if __name__ == "__main__":
    main()
