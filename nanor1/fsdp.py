"""Distributed training in one place: rank / world size, process-group setup, FSDP2 sharding, sharded checkpoints.

The rest of the package asks this file "which rank am I, how many are we, am I the one that prints". Every helper
works unchanged in a single process (torch.distributed not initialised): rank 0, world size 1, collectives no-ops.
"""

import os

import torch
import torch.distributed as dist


# ---- who am I ----

def is_distributed() -> bool:
    """True once a process group exists (torchrun + init_distributed); collectives are no-ops otherwise."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks in the process group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, and in any single-process run. Prints and file writes happen only where this holds."""
    if is_distributed():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0        # torchrun sets RANK before init_process_group


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op in one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor
