"""The chapter-9 DDPM: our U-Net and loop against diffusers, trained as its example does.

Ours: `companion.models.unet.UNet` (the gpu preset, ~15M parameters, or the cpu preset,
0.67M), Algorithm 1's loss from `companion.diffusion`, `companion.fit` with the data on the
device, mixed precision by device, EMA, clipping, torch.compile on CUDA.
Peer: diffusers' `UNet2DModel` of similar size and layout (three resolutions, attention
at the lowest; 28x28 padded to 32x32, since its blocks need sides divisible by 4) and
`DDPMScheduler` (linear betas, T = 1000), trained the way diffusers'
examples/unconditional_image_generation/train_unconditional.py does: a DataLoader, AdamW
(1e-4, betas 0.95/0.999, weight decay 1e-6) with a cosine schedule and warm-up, clipping
at 1, `EMAModel`, the loss read back with .item() every step for the progress bar, and the
same mixed precision as ours (the script's --mixed_precision flag).
"""

from __future__ import annotations

import traceback

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from companion.diffusion import Diffusion, linear_betas
from companion.models.unet import UNet, n_params, preset
from companion.run.precision import autocast_dtype
from companion.train import fit

from .common import Context, clock, count_syncs, have, training_flops_per_image

BATCH = 128


def peer_model(gpu_sizes: bool):
    """diffusers' UNet2DModel with our U-Net's layout and about its parameter count."""
    from diffusers import UNet2DModel

    channels, layers, groups = ((64, 128, 256), 2, 32) if gpu_sizes else ((16, 32, 64), 1, 8)
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=layers,
                       block_out_channels=channels, norm_num_groups=groups,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


class PeerTrainer:
    """The example script's training step, without accelerate's wrappers."""

    def __init__(self, model, device, x_cpu, total_steps: int):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.model, self.device = model, device
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999),
                                     weight_decay=1e-6, eps=1e-8)
        self.lr = get_scheduler("cosine", optimizer=self.opt, num_warmup_steps=500,
                                num_training_steps=total_steps)
        self.ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True,
                            inv_gamma=1.0, power=3 / 4, model_cls=type(model),
                            model_config=model.config)
        self.ema.to(device)
        self.dtype = autocast_dtype(device, model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        padded = F.pad(x_cpu * 2 - 1, (2, 2, 2, 2), value=-1.0)  # [-1, 1], 32x32
        self.loader = DataLoader(TensorDataset(padded), batch_size=BATCH, shuffle=True,
                                 drop_last=True)

    def train(self, steps: int) -> list[float]:
        """`steps` more updates; the loss of each, as the script logs it."""
        model, step, losses = self.model, 0, []
        model.train()
        while step < steps:
            for (clean,) in self.loader:
                clean = clean.to(self.device)
                noise = torch.randn(clean.shape, device=clean.device)
                t = torch.randint(0, self.scheduler.config.num_train_timesteps,
                                  (clean.shape[0],), device=clean.device).long()
                noisy = self.scheduler.add_noise(clean, noise, t)
                with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                    enabled=self.dtype is not None):
                    pred = model(noisy, t).sample
                    loss = F.mse_loss(pred.float(), noise.float())
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.lr.step()
                self.opt.zero_grad()
                self.ema.step(model.parameters())
                losses.append(loss.detach().item())  # logs = {"loss": ...} every step
                step += 1
                if step >= steps:
                    break
        return losses


def run(ctx: Context) -> dict:
    dev = ctx.device
    size = "gpu" if ctx.gpu_sizes else "cpu"
    x = ctx.mnist.x_train * 2 - 1  # on the device, [-1, 1]
    warm, steps = ctx.pick((3, 12), (30, 200))

    # --- ours ----------------------------------------------------------------------------
    torch.manual_seed(0)
    diffusion = Diffusion(linear_betas(1000), device=dev)
    model = UNet(preset(size)).to(dev)

    def loss_fn(m, xb):
        return diffusion.simple_loss(m, xb)

    compile_ = dev.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=dev.type == "cuda" or None)
    kw = dict(optimizer=opt, clip=1.0, ema=0.9999, quiet=True, compile=compile_)

    def timed(batch: int) -> tuple[float, float]:
        """(seconds of the first `warm` steps, compilation included; images/s after)."""
        torch._dynamo.reset()  # a fresh compile per batch size: no dynamic-shape kernels
        t0 = clock(dev)
        fit(model, loss_fn, x, steps=warm, batch_size=batch, **kw)
        warm_s = clock(dev) - t0
        t0 = clock(dev)
        fit(model, loss_fn, x, steps=steps, batch_size=batch, **kw)
        return warm_s, steps * batch / (clock(dev) - t0)

    warm_s, ours_ips = timed(BATCH)

    def one_step():
        loss_fn(model, x[:BATCH]).backward()

    flops = training_flops_per_image(one_step, BATCH)
    model.zero_grad(set_to_none=True)
    syncs = count_syncs(lambda: fit(model, loss_fn, x, steps=20, check_every=10**6,
                                    batch_size=BATCH, **kw))
    res = {"size": size, "batch": BATCH, "timed_steps": steps,
           "ours_params": n_params(model), "flops_per_image_train": flops,
           "ours_compile": compile_, "ours_warmup_s": warm_s,
           "ours_images_per_s": ours_ips, "ours_syncs_per_20_steps": syncs}
    res["ours_tflops"] = flops * res["ours_images_per_s"] / 1e12
    res["ours_share_of_matmul"] = res["ours_tflops"] / ctx.matmul_tflops
    if dev.type == "cuda":
        # a GPU is underfed at batch 128 by a 28x28 model: the rate at a larger batch
        big = 4 * BATCH
        _, res[f"ours_images_per_s_b{big}"] = timed(big)
        res[f"ours_share_of_matmul_b{big}"] = (flops * res[f"ours_images_per_s_b{big}"]
                                               / 1e12 / ctx.matmul_tflops)

    ctx.partial(res)  # ours is kept if the peer's run is cut off
    # --- diffusers, as its example trains ------------------------------------------------
    if not have("diffusers"):  # ours is measured all the same (a lease may lack the wheel)
        return res | {"peer_skipped": "needs diffusers, which is not installed"}
    try:  # one try on a lent GPU: a failing peer must not lose our numbers
        res |= peer_training(ctx, x, warm, steps)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        return res | {"peer_error": f"{type(err).__name__}: {err}"}
    res["speedup_images_per_s"] = res["ours_images_per_s"] / res["peer_images_per_s"]
    if ctx.sampling:
        res |= sampling(ctx, model, res.pop("_peer_model"))
    res.pop("_peer_model", None)
    return res


def peer_training(ctx: Context, x, warm: int, steps: int) -> dict:
    """diffusers' U-Net trained as its example script does: images/s and FLOPs."""
    dev = ctx.device
    torch.manual_seed(0)
    peer = peer_model(ctx.gpu_sizes).to(dev)
    trainer = PeerTrainer(peer, dev, ctx.mnist.x_train.cpu(), warm + steps)
    trainer.train(warm)
    t0 = clock(dev)
    trainer.train(steps)
    peer_s = clock(dev) - t0
    xp = F.pad(x[:BATCH], (2, 2, 2, 2), value=-1.0)
    tp = torch.randint(0, 1000, (BATCH,), device=dev)

    def peer_step():
        F.mse_loss(peer(xp, tp).sample, xp).backward()

    peer_flops = training_flops_per_image(peer_step, BATCH)
    peer.zero_grad(set_to_none=True)
    ips = steps * BATCH / peer_s
    return {"peer_params": n_params(peer), "peer_flops_per_image_train": peer_flops,
            "peer_images_per_s": ips, "peer_tflops": peer_flops * ips / 1e12,
            "_peer_model": peer}


def sampling(ctx: Context, model, peer) -> dict:
    """Images/s of a full T = 1000 ancestral chain: ours (Diffusion.sample, the book's
    samplers) against diffusers' DDPMPipeline on the peer U-Net, same batch, same mixed
    precision, both in eval mode with the weights as trained above."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from companion.recipes import eps_function

    dev, dtype = ctx.device, autocast_dtype(ctx.device, model)
    batch, steps = ctx.pick((8, 20), (256, 1000))
    diffusion = Diffusion(linear_betas(1000), device=dev)
    model.eval()
    eps = eps_function(model, dev)
    diffusion.sample(eps, (batch, 1, 28, 28), n_steps=min(steps, 10), quiet=True)  # warm-up
    t0 = clock(dev)
    diffusion.sample(eps, (batch, 1, 28, 28), n_steps=steps, quiet=True)
    ours = batch / (clock(dev) - t0)

    peer.eval()
    pipe = DDPMPipeline(unet=peer, scheduler=DDPMScheduler(num_train_timesteps=1000,
                                                           beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)

    def run_peer(n):
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pipe(batch_size=batch, num_inference_steps=n, output_type="np")

    run_peer(min(steps, 10))
    t0 = clock(dev)
    run_peer(steps)
    theirs = batch / (clock(dev) - t0)
    return {"sample_batch": batch, "sample_steps": steps, "ours_sample_images_per_s": ours,
            "peer_sample_images_per_s": theirs, "sample_speedup": ours / theirs}
