"""One small fit loop for every chapter.

    result = fit(model, loss_fn, data.x_train, epochs=profile.epochs, batch_size=128,
                 checkpoint=checkpoint_path("vae", profile), config=cfg)

`loss_fn(model, batch)` returns a scalar loss, or `(loss, {"name": scalar, ...})` to log
more. A loss whose schedule depends on training progress (KL warm-up) takes a `step` keyword:
`loss_fn(model, batch, step=s)` gets the number of optimizer steps taken before this batch,
counted across resumes, so a resumed run continues its schedule and the loss keeps no state.

This module holds the loop (`fit`), the state one call of it keeps (`_Run`), the EMA of the
weights, and the precision and compile choices: mixed precision chosen by `autocast_dtype`
(bf16 on GPUs that have it natively, fp16 with a gradient scaler on older ones, float32 on
the CPU), optional torch.compile (falling back to eager mode when it fails), gradient
clipping, a clear error naming the step when the loss stops being finite. What keeps the
work (checkpoints that resume exactly, and refuse one of another run or a damaged one) is
`companion.run.checkpoint`; training as one of several processes under torchrun is
`companion.run.distributed`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .run import checks, distributed, profiles, runtime
from .run.checkpoint import (  # noqa: F401  (re-exported: companion.train's names of before)
    CheckpointBusyError,
    CheckpointMismatchError,
    CheckpointSaveError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    PathLock,
    Resumed,
    all_finite,
    cache_dir,
    check_storable,
    check_writable,
    checkpoint_path,
    identity,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .run.progress import progress


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


@dataclass
class FitResult:
    """history: per-step lists ("step", "loss", and every logged metric)."""

    history: dict[str, list[float]]
    steps: int
    seconds: float
    resumed_at: int
    ema: EMA | None
    train_seconds: float = 0.0  # all sessions' training time to these weights (checkpointed)
    save_error: str | None = None  # why the last failed save failed (the model is in memory)


def fit(model: nn.Module, loss_fn, data, *, epochs: int | None = None,
        steps: int | None = None, batch_size: int = 128, optimizer=None, lr: float = 1e-3,
        clip: float | None = None, ema: float | None = None, checkpoint=None,
        config: dict | None = None, save_every: int | None = None, amp: bool = True,
        compile: bool = False, check_every: int = 25, quiet: bool | None = None,
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
    profiles.SMOKE_STEPS optimizer steps, and cache_dir() is a throwaway folder.
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
        amp: mixed precision where the GPU has it (default True; no effect on the CPU).
        compile: torch.compile the model (default False; falls back to eager mode).
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
    total = _check_fit_args(model, tensors, epochs, steps, batch_size,
                            lr if optimizer is None else None, clip, check_every, save_every,
                            save_seconds)
    if lock_timeout is not None:
        lock_timeout = checks.real("lock_timeout", lock_timeout, low=0.0)
    device = next(model.parameters()).device
    optimizer = optimizer or default_optimizer(model.parameters(), lr, device)
    _check_optimizer(model, optimizer)
    averager = EMA(model, ema) if ema is not None else None
    ident = identity(model, config, tensors if checkpoint is not None else (), optimizer, ema,
                     batch_size)
    amp_dtype = autocast_dtype(device) if amp else None
    # fp16 needs loss scaling (small gradients underflow); bf16 and float32 do not
    scaler = _grad_scaler(device, enabled=amp_dtype == torch.float16)
    if checkpoint is not None:  # what it could not write is refused now, not after training
        check_storable(model=model.state_dict(), optimizer=optimizer.state_dict(),
                       ema=averager.state_dict() if averager is not None else None)
    run = _Run(model, optimizer, averager, scaler, generator, tensors, batch_size, total,
               distributed.join(device), drop_last=compile)
    if run.ranks is not None:  # before any collective that a disagreement would hang
        run.ranks.agree(distributed.what_must_agree(ident, tensors, total, checkpoint))
    step_kw = _takes_step(loss_fn)
    with contextlib.ExitStack() as cleanup:  # whatever happens, leave the process as it was
        if checkpoint is not None:
            run.keep_in(Path(checkpoint), ident, cleanup, save_every, save_seconds,
                        lock_timeout)
        if profiles.smoke_mode():  # BOOK_SMOKE=1: every code path, a couple of steps a call
            run.total = min(run.total, run.step + profiles.SMOKE_STEPS)
        signals = cleanup.enter_context(_StopSignals(run))
        bar = cleanup.enter_context(progress(total=run.total, desc=desc, initial=run.step,
                                             quiet=quiet if run.leader else True))
        compiled, step_model = compile, run.replica(try_compile(model, compile_mode(device))
                                                     if compile else model)
        model.train()
        try:
            while run.step < run.total:
                batch, share = run.next_batch()
                try:
                    out = _call(loss_fn, step_model, batch, run.step, step_kw, device, amp_dtype)
                except RuntimeError as err:
                    if compiled:  # compiling failed: train eagerly instead
                        warnings.warn(f"torch.compile failed ({str(err)[:300]}); training "
                                      "without it", stacklevel=2)
                        compiled, step_model = False, run.replica(model)
                        run.redo_step()
                        continue
                    hint = _mismatch(model, tensors)
                    if hint:
                        raise RuntimeError(f"{hint} (the loss function failed with: {err})") \
                            from err
                    raise
                loss, metrics = _loss_and_metrics(out, run.step)
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
                run.stepped(loss, metrics, share)
                bar.update(1)
                if run.step % check_every == 0 or run.step == run.total:
                    run.flush()
                    bar.set_postfix(loss=f"{run.history['loss'][-1]:.4g}")
                if run.end_of_step(bool(signals.caught)):
                    raise KeyboardInterrupt(signals.why(run.step))
        except KeyboardInterrupt:
            run.interrupted()
            raise
    run.flush()
    if signals.caught:  # it came with the last step, after the final save: stop all the same
        raise KeyboardInterrupt(signals.why(run.step) + " (the run is complete and saved)")
    if checkpoint is None and not all_finite(model.state_dict()):
        raise NonFiniteWeightsError(f"the weights became NaN/inf by step {run.step} although "
                                    "the loss was finite (a NaN gradient?). Lower the learning "
                                    "rate or clip gradients (clip=1.0).")
    model.eval()
    return run.result()


def _call(loss_fn, model, batch, step: int, step_kw: bool, device, amp_dtype):
    """loss_fn on one batch, under the chosen mixed precision."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        return loss_fn(model, batch, step=step) if step_kw else loss_fn(model, batch)


@dataclass
class _Kept:
    """What a checkpoint holds of a run besides the states of the model, the optimizer, the
    EMA and the gradient scaler: where the run is and what it logged. Nothing here decides
    when to write it (that is `_SavePolicy`)."""

    step: int = 0  # optimizer steps taken, across sessions
    history: dict = field(default_factory=lambda: {"step": [], "loss": []})
    trained_before: float = 0.0  # seconds of training of the earlier sessions
    order: torch.Tensor | None = None  # this epoch's order of the examples
    pos: int = 0  # how many of that order the steps so far used

    @classmethod
    def resumed(cls, saved: Resumed, device) -> _Kept:
        order = None if saved.data_order is None else saved.data_order.to(device)
        return cls(saved.step, saved.history, saved.train_seconds, order, saved.data_start)


class _SavePolicy:
    """When fit writes its checkpoint: every `every` steps, after `seconds` of training
    since the last save, at the last step, and when a signal stops the run (under DDP, when
    any rank is due or signalled). `last` is the step of the last good save (None: none)."""

    def __init__(self, total: int, save_every: int | None, save_seconds: float):
        self.every = int(save_every or max(total // 10, 100))
        self.seconds = save_seconds
        self.last: int | None = None
        self.last_time = time.perf_counter()

    def due(self, step: int, total: int) -> bool:
        return (step % self.every == 0 or step == total
                or time.perf_counter() - self.last_time > self.seconds)

    def saved(self, step: int) -> None:
        self.last, self.last_time = step, time.perf_counter()


class _Run:
    """One call of fit between its checks and its result. Its save-and-resume policy, in
    the order the methods below run:

    1. `keep_in` (with a checkpoint): lock the file (a second run waits, or gives up after
       lock_timeout), load it if it exists: weights, optimizer, EMA, scaler, random state,
       and `_Kept` (step, history, the unfinished epoch's order); else start at step 0.
    2. `next_batch`: the step's batch; note what the step starts from (random state,
       buffers), so that an interrupt inside it can save the step before it.
    3. `stepped`: the optimizer has moved the weights: count the step (`updating` covers
       the moment between, when the weights are of neither step).
    4. `end_of_step`: save when `_SavePolicy` says so, then stop if a signal asked to (any
       rank's under torchrun).
    5. `save`: flush the logged losses (a non-finite one raises, and nothing is saved),
       write atomically; a failed write warns, and training goes on.
    6. `interrupted` (an exception inside a step): nothing if the weights were updating;
       else save the last completed step, with the random state and buffers it ended
       with. Under torchrun the ranks saved together in 4, or cannot.
    7. `result`.
    """

    def __init__(self, model, optimizer, ema, scaler, generator, tensors, batch_size: int,
                 total: int, ranks: distributed.Ranks | None, drop_last: bool):
        self.model, self.optimizer, self.ema, self.scaler = model, optimizer, ema, scaler
        self.generator, self.device = generator, next(model.parameters()).device
        self.tensors, self.batch_size, self.total, self.ranks = tensors, batch_size, total, ranks
        self.n = n = tensors[0].shape[0]
        # a compiled model compiles again for every new batch shape (about a minute for a
        # U-Net, and then as a slower dynamic-shape graph): compiled, skip the partial batch;
        # under DDP, also a last batch too small to give every rank an example
        small = ranks is not None and n % batch_size < ranks.world
        self.stop = n - n % batch_size if (drop_last and n >= batch_size) or small else n
        self.kept = _Kept()
        self.policy: _SavePolicy | None = None  # with a checkpoint (keep_in)
        self.path: Path | None = None
        self.pending: list[tuple[int, torch.Tensor, dict]] = []  # logged, not yet flushed
        self.save_errors: list[str] = []
        self.rng_at_step = None  # the random state as the step in progress began
        self.buffers = list(model.buffers())  # BatchNorm's statistics: a forward moves them
        self.buffers_at_step: list[torch.Tensor] = []
        self.in_step = self.updating = False
        self.start = time.perf_counter()
        self.resumed_at = 0

    @property
    def step(self) -> int:
        return self.kept.step

    @property
    def history(self) -> dict:
        return self.kept.history

    @property
    def leader(self) -> bool:
        return self.ranks is None or self.ranks.leader

    # 1. resume ---------------------------------------------------------------------------
    def keep_in(self, path: Path, ident: dict, cleanup: contextlib.ExitStack,
                save_every: int | None, save_seconds: float,
                lock_timeout: float | None = None) -> None:
        """Train into checkpoint `path`: lock it for this run (until `cleanup` closes) and
        resume from it if it exists."""
        if self.ranks is not None:  # rank 0's path (a smoke run's cache is per process)
            path = Path(self.ranks.from_leader(str(path)))
        self.path, self.identity = path, ident
        self.policy = _SavePolicy(self.total, save_every, save_seconds)
        if self.leader:
            check_writable(path)  # before any training, not after all of it
            # before loading: no steps resumed twice
            cleanup.enter_context(PathLock(path, lock_timeout))
        if self.ranks is not None:
            self.ranks.barrier("rank 0's lock on the checkpoint")  # the others wait for it
        if path.exists():
            saved = load_checkpoint(path, self.model, self.optimizer, self.ema, ident,
                                    generator=self.generator, scaler=self.scaler,
                                    note=self.leader)
            if saved.step > self.total:
                raise CheckpointMismatchError(
                    f"checkpoint {path} holds {saved.step} steps, more than this run's "
                    f"{self.total}: it belongs to a longer run. Pass that run's step count, "
                    "or another checkpoint path.")
            self.kept = _Kept.resumed(saved, self.device)
            others = saved.state.get("rng_ranks") or []
            if self.ranks is not None and 0 < self.ranks.rank <= len(others):
                set_rng_state(others[self.ranks.rank - 1], self.generator)
            self.policy.saved(self.step)
        elif self.ranks is not None and self.ranks.rank:  # not rank 0's noise on every rank
            torch.manual_seed(torch.initial_seed() + self.ranks.rank)
        self.resumed_at = self.step
        self.start = self.policy.last_time = time.perf_counter()

    def replica(self, model: nn.Module):
        """What the loss function calls: the model, or under torchrun its DDP replica."""
        return model if self.ranks is None else self.ranks.replica(model)

    def waiting(self, what: str):
        """Where this rank waits for the others (a context): a timeout there becomes an
        error that says so (companion.run.distributed); alone, nothing."""
        return contextlib.nullcontext() if self.ranks is None else self.ranks.waiting(what)

    # 2, 3. a step ------------------------------------------------------------------------
    def next_batch(self):
        """This step's batch (this rank's share of it under DDP) and the weight of its loss
        (1, or what makes the ranks' mean the mean over the whole batch)."""
        kept = self.kept
        if kept.order is None or kept.pos >= self.stop:
            if self.stop == 0:
                raise ValueError(f"an epoch of the data yields no batch ({self.n} examples, "
                                 f"batch_size {self.batch_size}"
                                 + (f", {self.ranks.world} ranks)" if self.ranks else ")"))
            kept.order, kept.pos = _draw_order(self.n, self.generator, self.device), 0
            if self.ranks is not None:
                kept.order = self.ranks.same_order(kept.order)
        idx = kept.order[kept.pos:kept.pos + self.batch_size]
        self.used, share = len(idx), 1.0
        if self.ranks is not None:
            idx, share = self.ranks.share(idx)
        batch = tuple(t[idx] for t in self.tensors)
        self.in_step, self.rng_at_step = True, rng_state(self.generator, self.device)
        if self.buffers and self.path is not None:  # what an interrupted step restores
            self.buffers_at_step = [b.detach().clone() for b in self.buffers]
        return (batch if len(batch) > 1 else batch[0]), share

    def redo_step(self) -> None:
        """Draw this step's random numbers again (after a failed compile)."""
        set_rng_state(self.rng_at_step, self.generator)

    def stepped(self, loss: torch.Tensor, metrics: dict, share: float) -> None:
        """The optimizer has taken this step: count it, and queue what it logged."""
        self.kept.step, self.kept.pos = self.step + 1, self.kept.pos + self.used
        self.updating = self.in_step = False
        if share != 1.0:
            metrics = {k: v * share for k, v in metrics.items()}
        if self.ranks is not None:  # numbers too travel in the one all-reduce of flush
            metrics = {k: v if torch.is_tensor(v) else torch.tensor(float(v), device=self.device)
                       for k, v in metrics.items()}
        self.pending.append((self.step, loss.detach() * share if share != 1.0
                             else loss.detach(), metrics))
        if self.ranks is not None and self.step == self.resumed_at + 1:
            self.ranks.check_in_step(self.model, self.step)

    def flush(self) -> None:
        """Move the queued losses and metrics into the history (under DDP, their mean over
        the ranks); raise NonFiniteLossError at the first loss that is not finite."""
        if not self.pending:
            return
        pending = self.pending
        # every pending loss and tensor metric comes back in ONE device-to-host copy: a
        # float() per value would be a GPU sync each
        device_values = [p[1] for p in pending] + [
            v for _, _, m in pending for v in m.values() if torch.is_tensor(v)]
        first = device_values[0].device
        values = torch.stack([v.float().reshape(()).to(first) for v in device_values])
        if self.ranks is not None:
            values = self.ranks.mean(values)
        values = values.cpu().tolist()
        losses, rest = values[:len(pending)], iter(values[len(pending):])
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            i = bad[0]
            raise NonFiniteLossError(
                f"the loss became {losses[i]} at step {pending[i][0]} of {self.total}. "
                "Lower the learning rate, clip gradients (clip=1.0), or check the inputs "
                "for NaN/inf; " + self.last_good())
        for (s, _, metrics), loss in zip(pending, losses, strict=True):
            self.history["step"].append(s)
            self.history["loss"].append(loss)
            for k, v in metrics.items():
                self.history.setdefault(k, []).append(next(rest) if torch.is_tensor(v)
                                                      else float(v))
        pending.clear()

    def last_good(self) -> str:
        if self.path is None:
            return "no checkpoint was kept (pass checkpoint=...)."
        if self.policy.last is None:
            return f"no finite checkpoint was saved to {self.path} yet."
        return f"the last finite weights, of step {self.policy.last}, are in {self.path}."

    # 4, 5. saving --------------------------------------------------------------------------
    def end_of_step(self, signalled: bool) -> bool:
        """Save when due; under DDP the ranks decide together. True: stop now."""
        due = self.policy is not None and self.policy.due(self.step, self.total)
        if self.ranks is not None:  # one small all-reduce a step: any rank's signal stops all
            due, signalled = self.ranks.any(due, signalled)
            due = due or (signalled and self.policy is not None
                          and self.policy.last != self.step)
        if due:
            self.save(final=self.step == self.total)
        return signalled

    def save(self, final: bool = False, rng: dict | None = None) -> None:
        self.flush()  # never save weights whose loss was not finite
        kept = self.kept
        mid_epoch = kept.order is not None and kept.pos < self.stop
        rng = rng or rng_state(self.generator, self.device)
        extra = None
        if self.ranks is not None:  # every rank's random state, for every rank to resume
            extra = {"rng_ranks": self.ranks.gather(rng)[1:]}
            if not self.leader:
                if not all_finite(self.model.state_dict()):
                    raise NonFiniteWeightsError(f"the weights became NaN/inf by step "
                                                f"{self.step}; not saved")
                return
        try:
            save_checkpoint(self.path, self.model, self.optimizer, self.ema, kept.step,
                            kept.history, self.identity,
                            kept.trained_before + time.perf_counter() - self.start,
                            rng=rng, data_order=kept.order if mid_epoch else None,
                            data_start=kept.pos, scaler=self.scaler, extra=extra)
        except NonFiniteWeightsError as err:
            raise NonFiniteWeightsError(
                f"the weights became NaN/inf by step {self.step} of {self.total} although "
                f"the loss was finite (a NaN gradient?); they were not saved. Lower the "
                f"learning rate or clip gradients (clip=1.0); {self.last_good()}") from err
        except CheckpointSaveError as err:
            self.save_errors.append(str(err))
            warnings.warn(f"{err}; training goes on and the model stays in memory"
                          if not final else f"{err}; the trained model is in memory only "
                          "(save it with torch.save(model.state_dict(), path))", stacklevel=4)
            return
        self.policy.saved(self.step)

    # 6, 7. the end -------------------------------------------------------------------------
    def interrupted(self) -> None:
        """On KeyboardInterrupt: save the steps taken since the last save, unless the
        weights are half updated (then nothing is saved). Under DDP a stop the ranks agreed
        on has saved already, and a rank stopped at once cannot save alone."""
        last = None if self.policy is None else self.policy.last
        if self.updating:
            at = (f"the last checkpoint, of step {last}, is kept"
                  if last is not None else "nothing was saved")
            print(f"interrupted while step {self.step + 1} was updating the weights, which "
                  f"are now of neither step; not saved ({at})")
            return
        if self.ranks is not None:
            return
        self.flush()
        if self.path is not None and last != self.step:
            # stopped inside a step: save the random state it began with, so the resumed
            # run draws the same numbers for it, and the buffers (BatchNorm's statistics)
            # as they were before its forward pass
            if self.in_step and self.buffers_at_step:
                with torch.no_grad():
                    for b, kept in zip(self.buffers, self.buffers_at_step, strict=True):
                        b.copy_(kept)
            self.save(rng=self.rng_at_step if self.in_step else None)
            if self.policy.last == self.step:
                print(f"interrupted at step {self.step}; saved {self.path}, run again to "
                      "resume")

    def result(self) -> FitResult:
        seconds = time.perf_counter() - self.start
        return FitResult(self.history, self.step, seconds, self.resumed_at, self.ema,
                         self.kept.trained_before + seconds,
                         self.save_errors[-1] if self.save_errors else None)


class _StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP (what Colab, CI and a closed terminal send) stop the run
    at the end of the step, so what is saved is one consistent step; a second Ctrl-C stops
    at once. Installed in the main thread only; the old handlers come back on exit."""

    def __init__(self, run: _Run):
        self.run, self.caught, self.old = run, [], {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM", "SIGHUP"):
                sig = getattr(signal, name, None)
                if sig is not None:
                    try:
                        self.old[sig] = signal.signal(sig, self.handle)
                    except (ValueError, OSError):
                        pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

    def why(self, step: int) -> str:
        """The KeyboardInterrupt's message: this process's signal, or another rank's."""
        if self.caught:
            return f"signal {int(self.caught[0])} at step {step}"
        return f"another rank was stopped (a signal), so this one stops too, at step {step}"

    def handle(self, sig, frame) -> None:
        if sig == signal.SIGINT and self.caught:
            raise KeyboardInterrupt(f"second signal at step {self.run.step}")
        self.caught.append(sig)
        if sig == signal.SIGINT and self.run.leader:
            print(f"\ninterrupt: stopping after step {self.run.step + 1} (interrupt again to "
                  "stop at once)", file=sys.stderr, flush=True)


def _draw_order(n: int, generator: torch.Generator | None, device: torch.device):
    """One epoch's permutation of the examples: the same draw as companion.data.batches
    (so a run's random stream, and every stored result, is what it was before fit began
    keeping the order)."""
    if generator is None or generator.device == device:
        return torch.randperm(n, generator=generator, device=device)
    return torch.randperm(n, generator=generator).to(device)


def _check_fit_args(model, tensors, epochs, steps, batch_size, lr, clip, check_every,
                    save_every, save_seconds) -> int:
    """Clear errors for the mistakes fit would otherwise report obscurely, or not at all;
    returns the number of steps to train."""
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise TypeError(f"model must be an nn.Module with parameters, got {type(model).__name__}")
    if not tensors or not all(torch.is_tensor(t) for t in tensors):
        kinds = [type(t).__name__ for t in tensors]
        raise TypeError(f"data must be a tensor or a tuple of tensors, got {kinds}; convert "
                        "NumPy arrays with torch.from_numpy(a).float() (or use "
                        "companion.data.load, which returns tensors)")
    if any(t.dim() == 0 for t in tensors):
        raise ValueError("data must have a first dimension of examples, got a 0-dim tensor")
    sizes = [t.shape[0] for t in tensors]
    if sizes[0] == 0:
        raise ValueError(f"the data is empty (shape {tuple(tensors[0].shape)}): nothing to "
                         "train on; check the subset or the loader")
    if len(set(sizes)) > 1:
        raise ValueError(f"the data tensors hold different numbers of examples {sizes}: each "
                         "must have one row per example (e.g. images and their labels from "
                         "the same split, subset the same way)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                           or not 0 < lr < float("inf")):
        raise ValueError(f"lr must be a positive number, got {lr!r}; 1e-3 is a good start "
                         "for Adam (lower it if the loss jumps or becomes NaN)")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real)
                             or not 0 < clip <= float("inf")):
        raise ValueError(f"clip is the largest gradient norm allowed and must be > 0 (e.g. "
                         f"1.0), or None for no clipping; got {clip!r}")
    checks.real("save_seconds", save_seconds, low=0.0, finite=False)
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    for name, v in (("epochs", epochs), ("steps", steps), ("check_every", check_every),
                    ("save_every", save_every)):
        if v is None and name != "check_every":
            continue
        if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or (
                isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{name} must be a whole number, got {v!r}")
        if name in ("check_every", "save_every") and v <= 0:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    total = int(steps) if steps is not None else int(epochs) * math.ceil(sizes[0] / batch_size)
    if total <= 0:
        raise ValueError(f"nothing to train: {total} steps (epochs={epochs}, steps={steps}); "
                         "pass epochs >= 1 or steps >= 1")
    return total


def _check_optimizer(model: nn.Module, optimizer) -> None:
    """Refuse an optimizer that would train nothing of `model` (built over another model's
    parameters, or over this one's before it was rebuilt)."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not hasattr(optimizer, "step"):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    held = {id(p) for g in groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and not any(id(p) in held for p in trainable):
        raise ValueError(f"the optimizer holds none of the model's {len(trainable)} trainable "
                         "parameters, so training would change nothing: build it from this "
                         "model, e.g. torch.optim.Adam(model.parameters(), lr=1e-3)")


def _loss_and_metrics(out, step: int) -> tuple[torch.Tensor, dict]:
    """A loss function's result as (scalar loss, {name: scalar}), or a clear error."""
    loss, metrics = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
    _check_loss(loss, step)
    if not isinstance(metrics, dict):
        raise TypeError(f"loss_fn returned (loss, {type(metrics).__name__}) at step "
                        f"{step + 1}; the second item must be a dict {{'name': scalar}}")
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"logged metric names must be str, got {k!r} at step {step + 1}")
        ok = (torch.is_tensor(v) and v.numel() == 1 and not v.is_complex()) or (
            isinstance(v, numbers.Real) and not isinstance(v, bool))
        if not ok:
            got = (f"a tensor of shape {tuple(v.shape)}" if torch.is_tensor(v)
                   else repr(v))
            raise TypeError(f"logged metric {k!r} must be one number (a scalar tensor or a "
                            f"float), got {got} at step {step + 1}: reduce it, e.g. .mean()")
    return loss, metrics


def _check_loss(loss, step: int) -> None:
    if not torch.is_tensor(loss):
        raise TypeError(f"loss_fn must return a scalar tensor, or (loss, {{'name': value}}); "
                        f"got {type(loss).__name__} at step {step + 1}")
    if not loss.requires_grad:
        raise ValueError(f"the loss at step {step + 1} has no gradient (requires_grad is "
                         "False): compute it from the model's output, not under "
                         "torch.no_grad() or from .detach()ed / .item() values")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar (one number for the batch), got shape "
                         f"{tuple(loss.shape)} at step {step + 1}: reduce it, e.g. with "
                         ".mean() over the batch")


def _mismatch(model: nn.Module, tensors) -> str:
    """Why the model cannot take this data (device or dtype), with the fix; '' if it can."""
    p = next(model.parameters())
    for i, t in enumerate(tensors):
        name = "data" if len(tensors) == 1 else f"data[{i}]"
        if t.device != p.device:
            return (f"{name} is on {t.device} but the model is on {p.device}: move both to "
                    "one device, e.g. `profile, device = companion.setup()`, then "
                    "`model.to(device)` and `x.to(device)` (ImageData has .to(device) too)")
        if t.is_floating_point() and t.dtype != p.dtype:
            return (f"{name} is {t.dtype} but the model's parameters are {p.dtype}: convert "
                    f"one of them, e.g. x.to({p.dtype}) or model.to({t.dtype})")
    return ""


def _takes_step(loss_fn) -> bool:
    """Whether `loss_fn` accepts a `step` keyword (then fit passes the global step)."""
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def autocast_dtype(device) -> torch.dtype | None:
    """The mixed-precision dtype for training on `device`, or None for full precision.

    bf16 on CUDA GPUs of compute capability 8.0 and up (Ampere, Hopper: native bf16 tensor
    cores, and bf16 has float32's exponent range, so no loss scaling); fp16 on older CUDA
    GPUs such as Colab's T4 (7.5), where bf16 is emulated and slower than float32, so fp16
    with a gradient scaler is the fast path; None on the CPU (autocast there mostly adds
    casts to these small models). Under BOOK_T4=1 (companion.run.runtime.t4_emulated) fp16 on
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


def _grad_scaler(device: torch.device, enabled: bool):
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
