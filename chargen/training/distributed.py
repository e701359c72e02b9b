"""Data-parallel training under torchrun: PyTorch's DistributedDataParallel, nothing home-made.

    torchrun --nproc_per_node=4 -m chargen train corpus.txt ...

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address in their environment; `setup` finds them. The backend is NCCL on CUDA
and gloo on the CPU. Every process holds the whole model; DDP averages the gradients in the
backward pass, so all of them take the same optimizer step. How the work is split:

    global batch (--batch-size 8) = streams 0..7 of the corpus, laid out as in data.py
    world size 2:   rank 0 trains streams 0-3,  rank 1 trains streams 4-7

The stream layout depends only on the global batch size, never on the number of processes,
so a run can be resumed with a different number of processes: the step count and the window
position carry over, and the saved hidden state (all streams, gathered to rank 0) is handed
out again by stream. Rank 0 alone writes checkpoints, metrics and progress; validation is
split across ranks and the loss sums are added up; a stop (Ctrl-C, SIGTERM, time budget) seen
by any rank is agreed on by all at the next step, and the checkpoint is written.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as torch_dist

from ..errors import UsageError


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        torch_dist.barrier()

    def max(self, *values: float) -> list[float]:
        return self._all_reduce(values, torch_dist.ReduceOp.MAX)

    def sum(self, *values: float) -> list[float]:
        return self._all_reduce(values, torch_dist.ReduceOp.SUM)

    def _all_reduce(self, values: tuple[float, ...], op) -> list[float]:
        """Several scalars reduced across ranks in one call."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t, op=op)
        return t.tolist()

    def gather_streams(self, tensor: torch.Tensor) -> torch.Tensor:
        """(layers, B/world, H) on each rank -> (layers, B, H), streams in rank order."""
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        torch_dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0")) if under_torchrun() else 0


def setup(device_name: str) -> Optional[Dist]:
    """Join the process group torchrun set up (None when not under torchrun)."""
    if not under_torchrun():
        return None
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError("`device` cuda was asked for, but torch sees no CUDA GPU")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started {local_rank + 1}+ processes on this machine but it has "
                             f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node={torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_name in ("auto", "cpu"):
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise UsageError(f"`device` {device_name} is not supported under torchrun; use cuda or cpu")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend, device=device)


def teardown(dist: Optional[Dist], clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits for the others: a rank
    that tore its gloo connections down while rank 0 was still writing its last checkpoint was
    seen to abort at exit ("terminate called without an active exception", SIGABRT). After a
    failure no rank waits (the others may never arrive) and nothing is torn down: the process is
    about to exit, and torchrun stops the rest. The run's objects go first (gc.collect): a
    DistributedDataParallel wrapper caught in a reference cycle would otherwise be freed at
    interpreter exit, after its process group, and abort the same way (seen once more, on a
    fine-tuned run under load, with the barrier in place)."""
    if dist is None or not torch_dist.is_initialized() or not clean:
        return
    gc.collect()
    torch_dist.barrier()
    torch_dist.destroy_process_group()
