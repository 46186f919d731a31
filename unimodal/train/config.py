"""`TrainConfig`: the optimisation and bookkeeping knobs every training stage shares.

Stage configs embed it as a field (``train: TrainConfig``). Batch, accumulation, clipping and
bf16 are the single source of truth: :class:`~unimodal.train.engine.TrainEngine` copies them into
the DeepSpeed JSON, so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from unimodal.config import Config, ConfigError


@dataclasses.dataclass
class TrainConfig(Config):
    run_dir: str = "runs/default"
    seed: int = 0
    total_steps: int = 1000          # optimiser steps (not micro-batches)
    batch_size: int = 8              # micro batch per process
    grad_accum: int = 1              # micro batches per optimiser step
    lr: float = 2e-4                 # peak lr after warm-up (RAE / Scale-RAE decoder: 2e-4)
    min_lr: float = 2e-5             # cosine floor (RAE decoder: 2e-5)
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0    # max global grad norm; None = no clipping
    bf16: bool | Literal["auto"] = False  # bf16 autocast (plain) / bf16 engine (DeepSpeed); "auto": where
                                     # the device computes bf16 natively (unimodal.utils.precision)
    ema_decay: float | None = None   # None = no EMA
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0            # 0 = never
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ConfigError("train.run_dir must be a non-empty path")
        for name in ("total_steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps > self.total_steps:
            raise ConfigError(f"train.warmup_steps ({self.warmup_steps}) exceeds train.total_steps ({self.total_steps})")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"train.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 or null (off), got {self.grad_clip}")
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):
            raise ConfigError(f"train.bf16 must be true, false or auto, got {self.bf16!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in (0, 1) or null (off), got {self.ema_decay}")
