"""Speed and time-to-quality of the book's models against the libraries people use instead.

    python -m benchmarks.run                      # make bench: small sizes, a few minutes
    python -m benchmarks.run --gpu-sizes --out results/h100.json    # the gpu profile's sizes
    python -m benchmarks.run --only ddpm --step     # the training step alone (a GPU lease)

Benchmarks (each skips with a line when its model is not in companion yet, and records an
error instead of stopping the others):
  vae    the chapter-6 MLP VAE through companion.fit against the common PyTorch recipe
  hvae   the chapter-7 hierarchical VAE: throughput and seconds to a stated test ELBO
  ddpm   the chapter-9 U-Net and loop against diffusers' UNet2DModel + DDPMScheduler
         trained as its example script does; FLOPs per image, share of the matmul rate
  precision  (CPU) float32 against bf16 autocast for the book's networks, the matmul rates
         of both, and what companion.run.precision's rule picks
Printed as tables; written as JSON with the device, torch version and date. Measurements,
not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
import traceback
from pathlib import Path

import torch

from companion import data
from companion.run import precision
from companion.run.runtime import get_device, seed_everything

from . import bench_ddpm, bench_hvae, bench_precision, bench_vae
from .common import Context, device_name, device_slug, matmul_tflops
from .report import print_tables

RESULTS = Path(__file__).resolve().parent / "results"
BENCHES = {"vae": bench_vae, "hvae": bench_hvae, "ddpm": bench_ddpm,
           "precision": bench_precision}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file or folder (default: benchmarks/results/<device>.json)")
    ap.add_argument("--gpu-sizes", action="store_true", default=None,
                    help="the gpu profile's sizes (default: on when CUDA is present)")
    ap.add_argument("--small", dest="gpu_sizes", action="store_false",
                    help="the small sizes even on a GPU")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds a benchmark may train for time-to-quality (default by size)")
    ap.add_argument("--step", action="store_true",
                    help="the training step alone: no sampling chains (ddpm: ours at "
                         "batch 128 and 512, diffusers at 128; a GPU lease's first minutes)")
    args = ap.parse_args(argv)

    seed_everything(0)
    device = get_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    gpu_sizes = device.type == "cuda" if args.gpu_sizes is None else args.gpu_sizes
    mnist = data.load("mnist", device=device, verbose=True)
    ctx = Context(device, gpu_sizes, mnist, args.budget or (90.0 if gpu_sizes else 60.0),
                  sampling=not args.step)
    results = {
        "device": device_name(device), "device_type": device.type,
        "capability": list(torch.cuda.get_device_capability(device))
        if device.type == "cuda" else None,
        "autocast": precision.describe(device),
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sizes": "gpu" if gpu_sizes else "small", "threads": torch.get_num_threads(),
        "data": f"{mnist.source}: {len(mnist.x_train):,} train / {len(mnist.x_test):,} test",
    }
    print(f"{results['device']}, torch {results['torch']}, autocast {results['autocast']}, "
          f"{results['sizes']} sizes, {results['data']}")
    results |= matmul_tflops(device)
    ctx.matmul_tflops = results["matmul_tflops"]
    print(f"measured {results['matmul_dtype']} matmul: {results['matmul_tflops']:.1f} TFLOP/s")
    out = args.out or RESULTS / f"{device_slug(device)}.json"
    if out.suffix != ".json":
        out = out / f"{device_slug(device)}.json"
    start = time.perf_counter()
    for name in args.only:
        t0 = time.perf_counter()
        ctx.partial = (lambda r, name=name: write(out, results | {name: r | {"partial": True}}))
        try:
            results[name] = BENCHES[name].run(ctx)
        except ModuleNotFoundError as err:
            results[name] = {"skipped": f"needs {err.name}, which is not there yet"}
        except Exception as err:  # one broken benchmark must not lose the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        results[name]["wall_s"] = time.perf_counter() - t0
        if "skipped" in results[name]:
            print(f"\n{name}: skipped ({results[name]['skipped']})")
        print(f"[{name}: {results[name]['wall_s']:.0f} s]", flush=True)
        write(out, results)  # what finished is kept if a later benchmark is cut off
    results["wall_s"] = time.perf_counter() - start
    print_tables(results)
    write(out, results)
    print(f"\nwrote {out}")
    return results


def write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
