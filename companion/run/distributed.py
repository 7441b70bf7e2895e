"""`fit` as one of several processes under torchrun, with PyTorch's own engine.

    torchrun --nproc_per_node=4 -m companion ddpm --profile gpu

Under torchrun (its RANK and WORLD_SIZE, with more than one process) `fit` joins the
process group (NCCL on CUDA, gloo on the CPU) and trains through DistributedDataParallel:
every rank takes its share of each global batch, DDP averages the gradients, and the few
other things the ranks must agree on go through torch.distributed collectives: the order
of the examples (rank 0's), the logged metrics (their mean), when to save and when to stop
(any rank's signal stops all of them after the same step), and every rank's random state
(gathered into rank 0's checkpoint). Without torchrun's environment nothing here runs.

Nothing waits for ever. Before the first step the ranks compare what must agree (the batch
size, the step count, whether there is a checkpoint, the data's size and a checksum of
sampled rows, the model's class and module tree, the optimizer, the EMA, the config) and
all fail, naming the difference, when it does not (`Ranks.agree`). Every collective,
joining the group included, gives up after BOOK_DIST_TIMEOUT seconds (TIMEOUT, 10 minutes,
under torchrun; JOIN_TIMEOUT, 1 minute, when RANK and WORLD_SIZE were left in the shell of
a plain `python`) with an error saying where it waited and for what.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class _Dispatch(nn.Module):
    """Routes every call a loss function makes (model(x), model.elbo_terms(x), ...) through
    one forward, so that DDP sees each of them: DDP averages the gradients of what its
    forward computed, and a method called beside it would train each rank on its own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, name: str, *args, **kwargs):
        return getattr(self.model, name)(*args, **kwargs)


class Replica:
    """What the loss function gets for `model` under DDP: calls go through DDP, other
    attributes (model.latent_dims, model.config) are the model's own."""

    def __init__(self, model: nn.Module, ddp: DistributedDataParallel):
        self._model, self._ddp = model, ddp

    def __call__(self, *args, **kwargs):
        return self._ddp("__call__", *args, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self._model, name)
        if callable(value) and getattr(value, "__self__", None) is self._model:
            return lambda *args, **kwargs: self._ddp(name, *args, **kwargs)
        return value


TIMEOUT = 600.0  # seconds a rank waits for the others under torchrun (BOOK_DIST_TIMEOUT)
JOIN_TIMEOUT = 60.0  # ... for ranks to join when torchrun did not start this process
TIMEOUT_VAR = "BOOK_DIST_TIMEOUT"


def timeout_seconds(default: float = TIMEOUT) -> float:
    """$BOOK_DIST_TIMEOUT (seconds > 0), else `default`."""
    raw = os.environ.get(TIMEOUT_VAR, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{TIMEOUT_VAR}={raw!r} must be a number of seconds > 0 (how long "
                         "a rank waits for the others before it gives up)")
    return value


class RanksDisagreeError(RuntimeError):
    """The ranks of a torchrun job were given different settings or data."""


class Ranks:
    """This process's place among the ranks of a torchrun job, and the collectives fit uses."""

    def __init__(self, rank: int, world: int, device: torch.device,
                 timeout: float = TIMEOUT):
        self.rank, self.world, self.device, self.timeout = rank, world, device, timeout

    @contextlib.contextmanager
    def waiting(self, what: str):
        """Around a collective: its timeout (or a rank gone) becomes an error saying where
        this rank waited, for how long, and what to do."""
        try:
            yield
        except RuntimeError as err:
            text = str(err)
            if "imed out" not in text and "onnection" not in text and "peer" not in text:
                raise
            why = (f"waited {self.timeout:g} s for" if "imed out" in text
                   else "lost its connection to")
            raise RuntimeError(
                f"rank {self.rank} of {self.world} {why} the other ranks at {what} and "
                f"gave up: another rank stopped, failed or is much slower (its own error, "
                f"above or in its log, says why). {TIMEOUT_VAR} sets how long a rank waits "
                f"(now {self.timeout:g} s). ({text.strip()[:200]})") from err

    def agree(self, mine: dict) -> None:
        """Raise RanksDisagreeError on every rank unless every rank's `mine` is the same
        (floats to 1e-6 relative, as a checkpoint's identity)."""
        from .checkpoint import same_value

        every = self.gather(mine, "the check that the ranks agree")
        diffs = []
        for key in every[0]:
            values = [r.get(key) for r in every]
            odd = [r for r, v in enumerate(values) if not same_value(v, values[0])]
            if odd:
                diffs.append(f"{key}: {_difference(key, values[0], values[odd[0]], odd[0])}")
        if diffs:
            raise RanksDisagreeError(
                "the ranks disagree on what must be the same on every rank (each runs the "
                "same fit on the same data):\n  " + "\n  ".join(diffs))

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def replica(self, model: nn.Module) -> Replica:
        """The model wrapped in DDP (which copies rank 0's weights to every rank)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return Replica(model, DistributedDataParallel(_Dispatch(model), device_ids=ids))

    def share(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's part of a global batch `idx`, and the weight that makes the DDP mean
        of the ranks' batch means the global batch's mean (1 when the shares are equal)."""
        mine = idx.tensor_split(self.world)[self.rank]
        return mine, len(mine) * self.world / len(idx)

    def same_order(self, order: torch.Tensor) -> torch.Tensor:
        """Rank 0's order of the examples, on every rank."""
        with self.waiting("the order of the examples"):
            dist.broadcast(order, src=0)
        return order

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        with self.waiting("the mean of the logged losses"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        with self.waiting("the end of a step (when to save, whether to stop)"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather(self, obj, what: str = "a gather of every rank's state") -> list:
        """Every rank's `obj`, in rank order (`what`: the wait's name in a timeout's error)."""
        out = [None] * self.world
        with self.waiting(what):
            dist.all_gather_object(out, obj)
        return out

    def from_leader(self, obj):
        """Rank 0's `obj` on every rank."""
        box = [obj]
        with self.waiting("rank 0's checkpoint path"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, what: str = "a barrier") -> None:
        with self.waiting(what):
            dist.barrier()

    def check_in_step(self, model: nn.Module, step: int) -> None:
        """Raise unless every rank holds the same weights (after a step through DDP)."""
        total = sum(p.detach().double().sum() for p in model.parameters())
        t = torch.stack([total, -total]).to(self.device)
        with self.waiting(f"the check of the weights after step {step}"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if float(t[0]) != -float(t[1]):
            raise RuntimeError(
                f"after step {step} the ranks hold different weights: the loss function "
                "reaches the model in a way DDP does not see (e.g. through a sub-module's "
                "own method: model.encoder(x)). Call the model, or its methods, directly.")


def _torchrun_world() -> tuple[int, int] | None:
    """(rank, world size) under torchrun with several processes, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ValueError(f"RANK={os.environ['RANK']!r} and WORLD_SIZE="
                         f"{os.environ['WORLD_SIZE']!r} must be whole numbers (torchrun "
                         "sets them; unset both to train in one process)") from None
    if world > 1 and not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} for WORLD_SIZE={world}: "
                         "torchrun numbers ranks from 0; unset RANK and WORLD_SIZE to train "
                         "in one process")
    return (rank, world) if world > 1 else None


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_RESTART_COUNT" in os.environ


def join(device: torch.device) -> Ranks | None:
    """This process's Ranks under torchrun with several processes (joining the process
    group: NCCL on CUDA, gloo otherwise, with the module's timeout), else None: fit trains
    alone. RANK and WORLD_SIZE without torchrun (left in the shell) are said before the
    wait, which gives up after JOIN_TIMEOUT seconds."""
    place = _torchrun_world()
    if place is None:
        return None
    rank, world = place
    timeout = timeout_seconds(TIMEOUT if _under_torchrun() else JOIN_TIMEOUT)
    if not dist.is_initialized():
        if not _under_torchrun():
            where = (f"{os.environ.get('MASTER_ADDR', '?')}:"
                     f"{os.environ.get('MASTER_PORT', '?')}")
            print(f"RANK={rank} and WORLD_SIZE={world} are set, so fit trains as rank {rank} "
                  f"of {world} processes meeting at {where}; waiting up to {timeout:g} s "
                  f"({TIMEOUT_VAR}) for the others. Not meant? Unset RANK and WORLD_SIZE "
                  "to train in one process.", file=sys.stderr, flush=True)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as err:  # DistStoreError and the like
            raise RuntimeError(
                f"rank {rank} of WORLD_SIZE={world} waited {timeout:g} s for the other ranks "
                f"to join and gave up ({str(err).strip()[:200]}). Start all {world} with "
                f"torchrun --nproc_per_node={world}, or unset RANK and WORLD_SIZE to train in "
                f"one process; {TIMEOUT_VAR} sets the wait.") from err
        atexit.register(_leave)
    return Ranks(dist.get_rank(), dist.get_world_size(), device, timeout)


def what_must_agree(ident: dict, tensors, steps: int, checkpoint) -> dict:
    """What `Ranks.agree` compares: fit's identity of the run (model, module tree, config,
    optimizer, EMA, batch size), the step count, whether it keeps a checkpoint, and, in
    place of the identity's data fingerprint (which reads every row), each data tensor's
    shape, dtype and checksums of 64 sampled rows."""
    from .checkpoint import fingerprint

    data = []
    for t in tensors:
        n = t.shape[0]
        rows = torch.linspace(0, n - 1, min(n, 64)).round().long().to(t.device)
        data.append({k: v for k, v in fingerprint([t[rows]])[0].items() if k != "rows"}
                    | {"shape": list(t.shape)})
    return {**ident, "steps": int(steps), "checkpoint": checkpoint is not None, "data": data}


def _difference(key: str, first, other, rank: int) -> str:
    """How rank `rank`'s `key` differs from rank 0's, in a line."""
    if key == "data":
        shapes = [[d.get("shape") for d in v] for v in (first, other)]
        if shapes[0] == shapes[1]:
            return (f"rank {rank} has other values than rank 0 (both of shape "
                    f"{', '.join(map(str, shapes[0]))}): another seed, subset or order?")
        return f"rank 0 has shape {shapes[0]}, rank {rank} {shapes[1]}"
    if key == "structure":
        pairs = [(a, b) for a, b in zip(first, other, strict=False) if a != b]
        if pairs:
            return f"rank 0 has {pairs[0][0]!r}, rank {rank} {pairs[0][1]!r}"
    return f"rank 0 has {_short(first)}, rank {rank} {_short(other)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device() -> torch.device | None:
    """The GPU of this rank under torchrun (LOCAL_RANK), made the current one; else None."""
    if _torchrun_world() is None or not torch.cuda.is_available():
        return None
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device
