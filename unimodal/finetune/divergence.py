"""Divergence detection (loss / gradient-norm spikes against a running median) and rollback.

`DivergenceMonitor.observe` sees every optimiser step's loss (mean over ranks) and global gradient
norm. A step is a spike when the loss exceeds `loss_factor` x the median of the last `window`
accepted losses, or the gradient norm exceeds `grad_factor` x their median, or either is not
finite. Spikes are not added to the history; `patience` consecutive spikes raise `Diverged`.

The finetune driver (`unimodal.finetune.run`) answers `Diverged` by a rollback: the checkpoints
written from the first spike on are deleted, the event is appended to ``run_dir/rollbacks.json``,
and the stage restarts from the newest remaining checkpoint with every learning rate multiplied
by `lr_factor` per rollback so far. The data order is replayed, not skipped (OPT-style restart
with a lower lr); after `max_rollbacks` rollbacks the run stops with `DivergenceError`.
The monitor's history lives in every checkpoint, so a resumed run decides exactly as an
uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

from unimodal.config import Config, ConfigError, atomic_write_text
from unimodal.train.checkpoint import list_checkpoints

ROLLBACKS_FILE = "rollbacks.json"


@dataclasses.dataclass
class DivergenceConfig(Config):
    enabled: bool = True
    window: int = 50              # running median over the last `window` accepted steps
    min_history: int = 10         # steps observed before any spike can be called
    loss_factor: float = 3.0      # loss > factor x median loss -> spike
    grad_factor: float = 10.0     # grad norm > factor x median grad norm -> spike (0 = loss only)
    patience: int = 3             # consecutive spikes that count as divergence
    max_rollbacks: int = 3        # rollbacks before the run stops with an error
    lr_factor: float = 0.5        # every learning rate x this at each rollback

    def __post_init__(self) -> None:
        for name in ("window", "min_history", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"divergence.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_history > self.window:
            raise ConfigError(f"divergence.min_history ({self.min_history}) must be <= divergence.window ({self.window})")
        if self.loss_factor <= 1:
            raise ConfigError(f"divergence.loss_factor must be > 1, got {self.loss_factor}")
        if self.grad_factor != 0 and self.grad_factor <= 1:
            raise ConfigError(f"divergence.grad_factor must be > 1 or 0 (off), got {self.grad_factor}")
        if self.max_rollbacks < 0:
            raise ConfigError(f"divergence.max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"divergence.lr_factor must be in (0, 1], got {self.lr_factor}")


class Diverged(Exception):
    """Raised out of the stage loop; `event` says where and why (first_bad_step, step, reason)."""

    def __init__(self, event: dict[str, Any]):
        super().__init__(event["reason"])
        self.event = event


class DivergenceError(RuntimeError):
    """The run diverged more often than `divergence.max_rollbacks` allows; one line saying what to do."""


class DivergenceMonitor:
    def __init__(self, cfg: DivergenceConfig):
        self.cfg = cfg
        self.losses: list[float] = []
        self.grads: list[float] = []
        self.streak = 0
        self.first_bad: int | None = None

    def _spike(self, loss: float, grad: float) -> str | None:
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        if not math.isfinite(grad):
            return f"non-finite gradient norm {grad}"
        if len(self.losses) < self.cfg.min_history:
            return None
        med = statistics.median(self.losses)
        if loss > self.cfg.loss_factor * med:
            return f"loss {loss:.4g} > {self.cfg.loss_factor} x running median {med:.4g}"
        if self.cfg.grad_factor:
            gmed = statistics.median(self.grads)
            if grad > self.cfg.grad_factor * gmed:
                return f"gradient norm {grad:.4g} > {self.cfg.grad_factor} x running median {gmed:.4g}"
        return None

    def observe(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Record optimiser step `step`; returns the spike reason (None for a normal step) and
        raises `Diverged` on the `patience`-th spike in a row."""
        reason = self._spike(float(loss), float(grad_norm))
        if reason is None:
            self.streak, self.first_bad = 0, None
            self.losses = (self.losses + [float(loss)])[-self.cfg.window:]
            self.grads = (self.grads + [float(grad_norm)])[-self.cfg.window:]
            return None
        self.streak += 1
        self.first_bad = step if self.first_bad is None else self.first_bad
        if self.streak >= self.cfg.patience:
            raise Diverged({"step": step, "first_bad_step": self.first_bad, "reason": reason})
        return reason

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grads": list(self.grads), "streak": self.streak,
                "first_bad": self.first_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.grads = [float(v) for v in state["losses"]], [float(v) for v in state["grads"]]
        self.streak, self.first_bad = int(state["streak"]), state["first_bad"]


# -------------------------------------------------------------------------------------------------
def read_rollbacks(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / ROLLBACKS_FILE
    return json.loads(path.read_text())["rollbacks"] if path.is_file() else []


def lr_scale(cfg: DivergenceConfig, rollbacks: list[dict[str, Any]]) -> float:
    return cfg.lr_factor ** len(rollbacks)


def stop_message(rollbacks: list[dict[str, Any]], cfg: DivergenceConfig, run_dir: str | Path) -> str:
    last = rollbacks[-1]
    return (f"training diverged {len(rollbacks)} times (last at step {last['step']}: {last['reason']}), more than "
            f"divergence.max_rollbacks={cfg.max_rollbacks} allows, with learning rates already x"
            f"{lr_scale(cfg, rollbacks[:-1]):.3g}; lower llm_lr / dit_lr, check the data around that step, or "
            f"raise divergence.max_rollbacks (history: {Path(run_dir) / ROLLBACKS_FILE})")


def roll_back(run_dir: str | Path, event: dict[str, Any], cfg: DivergenceConfig, is_main: bool = True
              ) -> list[dict[str, Any]]:
    """Delete the checkpoints written at or after the first spike and record the event (rank 0).
    Returns the rollback history; raises DivergenceError once it is longer than max_rollbacks."""
    history = read_rollbacks(run_dir)
    bad = [(s, p) for s, p in list_checkpoints(run_dir) if s >= event["first_bad_step"]]
    good = [s for s, _ in list_checkpoints(run_dir) if s < event["first_bad_step"]]
    event = {**event, "resumed_from_step": good[-1] if good else 0, "deleted_checkpoints": [s for s, _ in bad],
             "lr_scale": lr_scale(cfg, history) * cfg.lr_factor}
    history = history + [event]
    if is_main:
        # Deleted first: a crash between the two steps replays the spike and decides the same again.
        for _, path in bad:
            shutil.rmtree(path)
        atomic_write_text(Path(run_dir) / ROLLBACKS_FILE, json.dumps({"rollbacks": history}, indent=1) + "\n")
    if len(history) > cfg.max_rollbacks:
        raise DivergenceError(stop_message(history, cfg, run_dir))
    return history
