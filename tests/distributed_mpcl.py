"""Run by tests/test_distributed.py under torchrun (2 Gloo processes): MPCL on rows gathered across ranks.

Rank r holds its share of one fixed batch (7 rows: 4 on rank 0, 3 on rank 1, so the shares differ in size),
gathers it with `gather_rows` and takes the loss; then again with rank 1 giving no rows (a placeholder
micro-batch). Writes OUT/rank<r>.pt: the losses and the gradients of its own rows, divided by the world size
(as DistributedDataParallel's average does), for the test to compare with MPCL on the whole batch.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from crab_rt.train.distributed import gather_rows
from crab_rt.train.losses import mpcl_loss

SHARES = ((0, 4), (4, 7))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return torch.randn(7, 5, generator=generator), torch.tensor([0, 1, 2, 0, 1, 1, 3])


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    rows, labels = batch()
    start, stop = SHARES[rank]
    result = {}
    for name, count in (("shared", stop - start), ("placeholder", stop - start if rank == 0 else 0)):
        mine = rows[start:stop].clone().requires_grad_(True)
        loss = mpcl_loss(gather_rows(mine, count), gather_rows(labels[start:stop], count), 0.1)
        loss.backward()
        result[name] = {"loss": loss.item(), "grad": mine.grad / size}
    torch.save(result, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
