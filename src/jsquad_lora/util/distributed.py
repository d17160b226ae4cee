"""Several processes, one job: ranks, barriers and the main-process rule, on accelerate's PartialState.

`torchrun --nproc_per_node N -m jsquad_lora run ...` and `accelerate launch --num_processes N -m
jsquad_lora run ...` set RANK / WORLD_SIZE; the first call to `state()` joins the process group
(gloo on CPUs, NCCL on GPUs) that the Trainer then reuses. A 1-process run never touches
torch.distributed. Only the main process (rank 0) writes run files; the others wait at barriers.
A failure on one rank exits that process; torchrun's agent then stops the others (no hang), and the
failing rank's message is on stderr.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def state():
    """accelerate's PartialState (joins the process group on first use)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # without cpu=True accelerate sees no CPU group


def init() -> None:
    """Join the process group now when there are several processes (no-op for one)."""
    if world_size() > 1:
        state()


def shutdown() -> None:
    """Leave the process group together, at the end of a job: a rank that exits while the others still
    use the group can abort in gloo's teardown ("terminate called without an active exception")."""
    if world_size() > 1:
        import torch.distributed

        if torch.distributed.is_initialized():
            barrier()
            torch.distributed.destroy_process_group()


def barrier() -> None:
    """Every rank waits here for the others (no-op for one process)."""
    if world_size() > 1:
        state().wait_for_everyone()


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (it builds caches and files); the others after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def summed(*counts: int) -> tuple[int, ...]:
    """`counts` summed over the processes (as they are, for one process)."""
    if world_size() == 1:
        return counts
    from accelerate.utils import gather_object

    gathered = gather_object([counts])
    return tuple(sum(c[k] for c in gathered) for k in range(len(counts)))
