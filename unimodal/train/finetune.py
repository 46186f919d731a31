"""Stage "finetune": continue a unified model on new image + caption pairs (Scale-RAE stage 2).

    unimodal train finetune --config configs/unified_finetune_tiny.yaml [--deepspeed JSON] [key=value ...]

The same loop as `unimodal.train.pretrain` (one function, read there), starting from a saved
unified model (`init_from`, e.g. a pretrain run's `export`) instead of fresh parts. Typical
choices: the LLM fully trained (Scale-RAE), frozen (MetaQuery) or LoRA (`llm_mode: lora`,
`unfreeze` for extra parameters such as `embed_tokens`); LoRA adapters are merged into the
exported directory, which then loads as a plain unified model.
"""
from __future__ import annotations

from pathlib import Path

from unimodal.config import ConfigError, load_config
from unimodal.train.pretrain import StageHooks, UnifiedStageConfig, run_stage


def train(config_path: str | None, overrides: list[str] = (), deepspeed_config: str | None = None,
          hooks: StageHooks | None = None) -> Path:
    cfg = load_config(UnifiedStageConfig, config_path, overrides)
    if cfg.init_from is None:
        raise ConfigError("finetune starts from a saved model: set init_from to a unified model directory "
                          "(e.g. runs/unified_tiny/export)")
    return run_stage(cfg, deepspeed_config, stage="finetune", hooks=hooks)
