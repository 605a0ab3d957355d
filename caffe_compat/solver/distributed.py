"""Data-parallel training with PyTorch's own engine: torchrun / DistributedDataParallel.

Caffe's multi-GPU semantics: the prototxt ``batch_size`` is per GPU (global batch = world size x
batch), each solver reads its own share of the records, gradients are summed and divided by the
number of solvers before the update, and only the root solver tests, logs and snapshots. Here a
rank is a process: launched by ``torchrun`` (multi-node too: the env vars say where we are) or,
for ``--gpu 0,1`` without torchrun, spawned by :func:`launch`. Backend: NCCL on GPUs, gloo on CPU.

    torchrun --nproc_per_node 8 .venv/bin/caffe-compat train -solver solver.prototxt -gpu all
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 .venv/bin/caffe-compat train ...
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from caffe_compat.errors import CaffeCompatError


@dataclass(frozen=True)
class Rank:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_gpus(spec: str | None) -> list[int]:
    """Caffe's ``-gpu`` flag: ``0``, ``0,1`` or ``all``; empty means CPU."""
    if not spec:
        return []
    available = torch.cuda.device_count()
    if spec == "all":
        if available == 0:
            raise CaffeCompatError("--gpu all: no CUDA device is visible")
        return list(range(available))
    try:
        ids = [int(x) for x in spec.split(",") if x.strip() != ""]
    except ValueError:
        raise CaffeCompatError(f"--gpu '{spec}': expected device ids like 0 or 0,1, or 'all'") from None
    bad = [i for i in ids if i < 0 or i >= available]
    if bad:
        raise CaffeCompatError(f"--gpu '{spec}': device {bad[0]} does not exist ({available} CUDA device(s) visible)")
    if len(set(ids)) != len(ids):
        raise CaffeCompatError(f"--gpu '{spec}': a device is listed twice")
    return ids


def init_rank(gpus: list[int]) -> Rank:
    """Join the process group when launched by torchrun (or :func:`launch`); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if gpus and len(gpus) < local_world:  # torchrun with more local ranks than named GPUs: one each
        gpus = list(range(torch.cuda.device_count()))
    if gpus:
        device_id = gpus[local % len(gpus)] if world > 1 else gpus[0]
        torch.cuda.set_device(device_id)
        device = torch.device("cuda", device_id)
    else:
        device = torch.device("cpu")
        if local_world > 1:  # CPU ranks on one machine share its cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Rank(rank=rank, world_size=world, local_rank=local, device=device)


def wrap(module: torch.nn.Module, where: Rank) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (gradients averaged over ranks, as Caffe's NCCL solver)."""
    if not where.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [where.device.index] if where.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def in_group() -> bool:
    """Whether this process has joined a process group already."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (a no-op alone): ranks that leave together do not abort each other,
    as gloo can when one tears its connections down while another still uses them."""
    if in_group():
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group while the interpreter is whole (not at exit, where gloo's
    threads may still hold tensors and abort the process)."""
    if in_group():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(local_rank),
        LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(world),
    )
    try:
        fn(*args)
    finally:
        shutdown()


def launch(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``world_size`` local processes joined as one job (Caffe's ``-gpu 0,1``)."""
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(world_size, _free_port(), fn, args), nprocs=world_size, join=True)
