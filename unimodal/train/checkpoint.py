"""Resumable training checkpoints: one directory per step holding every piece of state.

Layout of ``run_dir/checkpoints/step_00001234/``::

    COMPLETE                  marker; a directory without it is ignored
    extra_state.pt            the caller's dict (EMA, step, data position, resolved config, ...)
    rng/rank_00000.pt         python / numpy / torch (+ CUDA) RNG states, one file per rank
    engines/<name>.pt         plain engine: model + optimizer state (rank 0 writes it)
    engines/<name>/...        DeepSpeed engine: `save_checkpoint` output incl. ZeRO partitions

Writing is atomic: all ranks write into ``.tmp_step_00001234`` and after a barrier rank 0 adds the
marker and renames it into place, so a crash at any moment leaves the previous checkpoint as the
latest. All ranks must see the same file system (one machine, or a shared mount). Before writing,
the free space is checked against the size of the previous checkpoint; a write that fails removes
its temporary folder, and a full disk is reported as one line (`NoSpaceError`).
"""
from __future__ import annotations

import errno
import math
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as tdist

from unimodal.config import InputError
from unimodal.utils.distributed import barrier, broadcast_object
from unimodal.utils.weights import replace_directory

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_MB = 2**20


class NoSpaceError(InputError):
    """The disk cannot hold the next checkpoint: one line naming the folder and the sizes, printed
    by the CLI as a failed run (exit 1); the remedy is the user's (free space, a larger disk)."""


def _no_space(folder: Path, need: int, free: int) -> NoSpaceError:
    # Rounded so that a small checkpoint never reads "need ~0 MB, have 0 MB".
    return NoSpaceError(f"no space left on {folder}: need ~{math.ceil(need / _MB)} MB, have {free // _MB} MB; "
                        "free some space or point train.run_dir at a larger disk")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _rank_world() -> tuple[int, int]:
    if tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as plain tensors / tuples (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _is_disk_full(error: BaseException, remaining: int, free: int) -> bool:
    """ENOSPC / EDQUOT, or any other write error (torch's "[enforce fail at inline_container.cc]
    unexpected pos", a SafetensorError) raised while the rest of the checkpoint no longer fits."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # The first checkpoint has no size estimate: next to nothing free then means the disk filled up.
    return isinstance(error, Exception) and free < max(remaining, _MB)


def save_checkpoint(run_dir: str | Path, step: int, engines: Mapping[str, Any], extra_state: Mapping[str, Any],
                    keep: int | None = None) -> Path:
    """Write a checkpoint for optimiser step `step`; every rank must call it. Returns its final path.

    `engines` maps a name to a TrainEngine; `extra_state` must hold only tensors and plain Python
    values (it is loaded with weights_only=True). Older complete checkpoints beyond the newest
    `keep` are deleted afterwards (None keeps all). Raises NoSpaceError before writing when the
    free space is below the previous checkpoint's size, or when the disk fills during the write;
    a failed write leaves no temporary folder and the previous checkpoints untouched.
    """
    rank, world = _rank_world()
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    previous = latest_checkpoint(run_dir)
    need = _tree_bytes(previous) if previous is not None else 0   # the best estimate of this one's size
    short = None
    if rank == 0:
        if tmp.exists():  # left by a crash during an earlier attempt at this step
            shutil.rmtree(tmp)
        root.mkdir(parents=True, exist_ok=True)
        free = _free_bytes(root)
        short = (need, free) if free < need else None
    # Decided once, on rank 0, so that every rank stops (none waits at a barrier for the others).
    short = broadcast_object(short)
    if short is not None:
        raise _no_space(root, *short)
    try:
        if rank == 0:
            (tmp / "engines").mkdir(parents=True)
            (tmp / "rng").mkdir()
        barrier()
        for name, engine in engines.items():
            engine.save_to(tmp / "engines", name, is_main=rank == 0)
        torch.save(capture_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
        if rank == 0:
            torch.save({"extra_state": dict(extra_state), "step": step, "world_size": world,
                        "engines": sorted(engines)}, tmp / "extra_state.pt")
        barrier()
        if rank == 0:
            (tmp / MARKER).write_text(f"step {step}\n")
            replace_directory(tmp, final)
    except BaseException as e:
        written = _tree_bytes(tmp) if tmp.is_dir() else 0
        free = _free_bytes(root)    # measured before the partial folder is removed and frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(e, need - written, free):
            raise _no_space(root, max(need, written), free) from e
        raise
    if rank == 0 and keep is not None:
        prune_checkpoints(run_dir, keep)
    barrier()
    return final


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and temporary directories left by crashes.

    Call only when no checkpoint is being written (save_checkpoint calls it between barriers).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    found = list_checkpoints(run_dir)
    for _, path in found[:-keep]:
        shutil.rmtree(path)
    for stale in checkpoint_dir(run_dir).glob(".tmp_step_*"):
        shutil.rmtree(stale)


def resume_run(run_dir: str | Path, engines: Mapping[str, Any], ema: Any, logger: Any) -> tuple[int, int, dict[str, Any]]:
    """What every stage does on start: restore the newest complete checkpoint (engines, EMA, RNG),
    drop metrics rows logged after it, and return (step, data position, extra state);
    (0, 0, {}) for a fresh run, whose metrics rows from runs killed before their first checkpoint
    are dropped too."""
    path = latest_checkpoint(run_dir)
    if path is None:
        logger.rewind(0)
        return 0, 0, {}
    extra = load_checkpoint(path, engines)
    if ema is not None:
        ema.load_state_dict(extra["ema"])
    logger.rewind(extra["step"])
    logger.info(f"resumed from {path} at step {extra['step']}")
    return extra["step"], extra["data_position"], extra


def load_checkpoint(path: str | Path, engines: Mapping[str, Any], restore_rng: bool = True) -> dict[str, Any]:
    """Load every engine's state and this rank's RNG state; return the caller's `extra_state`.

    Restore the RNG last (after building models) so the next random numbers match the run that
    saved it. Every rank must call it.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    meta = torch.load(path / "extra_state.pt", map_location="cpu", weights_only=True)
    if sorted(engines) != meta["engines"]:
        raise ValueError(f"{path} holds engines {meta['engines']}, but {sorted(engines)} were given")
    for name, engine in engines.items():
        engine.load_from(path / "engines", name)
    if restore_rng:
        rank, world = _rank_world()
        rng_file = path / "rng" / f"rank_{rank:05d}.pt"
        if rng_file.is_file():
            restore_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
        else:
            warnings.warn(f"{path} was saved by {meta['world_size']} process(es); rank {rank} of {world} has no "
                          "saved RNG state and keeps its fresh seed", stacklevel=2)
    barrier()
    return meta["extra_state"]
