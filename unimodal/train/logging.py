"""Run logging: rank 0 writes text to stdout + `run_dir/train.log`, metrics to `run_dir/metrics.jsonl`
(and TensorBoard when it is installed). Stops the run on a non-finite loss: a NaN never recovers, and every later step would be wasted.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from unimodal.config import Config, atomic_write_text
from unimodal.utils.distributed import DistInfo


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message is one line naming the step."""


def check_finite(loss: torch.Tensor | float, step: int, name: str = "loss") -> None:
    """Raise NonFiniteLossError on every rank if the loss is non-finite on *any* rank.

    The flag is all-reduced so that no rank is left waiting in a collective while another stops.
    """
    value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
    bad = not math.isfinite(value)
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        device = loss.device if isinstance(loss, torch.Tensor) and tdist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if bad else 0.0], device=device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        if flag.item() > 0 and not bad:
            raise NonFiniteLossError(f"non-finite {name} on another rank at step {step}; stopping")
    if bad:
        raise NonFiniteLossError(f"non-finite {name} ({value}) at step {step}; stopping")


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated on `device`, or this process's peak RSS on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Throughput:
    """Samples per second between successive `rate()` calls."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._n = 0

    def update(self, n: int) -> None:
        self._n += n

    def rate(self) -> float:
        now = time.perf_counter()
        r = self._n / max(now - self._t, 1e-9)
        self._t, self._n = now, 0
        return r


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, dist: DistInfo | None = None, name: str = "unimodal.train",
                 tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.dist = dist or DistInfo()
        self.is_main = self.dist.is_main
        self.log = logging.getLogger(f"{name}.rank{self.dist.rank}")
        self.log.propagate = False
        self.log.handlers.clear()
        self._tb = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
            for h in (logging.StreamHandler(sys.stdout), logging.FileHandler(self.run_dir / "train.log")):
                h.setFormatter(fmt)
                self.log.addHandler(h)
            self.log.setLevel(logging.INFO)
            if tensorboard and importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        else:
            self.log.addHandler(logging.NullHandler())
            self.log.setLevel(logging.ERROR)

    def info(self, msg: str) -> None:
        self.log.info(msg)

    def warning(self, msg: str) -> None:
        self.log.warning(msg)

    def metrics(self, step: int, **values: float) -> dict[str, Any]:
        """Append one JSON line {step, time, peak_mem_gb, **values} (rank 0) and echo it compactly.

        Values should already be averaged over ranks (`all_reduce_mean`) where that matters.
        """
        row = {"step": int(step), "time": round(time.time(), 3),
               "peak_mem_gb": round(peak_memory_gb(self.dist.device), 4)}
        for k, v in values.items():
            row[k] = float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else v
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in row.items() if k != "time")
            self.log.info(shown)
            if self._tb is not None:
                for k, v in row.items():
                    if k not in ("step", "time") and isinstance(v, (int, float)):
                        self._tb.add_scalar(k, v, step)
        return row

    def rewind(self, step: int) -> None:
        """On resume from checkpoint `step` (0: a fresh start), drop the metrics rows a killed run
        wrote after it, and a last row the kill cut short (rank 0). The file is replaced atomically,
        so every step appears once whatever the sequence of kills."""
        path = self.run_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        text = path.read_text()
        keep = [line for line in text.splitlines() if (s := _step_of(line)) is not None and s <= step]
        new = "".join(line + "\n" for line in keep)
        if new != text:
            atomic_write_text(path, new)

    def progress(self, total: int, initial: int = 0, desc: str = "train"):
        """A tqdm bar on rank 0 when stdout is a terminal; a disabled bar elsewhere."""
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                    disable=not (self.is_main and sys.stdout.isatty()))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)


def _step_of(line: str) -> int | None:
    """The step of a metrics row; None for a blank or torn line (a process killed mid-write)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return int(row.get("step", 0)) if isinstance(row, dict) else None


def save_resolved_config(run_dir: str | os.PathLike, config: Config, logger: RunLogger | None = None,
                         is_main: bool = True) -> Path:
    """Write `run_dir/config.json` (rank 0). On a rerun with changed settings, log which keys changed."""
    path = Path(run_dir) / "config.json"
    if is_main:
        if logger is not None and path.is_file():
            old = _flatten(json.loads(path.read_text()))
            new = _flatten(json.loads(config.to_json_string()))
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if changed:
                logger.warning(f"config differs from the previous run in {run_dir}: {changed}")
        config.save_json(path)
    return path


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
