"""Distributed training: start N processes (or join torchrun's), set up and tear down the
process group (NCCL on GPU, gloo on CPU), and check that ranks agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def launched_by_torchrun() -> bool:
    """True when torchrun (or torch.distributed.launch) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def setup_dist(rank: int, world_size: int, master_port: int | None = None,
               use_cuda: bool | None = None) -> torch.device:
    """Joins the process group and returns this rank's device.

    With world_size 1 and no torchrun, nothing is initialised.
    """
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if world_size > 1 or launched_by_torchrun():
        if not launched_by_torchrun():
            os.environ.setdefault("MASTER_ADDR", "localhost")
            os.environ["MASTER_PORT"] = str(master_port or 12354)
        backend = "nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=world_size)
        except RuntimeError as e:
            if "EADDRINUSE" in str(e) or "address already in use" in str(e).lower():
                raise OSError(f"--master-port {os.environ['MASTER_PORT']} is already in use; "
                              "choose another port") from e
            raise
        logging.info(f"Joined process group: rank {rank} of {world_size} ({backend})")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU (where rank 0 of a run trains)."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def cleanup_dist() -> None:
    """Leaves the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launch(fn: Callable[[int, int, Any], None], world_size: int, args: Any) -> None:
    """Runs ``fn(rank, world_size, args)``: in this process when world_size is 1 or
    torchrun started us, else in ``world_size`` spawned processes."""
    if launched_by_torchrun():
        fn(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    elif world_size > 1:
        mp.spawn(fn, args=(world_size, args), nprocs=world_size, join=True)
    else:
        fn(0, 1, args)


def configure_threads(world_size: int) -> int:
    """One intra-op thread per rank when several ranks share a machine (as icefall sets),
    unless the user chose with OMP_NUM_THREADS. Returns the number of threads in use."""
    if (world_size > 1 or launched_by_torchrun()) and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    threads = torch.get_num_threads()
    logging.info(f"Using {threads} intra-op thread(s) per rank")
    return threads


def parameter_checksums(model: torch.nn.Module) -> torch.Tensor:
    """(2 * P,) float64: the sum and the sum of squares of each of the P parameters."""
    sums = [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
            for p in model.parameters()]
    return torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64)


def max_checksum_difference_across_ranks(model: torch.nn.Module) -> float:
    """Largest difference of any parameter checksum (:func:`parameter_checksums`) between
    ranks: 0.0 when the ranks hold the same model, and without a process group. Every rank
    must call it; it exchanges 2 numbers per parameter tensor, not the parameters."""
    local = parameter_checksums(model)
    if get_world_size() == 1:
        return 0.0
    high, low = local.clone(), local.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max()) if local.numel() else 0.0
