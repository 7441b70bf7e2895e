"""The run state behind `companion.train.fit`: resume, the epoch's order of the examples
(shared under DDP), logging, the save policy, interrupts and the result.

`fit` calls a `Run` at named points of its loop (`next_batch`, `stepped`, `end_of_step`), and
`Run.session` wraps the loop: lock and resume the checkpoint, cut a smoke run, catch signals,
show progress, save an interrupted run. The loop itself (forward, backward, clip, step, EMA)
stays in fit, where a reader sees it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import distributed, precision, profiles, shipped, smoke
from .checkpoint import (
    CheckpointMismatchError,
    CheckpointSaveError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    PathLock,
    Resumed,
    all_finite,
    check_storable,
    check_writable,
    identity,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    through_links,
)
from .fit_checks import loss_and_metrics, mismatch
from .progress import log_training, progress


@dataclass
class FitResult:
    """history: per-step lists ("step", "loss", and every logged metric)."""

    history: dict[str, list[float]]
    steps: int
    seconds: float
    resumed_at: int
    ema: object | None  # companion.train.EMA, or None
    train_seconds: float = 0.0  # all sessions' training time to these weights (checkpointed)
    save_error: str | None = None  # why the last failed save failed (the model is in memory)




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


class Run:
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
                 total: int, drop_last: bool, check_every: int):
        self.model, self.optimizer, self.ema, self.scaler = model, optimizer, ema, scaler
        self.generator, self.device = generator, next(model.parameters()).device
        self.tensors, self.batch_size, self.total = tensors, batch_size, total
        self.ranks = ranks = distributed.join(self.device)
        self.check_every, self.compiled, self.bar, self.signals = check_every, False, None, None
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

    # 0. the session around the loop ------------------------------------------------------
    @contextlib.contextmanager
    def session(self, checkpoint, config: dict | None, ema_decay, save_every: int | None,
                save_seconds: float, lock_timeout: float | None, quiet: bool | None,
                desc: str):
        """Everything around fit's loop, as one context: the ranks agree, the checkpoint is
        locked and resumed (1), a smoke run is cut to a couple of steps, signals stop the
        run at the end of a step, the progress bar shows it; on the way out an interrupted
        run saves (6), a finished one checks what it ends with, and a smoke run's model
        gets the smoke run's cheap forward (`smoke.cut`). Whatever stops it,
        nothing (lock, signal handler, temporary file) is left behind."""
        tensors, model = self.tensors, self.model
        ident = identity(model, config, tensors if checkpoint is not None else (),
                         self.optimizer, ema_decay, self.batch_size)
        if checkpoint is not None:  # what it could not write is refused now, not after training
            check_storable(model=model.state_dict(), optimizer=self.optimizer.state_dict(),
                           ema=self.ema.state_dict() if self.ema is not None else None)
        if self.ranks is not None:  # before any collective that a disagreement would hang
            self.ranks.agree(distributed.what_must_agree(ident, tensors, self.total,
                                                         checkpoint))
        with contextlib.ExitStack() as cleanup:  # whatever happens, leave the process as it was
            if checkpoint is not None:
                self.keep_in(Path(checkpoint), ident, cleanup, save_every, save_seconds,
                             lock_timeout)
            if profiles.smoke_mode():  # BOOK_SMOKE=1: every code path, a couple of steps a call
                # what the profile's run would take, for the work log (companion.run.work)
                self.full_total, self.start_step = self.total, self.step
                self.desc, self.work_counted = desc, False
                self.checkpoint_name = Path(checkpoint).name if checkpoint is not None else None
                self.total = min(self.total, self.step + profiles.SMOKE_STEPS)
            self.signals = cleanup.enter_context(StopSignals(self))
            self.bar = cleanup.enter_context(progress(
                total=self.total, desc=desc, initial=self.step,
                quiet=quiet if self.leader else True))
            if self.leader:  # $BOOK_TRAIN_LOG: what a GPU call trained, even if cut off
                log_training("start", desc, checkpoint, self.step, self.total)
                cleanup.callback(lambda: log_training(
                    "end", desc, checkpoint, self.step, self.total,
                    time.perf_counter() - self.start))
            try:
                yield self
            except KeyboardInterrupt:
                self.interrupted()
                raise
        self.flush()
        if self.signals.caught:  # it came with the last step, after the final save: stop
            raise KeyboardInterrupt(self.signals.why(self.step)
                                    + " (the run is complete and saved)")
        if checkpoint is None and not all_finite(model.state_dict()):
            raise NonFiniteWeightsError(
                f"the weights became NaN/inf by step {self.step} although the loss was finite "
                "(a NaN gradient?). Lower the learning rate or clip gradients (clip=1.0).")
        if checkpoint is not None and self.leader and self.step == self.total:
            self.ship()
        if profiles.smoke_mode():  # from here on a slow network repeats itself (smoke.cut)
            smoke.cut(model)
            if self.ema is not None:
                smoke.cut(self.ema.model)

    def ship(self) -> None:
        """Under $BOOK_SHIP (make weights), export the finished run into the shipped set
        (`shipped.export`), then go on with the weights exactly as shipped (float16 where
        the file holds them), so that this run's outputs are a reader's."""
        where = shipped.ship_to()
        if where is None or profiles.smoke_mode():
            return
        entry = shipped.export(where, self.path.name, self.model, self.ema, self.identity,
                               self.step, self.history, self.result().train_seconds,
                               self.device, os.environ.get("BOOK_CHAPTER") or None)
        if entry is None:  # too cheap to ship: it trains on the page
            return
        data = (where / entry["file"]).read_bytes()
        shipped.decode(data, self.path.name, entry["file"]).load_into(self.model, self.ema)

    def step_model(self, compile: bool) -> nn.Module:
        """What the loss function calls: the model, compiled with `compile` (torch.compile,
        or the model where that is unavailable), as a DDP replica under torchrun."""
        model = self.model
        if compile:
            model = precision.try_compile(model, precision.compile_mode(self.device))
        self.compiled = compile
        return self.replica(model)

    def forward_failed(self, err: RuntimeError) -> nn.Module:
        """The loss function raised `err`. Compiled: compiling failed, so warn, draw the
        step's random numbers again and return the eager model to redo the step with.
        Otherwise raise it, saying why the model cannot take the data when that is why."""
        if self.compiled:
            warnings.warn(f"torch.compile failed ({str(err)[:300]}); training without it",
                          stacklevel=4)
            self.compiled = False
            self.redo_step()
            return self.replica(self.model)
        hint = mismatch(self.model, self.tensors)
        if hint:
            raise RuntimeError(f"{hint} (the loss function failed with: {err})") from err
        raise err

    def loss_and_metrics(self, out) -> tuple[torch.Tensor, dict]:
        """The loss function's result as (scalar loss, {name: scalar}), or a clear error."""
        return loss_and_metrics(out, self.step)

    # 1. resume ---------------------------------------------------------------------------
    def keep_in(self, path: Path, ident: dict, cleanup: contextlib.ExitStack,
                save_every: int | None, save_seconds: float,
                lock_timeout: float | None = None) -> None:
        """Train into checkpoint `path`: lock it for this run (until `cleanup` closes) and
        resume from it if it exists, else take the shipped run of the same name if it is
        this one (`shipped.find`). A folder that takes no file (a class's shared, read-only
        cache) is refused unless it holds this run complete, or the shipped set does: that
        one is read as it is, without a lock (a lock file is a write, and a finished run
        writes nothing)."""
        if self.ranks is not None:  # rank 0's path (a smoke run's cache is per process)
            path = Path(self.ranks.from_leader(str(path)))
        path = through_links(path)  # latest.pt -> run.pt: lock, resume and write run.pt
        self.path, self.identity = path, ident
        self.policy = _SavePolicy(self.total, save_every, save_seconds)
        unwritable, state = None, None
        if self.leader:
            try:
                check_writable(path)  # before any training, not after all of it
            except CheckpointSaveError as err:
                if path.is_file():
                    unwritable, state = err, read_checkpoint(path)
                    self._must_not_train(path, state, err)
                elif shipped.listed(path.name):  # the shipped file may serve: checked below
                    unwritable = err
                else:
                    raise
            if unwritable is None:  # before loading: no steps resumed twice
                cleanup.enter_context(PathLock(path, lock_timeout))
        if self.ranks is not None:
            self.ranks.barrier("rank 0's lock on the checkpoint")  # the others wait for it
        if path.exists():
            saved = load_checkpoint(path, self.model, self.optimizer, self.ema, ident,
                                    generator=self.generator, scaler=self.scaler,
                                    note=self.leader, state=state)
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
            shipped.record("cache" if self.step == self.total else "trained", path.name)
        elif (found := shipped.find(path.name, ident, self.total)) is not None:
            # the book's own run of this recipe: nothing to train, nothing to write
            found.load_into(self.model, self.ema)
            self.kept = _Kept(found.step, found.history, found.train_seconds)
            self.policy.saved(self.step)
            shipped.record("shipped", path.name)
        else:
            if unwritable is not None:  # the shipped file was not this run's: it must train
                raise unwritable
            shipped.record("trained", path.name)
            if self.ranks is not None and self.ranks.rank:  # not rank 0's noise on every rank
                torch.manual_seed(torch.initial_seed() + self.ranks.rank)
        self.resumed_at = self.step
        self.start = self.policy.last_time = time.perf_counter()

    def _must_not_train(self, path: Path, state: dict, unwritable: CheckpointSaveError
                        ) -> None:
        """In a folder that takes no file, the checkpoint `state` read from `path` must
        hold this run complete (its step this run's total, its identity this run's:
        checked when it loads); else `unwritable`, the folder's error, with what it holds
        and what to do."""
        step = int(state["step"])
        if step < self.total:
            raise CheckpointSaveError(
                f"{unwritable}. The checkpoint there holds {step} of this run's "
                f"{self.total} steps: a complete one would be read as it is, but training "
                "the rest needs a folder that takes files (copy the checkpoint into a "
                "writable BOOK_CACHE to resume it there)") from unwritable

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
        if profiles.smoke_mode():  # the epoch advances by the whole batch, the step sees a few
            idx = idx[:profiles.SMOKE_BATCH]
            self.step_rows = len(idx)
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
        self.bar.update(1)
        if self.step % self.check_every == 0 or self.step == self.total:
            self.flush()
            self.bar.set_postfix(loss=f"{self.history['loss'][-1]:.4g}")

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
    def end_of_step(self) -> None:
        """Save when due (under DDP the ranks decide together); then stop (KeyboardInterrupt)
        if a signal asked to."""
        if self._save_or_stop(bool(self.signals.caught)):
            raise KeyboardInterrupt(self.signals.why(self.step))

    def _save_or_stop(self, signalled: bool) -> bool:
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


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP (what Colab, CI and a closed terminal send) stop the run
    at the end of the step, so what is saved is one consistent step; a second Ctrl-C stops
    at once. Installed in the main thread only; the old handlers come back on exit."""

    def __init__(self, run: Run):
        self.run, self.caught, self.old = run, [], {}

    def __enter__(self) -> StopSignals:
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
