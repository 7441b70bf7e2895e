"""Tables from a results dict (printed by run.py; `python -m benchmarks.report FILE.json`
prints a stored one, e.g. to paste into benchmarks/README.md)."""

from __future__ import annotations

import json
import sys

from .common import table


def _get(d: dict, key: str):
    return d.get(key) if isinstance(d, dict) else None


def vae_rows(r: dict) -> list[list]:
    rows = [["common recipe (DataLoader, fp32, .item())", r["peer_images_per_s"],
             r["peer_seconds_10_epochs"], 10, r["peer_test_loss_10_epochs"], 1.0],
            ["ours (companion.fit, data on device)", r["ours_images_per_s"],
             r["ours_seconds_to_target"], r["ours_epochs_to_target"],
             min(r["ours_test_loss_by_epoch"]), r["speedup_images_per_s"]]]
    return rows


def ddpm_rows(r: dict) -> list[list]:
    share = "ours_share_of_matmul" in r
    rows = [["diffusers UNet2DModel + DDPMScheduler", r["peer_params"] / 1e6,
             r["peer_flops_per_image_train"] / 1e9, r["peer_images_per_s"], r["peer_tflops"],
             r["peer_tflops"] / r["ours_tflops"] * r["ours_share_of_matmul"] if share else None,
             1.0],
            ["ours (companion U-Net + fit)", r["ours_params"] / 1e6,
             r["flops_per_image_train"] / 1e9, r["ours_images_per_s"], r["ours_tflops"],
             r.get("ours_share_of_matmul"), r["speedup_images_per_s"]]]
    return rows


def print_tables(results: dict) -> None:
    print(table(f"Device: {results['device']} (torch {results['torch']}, "
                f"{results['date']}); {results['matmul_dtype']} matmul "
                f"{results['matmul_tflops']:.1f} TFLOP/s",
                ["benchmark", "wall s", "status"],
                [[k, _get(results.get(k), "wall_s"),
                  _get(results.get(k), "skipped") or _get(results.get(k), "error") or "ok"]
                 for k in ("vae", "hvae", "ddpm", "precision") if k in results]))
    r = results.get("vae", {})
    if "peer_images_per_s" in r:
        print(table(f"MLP VAE 784-400-20, batch 128, {r['n_train']:,} images: the common "
                    "recipe's 10 epochs against ours to the same test loss",
                    ["loop", "images/s", "s to target", "epochs", "test loss", "x images/s"],
                    vae_rows(r)))
        if r.get("time_to_quality_ratio"):
            print(f"time to the common recipe's 10-epoch test loss: ours "
                  f"{r['ours_seconds_to_target']:.2f} s, "
                  f"{r['time_to_quality_ratio']:.1f}x sooner")
    r = results.get("hvae", {})
    if "ours_images_per_s" in r:
        print(table("Hierarchical VAE", list(r.get("table_header", [])),
                    r.get("table_rows", [])))
    r = results.get("ddpm", {})
    if "peer_images_per_s" in r:
        print(table(f"DDPM training step, {r['size']} U-Net, batch {r['batch']}, "
                    f"{r['timed_steps']} timed steps",
                    ["model and loop", "M params", "GFLOP/image (fwd+bwd)", "images/s",
                     "TFLOP/s", "share of matmul", "x images/s"], ddpm_rows(r)))
    elif "ours_images_per_s" in r:  # no peer (diffusers missing)
        print(f"DDPM training step, {r['size']} U-Net, batch {r['batch']}: ours "
              f"{r['ours_images_per_s']:,.0f} images/s, {r['ours_share_of_matmul']:.1%} of "
              f"the matmul rate ({r.get('peer_skipped', 'no peer')})")
    if "ours_images_per_s" in r:
        big = [k for k in r if k.startswith("ours_images_per_s_b")]
        for k in big:
            b = k.removeprefix("ours_images_per_s_b")
            print(f"ours at batch {b}: {r[k]:,.0f} images/s, "
                  f"{r[f'ours_share_of_matmul_b{b}']:.1%} of the matmul rate")
    if "ours_sample_images_per_s" in r:
        print(f"sampling, {r['sample_steps']}-step ancestral chain, batch "
              f"{r['sample_batch']}: ours {r['ours_sample_images_per_s']:.1f} images/s, "
              f"diffusers DDPMPipeline {r['peer_sample_images_per_s']:.1f} "
              f"({r['sample_speedup']:.2f}x)")
    r = results.get("precision", {})
    if "networks" in r:
        from .bench_precision import print_tables as precision_tables

        precision_tables(r)


if __name__ == "__main__":
    print_tables(json.loads(open(sys.argv[1]).read()))
