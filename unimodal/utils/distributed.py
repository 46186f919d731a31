"""Process-group setup and the few collectives the training loops and data caches use.

Launch with ``torchrun --nproc_per_node N`` or the ``deepspeed`` launcher (both set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``); with none of those set the
process runs alone and every collective here is a no-op. The backend is NCCL when CUDA is
available and gloo otherwise, so the same command runs on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import random
import socket

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group described by the launcher's environment, or run alone.

    `device` forces "cpu" or "cuda"; by default CUDA is used when available. Safe to call twice.
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **({"device_id": dev} if use_cuda else {}),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def ensure_process_group(info: DistInfo) -> None:
    """Create a one-process group when running alone: DeepSpeed needs a group even for one rank."""
    if dist.is_initialized():
        return
    if info.world_size != 1:
        raise RuntimeError("ensure_process_group: a multi-process run must call init_distributed first")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:  # a free port; the tiny race with another process is harmless in practice
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend="nccl" if info.device.type == "cuda" else "gloo", rank=0, world_size=1)


def cleanup() -> None:
    """Destroy every process group. Unreachable engines and wrappers are collected first, while the
    groups they communicated over still exist (see TrainEngine.close)."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches the process groups it made in module globals and never drops them, so a
    second stage in the same process (tests, notebooks) would reuse destroyed groups."""
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP", "_MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE",
                 "_MPU_TENSOR_MODEL_PARALLEL_RANK"):
        setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        setattr(groups, name, {})
    comm = sys.modules.get("deepspeed.comm.comm")
    if comm is not None:
        comm.cdb = None


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a new tensor; the input is untouched). Identity when running alone."""
    out = tensor.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s value of a picklable object on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_gradients(module: torch.nn.Module) -> None:
    """Average `.grad` over ranks for a module trained outside DDP/DeepSpeed (e.g. a discriminator).

    The RAE reference never averaged its discriminator's gradients, so each rank drifted apart.
    Every rank must call this with the same module; parameters without a gradient get zeros so the
    collective stays aligned across ranks.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch with `seed + rank`, so each rank draws different noise,
    yet the whole run is reproducible from one seed. Returns the seed used."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s
