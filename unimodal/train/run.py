"""The first lines of every training stage: processes, seeds, logger, resolved config."""
from __future__ import annotations

from typing import Any

from unimodal.config import Config
from unimodal.utils.distributed import DistInfo, init_distributed, seed_everything
from unimodal.train.logging import RunLogger, save_resolved_config


def start_run(cfg: Config, train_cfg: Any, device: str | None) -> tuple[DistInfo, RunLogger]:
    """Join the process group (or run alone), seed by rank, open the run's logger and save the
    resolved config in `train_cfg.run_dir` (warning about keys changed since the last run)."""
    dist = init_distributed(device)
    seed_everything(train_cfg.seed, dist.rank)
    logger = RunLogger(train_cfg.run_dir, dist)
    save_resolved_config(train_cfg.run_dir, cfg, logger, dist.is_main)
    return dist, logger
