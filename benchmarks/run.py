"""Speed measurements for the book's building blocks (run: `make bench`).

Measures, on whatever device is present (CUDA if available):
  data       seconds to load MNIST (any source) and Fashion-MNIST
  vae_epoch  seconds per epoch of the chapter-6 MLP VAE on 4,500 digits, batch 128,
             through companion.fit and through a bare hand-written loop (fit's overhead)
  iw_k1000   seconds for the importance-weighted log p(x) with k = 1000 on 500 test digits
Results are printed as a table and written to benchmarks/results/<device>.json.
These are measurements, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from companion import data
from companion.metrics import vae_iw_log_likelihood
from companion.models.vae import VAE, ELBOLoss
from companion.runtime import get_device, seed_everything
from companion.train import fit

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls, synchronizing CUDA around each."""
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def bench_data() -> dict:
    return {
        "mnist_load_s": timed(lambda: data.load("mnist", verbose=False), repeat=2),
        "fashion_load_s": timed(lambda: data.load("fashion", verbose=False), repeat=2),
    }


def bench_vae_epoch(device, x) -> dict:
    def with_fit():
        model = VAE(20).to(device)
        fit(model, ELBOLoss(), x, epochs=1, batch_size=128, quiet=True)

    def bare():
        model = VAE(20).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = ELBOLoss()
        for batch in data.batches(x, batch_size=128):
            loss, _ = loss_fn(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

    fit_s, bare_s = timed(with_fit), timed(bare)
    return {"vae_epoch_fit_s": fit_s, "vae_epoch_bare_s": bare_s,
            "fit_overhead_pct": 100 * (fit_s - bare_s) / bare_s}


def bench_iw(device, x_test) -> dict:
    model = VAE(20).to(device).eval()
    with torch.no_grad():
        s = timed(lambda: vae_iw_log_likelihood(model, x_test, k=1000), repeat=1)
    return {"iw_k1000_500_images_s": s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seed_everything(0)
    device = get_device()
    mnist = data.load("mnist", n_train=4500, n_test=500, verbose=True, device=device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "data_source": mnist.source}
    results |= bench_data()
    results |= bench_vae_epoch(device, mnist.x_train[:4500])
    results |= bench_iw(device, mnist.x_test[:500])
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    out = args.out or RESULTS / f"{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
