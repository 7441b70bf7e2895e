"""One small fit loop for every chapter, and the EMA of the weights.

    result = fit(model, loss_fn, data.x_train, epochs=profile.epochs, batch_size=128,
                 checkpoint=checkpoint_path("vae", profile), config=cfg)

`loss_fn(model, batch)` returns a scalar loss, or `(loss, {"name": scalar, ...})` to log
more. A loss whose schedule depends on training progress (KL warm-up) takes a `step` keyword:
`loss_fn(model, batch, step=s)` gets the number of optimizer steps taken before this batch,
counted across resumes, so a resumed run continues its schedule and the loss keeps no state.

The loop is the one every PyTorch training loop is: zero the gradients, forward, backward,
clip, step, update the EMA, log. What runs it is machinery in `companion.run`, called at
named points: `run.session` (checkpoint lock and resume, signals, progress bar, a smoke run's
cut), `run.next_batch`, `run.stepped` (count and log), `run.end_of_step` (save when due, stop
on a signal); the precision and compile choices are `companion.run.precision`'s, the argument
checks `companion.run.fit_checks`'.
"""

from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from .run import precision, work
from .run.checkpoint import checkpoint_path  # noqa: F401  (the chapters' load-or-train path)
from .run.fit_checks import check_fit_args, check_optimizer, takes_step
from .run.session import FitResult, Run


class EMA:
    """Exponential moving average of a model's weights, with warm-up.

    The decay at update n is min(decay, (1 + n) / (10 + n)): early on the average
    follows the weights closely. With a fixed 0.995 and a short run, the average would
    still be mostly the random initialization.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) \
                or not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.model.parameters()]
        new_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.model.load_state_dict(state["model"])


def fit(model: nn.Module, loss_fn, data, *, epochs: int | None = None,
        steps: int | None = None, batch_size: int = 128, optimizer=None, lr: float = 1e-3,
        clip: float | None = None, ema: float | None = None, checkpoint=None,
        config: dict | None = None, save_every: int | None = None, amp: bool = True,
        compile: bool | str = False, check_every: int = 25, quiet: bool | None = None,
        generator: torch.Generator | None = None, desc: str = "train",
        save_seconds: float = 60.0, lock_timeout: float | None = None) -> FitResult:
    """Train `model` on `data` (a tensor or tuple of tensors, first dim = examples).

    Give either `epochs` or `steps`. With `compile`, each epoch's last partial batch is
    skipped (a new batch shape would cost a recompilation). With `checkpoint`, training
    resumes from the file when it exists (a finished run just loads: load-or-train) and
    saves to it every `save_every` steps or `save_seconds` of training, whichever comes
    first, at the end, and when stopped: Ctrl-C (SIGINT), SIGTERM and SIGHUP end the current
    step, save, and raise KeyboardInterrupt (a second Ctrl-C stops at once). A resumed run
    continues exactly where the stopped one was, to float rounding: a checkpoint saved inside
    an epoch keeps that epoch's order of the examples and how far it got, and every
    checkpoint keeps the random state (torch's CPU and CUDA generators and `generator`;
    randomness a loss draws from a generator of its own is not saved). Non-finite weights
    are never saved; a failed save warns, names the path, and the model stays in memory.
    While a run trains into a checkpoint, another process's run on the same path waits for
    it, then loads or resumes what it saved; a second fit in the same process is an error.
    Whatever stops it, fit leaves no lock, signal handler or temporary file behind.
    In smoke mode (BOOK_SMOKE=1, companion.run.profiles.smoke_mode) each call stops after
    profiles.SMOKE_STEPS optimizer steps, cache_dir() is a throwaway folder, and the trained
    model and its average repeat a slow network's output after a couple of calls
    (companion.run.smoke.cut), which keeps the samplers' loops cheap.
    Under torchrun with several processes, each rank trains on its share of every batch of
    `batch_size` through DistributedDataParallel (companion.run.distributed); rank 0 alone
    prints and writes the checkpoint, which is the one a single process would write.
    Before the first step the ranks check that they agree (batch size, steps, checkpoint or
    none, data, model, optimizer, config) and all fail naming what differs; a rank that
    waits for the others longer than BOOK_DIST_TIMEOUT seconds (10 minutes under torchrun)
    gives up with an error saying where it waited.

    Args:
        model: the nn.Module to train, in place (it ends in eval mode).
        loss_fn: `loss_fn(model, batch)` -> a scalar loss tensor, or `(loss, {"name":
            scalar})` to log more; with a `step` keyword it also gets the global step.
        data: a tensor (N, ...) or a tuple of tensors of N rows each (images, labels); a
            batch is the same rows of each, passed as a tensor or a tuple.
        epochs: passes over the data (give this or `steps`, not both).
        steps: optimizer steps (give this or `epochs`).
        batch_size: examples per step (the global batch under torchrun). Default 128.
        optimizer: a torch optimizer over `model`'s parameters; default Adam(lr), fused on
            CUDA.
        lr: the default optimizer's learning rate (ignored with `optimizer`). Default 1e-3.
        clip: the largest gradient norm, or None (default) for no clipping.
        ema: an EMA decay in (0, 1) (FitResult.ema holds the average), or None (default).
        checkpoint: a file path to resume from and save to (load-or-train), or None
            (default) for none. Checked before training: a regular file or absent, a name
            that fits the file system, a folder that takes a new file.
        config: a dict of plain settings that identify the run (a checkpoint with other
            settings is refused); NumPy scalars are taken as numbers.
        save_every: save every this many steps (default: a tenth of the run, at least 100).
        amp: mixed precision where the device has it (default True): bf16 or fp16 on a GPU,
            bf16 on a CPU with native bf16 units for a network that gains
            (`companion.run.precision.autocast_dtype`), float32 elsewhere.
        compile: torch.compile the model (default False; falls back to eager mode);
            "cuda": only where the model is on a GPU (the recipes' choice).
        check_every: steps between the moves of the logged losses to the host (and the
            NaN check). Default 25.
        quiet: no progress bar (default: the active profile's `quiet`).
        generator: the torch.Generator that draws each epoch's order (saved and resumed).
        desc: the progress bar's label. Default "train".
        save_seconds: also save when this many seconds of training passed since the last
            save. Default 60.
        lock_timeout: seconds to wait for another process that trains into the same
            checkpoint before giving up (CheckpointBusyError); None (default) waits until
            it is done. Either way the wait says who holds the file, and Ctrl-C stops it.

    Returns:
        FitResult: the history, the steps taken, the seconds, where the run resumed, the
        EMA, the training time across sessions, and why the last failed save failed.
    """
    tensors = data if isinstance(data, (tuple, list)) else (data,)
    total = check_fit_args(model, tensors, epochs, steps, batch_size,
                           lr if optimizer is None else None, clip, check_every, save_every,
                           save_seconds, lock_timeout)
    device = next(model.parameters()).device
    optimizer = optimizer or precision.default_optimizer(model.parameters(), lr, device)
    check_optimizer(model, optimizer)
    averager = EMA(model, ema) if ema is not None else None
    amp_dtype = precision.autocast_dtype(device, model) if amp else None
    # fp16 needs loss scaling (small gradients underflow); bf16 and float32 do not
    scaler = precision.grad_scaler(device, enabled=amp_dtype == torch.float16)
    if compile not in (True, False, "cuda"):
        raise ValueError(f"compile={compile!r}: give True, False or 'cuda' (compile only "
                         "where the model is on a GPU)")
    compiled = compile is True or (compile == "cuda" and device.type == "cuda")
    run = Run(model, optimizer, averager, scaler, generator, tensors, batch_size, total,
              drop_last=compiled, check_every=check_every)
    run.epochs, run.wants_compile = epochs, compile is not False  # for the work log
    step_kw = takes_step(loss_fn)
    with run.session(checkpoint, config, ema, save_every, save_seconds, lock_timeout,
                     quiet, desc):
        step_model = run.step_model(compiled)
        model.train()
        while run.step < run.total:
            batch, share = run.next_batch()  # share: this rank's weight under torchrun
            with work.counting(run):  # a smoke run's work log (companion.run.work)
                try:
                    with precision.autocast(device, amp_dtype):
                        out = (loss_fn(step_model, batch, step=run.step) if step_kw
                               else loss_fn(step_model, batch))
                except RuntimeError as err:  # a failed compile: the same step, eagerly
                    step_model = run.forward_failed(err)
                    continue
                loss, metrics = run.loss_and_metrics(out)
                optimizer.zero_grad(set_to_none=True)
                with run.waiting("the gradients' all-reduce"):  # DDP's, in backward
                    scaler.scale(loss if share == 1.0 else loss * share).backward()
            if clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            run.updating = True  # weights of neither step until the count moves on
            scaler.step(optimizer)
            scaler.update()
            if averager is not None:
                averager.update(model)
            run.stepped(loss, metrics, share)  # count the step, log, show progress
            run.end_of_step()  # save when due; stop here if a signal asked to
    model.eval()
    return run.result()
