"""`fit` as one of several processes under torchrun, with PyTorch's own engine.

    torchrun --nproc_per_node=4 -m companion.recipes ddpm --profile gpu

Under torchrun (its RANK and WORLD_SIZE, with more than one process) `fit` joins the
process group (NCCL on CUDA, gloo on the CPU) and trains through DistributedDataParallel:
every rank takes its share of each global batch, DDP averages the gradients, and the few
other things the ranks must agree on go through torch.distributed collectives: the order
of the examples (rank 0's), the logged metrics (their mean), when to save and when to stop
(any rank's signal stops all of them after the same step), and every rank's random state
(gathered into rank 0's checkpoint). Without torchrun's environment nothing here runs.
"""

from __future__ import annotations

import atexit
import os

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


class Ranks:
    """This process's place among the ranks of a torchrun job, and the collectives fit uses."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

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
        dist.broadcast(order, src=0)
        return order

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order."""
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_leader(self, obj):
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def check_in_step(self, model: nn.Module, step: int) -> None:
        """Raise unless every rank holds the same weights (after a step through DDP)."""
        total = sum(p.detach().double().sum() for p in model.parameters())
        t = torch.stack([total, -total]).to(self.device)
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
    return (rank, world) if world > 1 else None


def join(device: torch.device) -> Ranks | None:
    """This process's Ranks under torchrun with several processes (joining the process
    group: NCCL on CUDA, gloo otherwise), else None: fit trains alone."""
    place = _torchrun_world()
    if place is None:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        atexit.register(_leave)
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


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
