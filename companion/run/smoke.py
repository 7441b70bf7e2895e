"""The smoke run's cut on a trained network (BOOK_SMOKE=1: the `gpu` profile's code on a CPU).

A smoke run trains each model for a couple of steps (`Run.session`), so its samples mean
nothing; what it checks is that every line of every chapter runs. The slow part left is a
sampler calling a gpu-sized network hundreds of times. Rather than thinning the samplers'
loops (the math would then read differently in a smoke run), the run cuts the network: at
the end of a smoke run's `fit`, `cut` makes the trained model, in eval mode, compute its
first SMOKE_CALLS call on each input shape and, if that was slow, repeat its output for that
shape afterwards. Every loop then runs every step of its own code, cheaply.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from . import profiles, work

SLOW = 0.05  # seconds a call: a network slower than this repeats itself in the smoke run
# calls computed per input shape before a slow network repeats itself: one shows that the
# network takes that shape; a second computed nothing more (and cost chapter 9's smoke run
# a second pass of 1,000 images through the gpu U-Net per shape of its bound)
SMOKE_CALLS = 1


class _Repeats:
    """Mixed in before a model's own class by `cut`: forward as the class's, except that in
    eval mode, after SMOKE_CALLS calls on the same input shapes that took more than SLOW
    seconds each on average, the last output for those shapes comes back (plus zero times
    the inputs that need a gradient, so that autograd through it still works)."""

    def forward(self, *args, **kwargs):
        if self.training or not profiles.smoke_mode():
            return super().forward(*args, **kwargs)
        own = super().forward
        if work.faking():  # inside a call measured on fake tensors: just compute
            return own(*args, **kwargs)
        inputs = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        key = tuple(tuple(a.shape) for a in inputs)
        # a run that counts its work (companion.run.work) counts every call, computes a few
        # rows of the first on each shape, and repeats it, however fast the network
        return work.eval_call(self, key, args, kwargs, own,
                              lambda: self._smoke_forward(key, inputs, own, args, kwargs))

    def _smoke_forward(self, key, inputs, own, args, kwargs):
        counting = work.enabled()
        slow = -1.0 if counting else SLOW
        # a counting run repeats every network, except one whose weights take a gradient
        # here (a repeated output has none): that one computes its few rows each call
        repeat = not (counting and torch.is_grad_enabled()
                      and any(p.requires_grad for p in self.parameters()))
        calls, seconds, last = self._smoke_calls.get(key, (0, 0.0, None))  # computed calls
        if repeat and last is not None and calls >= SMOKE_CALLS and seconds / calls > slow:
            grad = [a for a in inputs if a.requires_grad] if torch.is_grad_enabled() else []
            return last + sum(a.sum() for a in grad) * 0 if grad else last.clone()
        start = time.perf_counter()
        out = work.few_rows(own, args, kwargs) if counting else own(*args, **kwargs)
        kept = out.detach() if torch.is_tensor(out) else None  # a tuple is computed each time
        calls, seconds = calls + 1, seconds + time.perf_counter() - start
        self._smoke_calls[key] = (calls, seconds, kept)
        if kept is not None and calls == SMOKE_CALLS and seconds / calls > slow:
            _log(type(self).__qualname__, seconds / calls)  # from here on it repeats
        return out


def cut(model: nn.Module) -> nn.Module:
    """Give `model` (in place) the smoke run's repeating forward (`_Repeats`), and forget
    what it repeated before (a model trained again gets fresh outputs). The class keeps its
    name, so a checkpoint's identity is unchanged. Returns the model."""
    cls = type(model)
    if not issubclass(cls, _Repeats):
        model.__class__ = type(cls.__name__, (_Repeats, cls),
                               {"__qualname__": cls.__qualname__, "__module__": cls.__module__})
    model._smoke_calls = {}
    return model


def _log(name: str, pace: float) -> None:
    """One line per repeating network into $BOOK_SMOKE_LOG, if set (tests/colab_run.py)."""
    path = os.environ.get("BOOK_SMOKE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"repeats\t{name}\t{pace:.3f}\n")
