"""Data parallelism for `crab-rt train`: the process world, each rank's share of an epoch, and the collectives.

`crab-rt train` run by `torchrun` (or by `crab-rt train --nproc-per-node N`, which starts torchrun's agent) finds
its rank in the environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`) and joins a process group: NCCL on CUDA, Gloo
on the CPU. The recipe's global batch does not change with the world size: `optim.batch_size` samples per
optimizer step, in micro-batches of `batch_size / grad_accum_steps`, of which each rank takes every
`world_size`-th (so `grad_accum_steps` must divide by the world size).

What the ranks see is defined without the world size (`epoch_plan`): one seeded permutation per epoch, cut
into optimizer steps, each cut into micro-batches; micro-batch j of a step goes to rank j % world_size. Each
micro-batch's random stream (dropout) is seeded from (run seed, epoch, micro-batch number), so any world size,
and a resume with another one, trains the same model as one process (within float summation order).
A rank with no micro-batch left in an epoch's last step runs a zero-weight one, so every rank takes part in
every gradient reduction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from crab_rt.errors import ConfigError

__all__ = [
    "World", "MicroBatch", "epoch_plan", "local_accumulation", "micro_seed", "join_world", "leave_world",
    "gather_rows", "sum_across", "gather_objects", "broadcast_object",
]

# How long a rank waits in a collective for the others before it fails (a rank stuck, not dead: a dead one's
# Gloo/NCCL connection fails at once and torchrun stops the job).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1, not launched)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (its environment variables are set)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, progress bars and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched and self.world_size > 1

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> World:
        """Read torchrun's `RANK`, `WORLD_SIZE` and `LOCAL_RANK`; without `WORLD_SIZE`, one process.

        Raises:
            ConfigError: a variable is not an integer or out of range.
        """
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        values = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            raw = env.get(name, "0")
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None
        rank, size, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
        if size < 1 or not 0 <= rank < size or local < 0:
            raise ConfigError(f"torchrun environment out of range: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local}")
        return cls(rank=rank, world_size=size, local_rank=local, launched=True)

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def local_accumulation(grad_accum_steps: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step, keeping the recipe's global batch.

    Raises:
        ConfigError: `grad_accum_steps` does not divide among `world_size` processes.
    """
    if grad_accum_steps % world_size:
        choices = [n for n in range(1, grad_accum_steps + 1) if grad_accum_steps % n == 0]
        raise ConfigError(
            f"optim.grad_accum_steps={grad_accum_steps} micro-batches per step cannot be shared by {world_size} "
            f"processes (the global batch stays the recipe's); use a world size in {choices}, or set "
            f"optim.grad_accum_steps and optim.batch_size to a multiple of {world_size}"
        )
    return grad_accum_steps // world_size


@dataclass(frozen=True)
class MicroBatch:
    """One of this rank's forward/backward passes in an epoch.

    `number` counts the epoch's micro-batches over all ranks (it seeds the pass's random stream); `weight` is 0
    for a placeholder (a rank with nothing left in the epoch's last step reruns the step's first micro-batch so
    that it takes part in the gradient reduction, and contributes nothing).
    """

    indices: tuple[int, ...]
    number: int
    step: int
    last_in_step: bool
    weight: float


def epoch_plan(order: Sequence[int], batch_size: int, micro_batch_size: int, world: World) -> list[MicroBatch]:
    """This rank's micro-batches for an epoch over `order` (the epoch's permutation of the dataset).

    Steps are `batch_size` consecutive items of `order` (the last may be shorter), micro-batches
    `micro_batch_size` consecutive items of a step; micro-batch j of a step goes to rank j % world_size. Every
    rank gets the same number of passes per step (placeholders fill the gaps).
    """
    plan: list[MicroBatch] = []
    number = 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        items = list(order[start:start + batch_size])
        micros = [tuple(items[i:i + micro_batch_size]) for i in range(0, len(items), micro_batch_size)]
        slots = math.ceil(len(micros) / world.world_size)
        for slot in range(slots):
            j = slot * world.world_size + world.rank
            real = j < len(micros)
            plan.append(MicroBatch(
                indices=micros[j] if real else micros[0], number=number + (j if real else 0), step=step,
                last_in_step=slot == slots - 1, weight=1.0 if real else 0.0,
            ))
        number += len(micros)
    return plan


def micro_seed(seed: int, epoch: int, number: int) -> int:
    """The random seed of micro-batch `number` of `epoch` (independent of the world size)."""
    return int(np.random.SeedSequence([seed, epoch, number]).generate_state(1)[0])


def join_world(world: World, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, Gloo otherwise); a no-op for one process."""
    if not world.distributed:
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)


def leave_world(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _all_gather_padded(rows: torch.Tensor, count: int) -> tuple[torch.Tensor, list[int], int]:
    """All ranks' first `count` rows, concatenated, with every rank's count and the padded length."""
    import torch.distributed as dist

    size = dist.get_world_size()
    counts = torch.tensor([count], dtype=torch.long, device=rows.device)
    all_counts = [torch.zeros_like(counts) for _ in range(size)]
    dist.all_gather(all_counts, counts)
    counts_list = [int(c.item()) for c in all_counts]
    longest = max(max(counts_list), 1)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[:count] = rows[:count]
    parts = [torch.zeros_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, counts_list)]), counts_list, longest


class _GatherRows(torch.autograd.Function):
    """All-gather of rows with a backward that returns this rank's share of the gradient summed over ranks.

    Every rank computes the same loss on the gathered rows, so that sum is the world size times the loss's
    gradient, which DDP's average over ranks turns back into the loss's gradient.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, count: int) -> torch.Tensor:
        import torch.distributed as dist

        gathered, ctx.counts, ctx.longest = _all_gather_padded(rows, count)
        ctx.rank, ctx.rows_shape = dist.get_rank(), rows.shape
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        padded = grad.new_zeros((len(ctx.counts), ctx.longest, *grad.shape[1:]))
        start = 0
        for r, n in enumerate(ctx.counts):
            padded[r, :n] = grad[start:start + n]
            start += n
        dist.all_reduce(padded)
        mine = grad.new_zeros(ctx.rows_shape)
        n = ctx.counts[ctx.rank]
        mine[:n] = padded[ctx.rank, :n]
        return mine, None


def gather_rows(rows: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Every rank's first `count` rows of `rows` (default: all), concatenated in rank order.

    Float rows keep their gradients (see `_GatherRows`); integer rows (labels) are gathered without. A
    collective: every rank calls it, with its own count (0 for a placeholder micro-batch).
    """
    count = rows.shape[0] if count is None else count
    if rows.is_floating_point():
        return _GatherRows.apply(rows, count)
    return _all_gather_padded(rows, count)[0]


def sum_across(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` over all ranks (the values themselves for one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: object) -> list:
    """Every rank's `obj`, in rank order (`[obj]` for one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank (`obj` itself for one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
