"""Plumbing shared by the recipe stages: presets, opening a run, per-step bookkeeping, finishing."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TypeVar

from unimodal.config import Config, ConfigError, atomic_write_text
from unimodal.utils.distributed import seed_everything
from unimodal.train.logging import RunLogger, check_finite, save_resolved_config

C = TypeVar("C", bound=Config)


def preset_config(cls: type[C], presets: dict[str, dict[str, Any]], name: str,
                  overrides: dict[str, Any] | None = None) -> C:
    """`cls()` updated by `presets[name]`, then `overrides`; nested sections (train, shapes) merge."""
    if name not in presets:
        raise ConfigError(f"unknown {cls.__name__} preset {name!r}; choose one of {sorted(presets)}")
    data = cls().to_dict()
    for src in (presets[name], overrides or {}):
        for k, v in src.items():
            data[k] = {**data[k], **v} if isinstance(data.get(k), dict) and isinstance(v, dict) else v
    return cls.from_dict(data)


def open_stage(cfg: Config, name: str):
    """Logger on `cfg.train.run_dir`, resolved config saved, seeds set, the recipe tokenizer loaded.

    Returns (logger, tokenizer). The tokenizer must already hold every special token: a recipe
    model is built from its vocabulary, so a tokenizer that needs new rows is a wrong path.
    """
    from unimodal.text.tokenizer import load_tokenizer

    run_dir = Path(cfg.train.run_dir)
    logger = RunLogger(run_dir, name=f"unimodal.recipe.{name}", tensorboard=False)
    save_resolved_config(run_dir, cfg, logger)
    seed_everything(cfg.train.seed)
    tokenizer, added = load_tokenizer(cfg.tokenizer)
    if added:
        raise ConfigError(f"{cfg.tokenizer}: tokenizer lacks {added} special token(s); "
                          "train it with `python -m unimodal.shapes.recipe tokenizer`")
    return logger, tokenizer


class StepLog:
    """First and smoothed loss, the progress bar, and a metrics line every `log_every` steps."""

    def __init__(self, logger: RunLogger, total: int, log_every: int, desc: str, progress: bool,
                 items_per_step: int, unit: str):
        self.logger, self.total, self.log_every = logger, total, log_every
        self.items_per_step, self.unit, self.desc = items_per_step, unit, desc
        self.bar = logger.progress(total, desc=desc) if progress else None
        self.first: float | None = None
        self.smooth: float | None = None
        self.start = time.time()

    def update(self, step: int, loss, grad_norm: float, lr: float, **extra: float) -> None:
        """`step` counts from 0; `loss` is the step's scalar loss tensor (checked for finiteness)."""
        check_finite(loss, step, f"{self.desc} loss")
        value = loss.item()
        self.first = value if self.first is None else self.first
        self.smooth = value if self.smooth is None else 0.9 * self.smooth + 0.1 * value
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.smooth:.3f}")
        if (step + 1) % self.log_every == 0 or step + 1 == self.total:
            rate = (step + 1) * self.items_per_step / (time.time() - self.start)
            self.logger.metrics(step + 1, loss=self.smooth, grad_norm=grad_norm, lr=lr,
                                **{f"{self.unit}_per_s": rate}, **extra)

    def close(self) -> float:
        """Close the bar; returns the training wall time in seconds."""
        if self.bar is not None:
            self.bar.close()
        return time.time() - self.start


def finish_stage(logger: RunLogger, name: str, run_dir: Path, metrics: dict[str, Any]) -> None:
    """Log the final metrics in one line and write them to `run_dir/final_metrics.json`."""
    logger.info(f"{name} final: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    atomic_write_text(run_dir / "final_metrics.json", json.dumps(metrics, indent=2) + "\n")
    logger.close()
