"""`FinetuneConfig`: the unified stage's settings plus data sources, validation, divergence and export.

It extends :class:`~unimodal.train.pretrain.UnifiedStageConfig` (the stage loop reads it as one), so
an override such as ``llm_mode=lora``, ``train.total_steps=500`` or ``divergence.loss_factor=4``
works as in `unimodal train`. `load_finetune_config` layers, lowest first: the dataclass defaults,
the YAML file, the command line's --data / --model / --out, the model's own image size (unless
data.image_size is set anywhere) and the key=value overrides.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from unimodal.config import Config, ConfigError, apply_overrides, read_json, read_yaml_mapping
from unimodal.data.dataset import DataConfig
from unimodal.finetune.divergence import DivergenceConfig
from unimodal.train.pretrain import UnifiedStageConfig

FREEZABLE = ("dit", "connector", "projector", "queries")


@dataclasses.dataclass
class FinetuneDataConfig(DataConfig):
    """`DataConfig` (image size, min_size, dedupe, max_bad_fraction, scan_workers, eval_path, ...)
    with the finetune source kinds and self-captioning. The validation split is `eval_path` (its own
    source), else `eval_holdout` records of `path`, else `val_fraction` of them (at most `val_max`)."""
    source: Literal["auto", "folder", "files", "tar", "datasets"] = "auto"
    captions: bool = True
    self_caption: bool = False              # caption images that have none with the model itself first
    caption_question: str | None = None     # None: "Describe this image."
    caption_max_tokens: int = 48
    caption_batch_size: int = 16
    caption_backend: Literal["torch", "vllm"] = "torch"  # vllm: a vLLM engine ($UNIMODAL_VLLM_PYTHON, README)
    val_fraction: float = 0.05
    val_max: int = 256
    # Captions are cut to this many tokens (and counted in data_report.json). 0: as many as the
    # model's positions leave beside the longest task conversation with an empty caption (the judge
    # question: template, 64 + 2 image tokens and answer, 102 tokens for models/shapes), less 4
    # spare: 512 - 102 - 4 = 406 for models/shapes. A larger value than the model allows is an error.
    max_caption_tokens: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.captions:
            raise ConfigError("finetuning needs captions: keep data.captions=true (use data.self_caption for "
                              "images without one)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_caption_tokens < 0:
            raise ConfigError(f"data.max_caption_tokens must be >= 0 (0: what the model allows), "
                              f"got {self.max_caption_tokens}")
        for name in ("val_max", "caption_max_tokens", "caption_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class ValConfig(Config):
    every: int = 0              # optimiser steps between validation passes; 0 = with every checkpoint
    batch_size: int = 8
    max_batches: int = 0        # 0 = the whole validation split

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_batches < 0:
            raise ConfigError(f"val.every and val.max_batches must be >= 0, got {self.every} / {self.max_batches}")
        if self.batch_size < 1:
            raise ConfigError(f"val.batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class FinetuneConfig(UnifiedStageConfig):
    data: FinetuneDataConfig = dataclasses.field(default_factory=FinetuneDataConfig)
    freeze: list[str] = dataclasses.field(default_factory=list)      # any of FREEZABLE: kept fixed
    val: ValConfig = dataclasses.field(default_factory=ValConfig)
    divergence: DivergenceConfig = dataclasses.field(default_factory=DivergenceConfig)
    export_adapters: bool = True    # llm_mode=lora: also write run_dir/adapters (peft format)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset != "images":
            raise ConfigError("finetune reads its data from --data (data.path); dataset must stay 'images'")
        if self.init_from is None:
            raise ConfigError("finetune starts from a saved unified model: pass --model DIR (init_from)")
        if not self.data.path:
            raise ConfigError("no training data: pass --data SOURCE (data.path)")
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            raise ConfigError(f"freeze: unknown part(s) {unknown}; choose from {list(FREEZABLE)}")


def model_image_size(model_dir: str | Path) -> int:
    """The encoder input size of a saved unified model (its config.json)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a unified model directory (no config.json): {model_dir}")
    cfg = read_json(path)
    try:
        return int(cfg["rae"]["encoder"]["image_size"])
    except (KeyError, TypeError):
        raise ConfigError(f"{path}: no rae.encoder.image_size; is this a UnifiedModel directory?") from None


def load_finetune_config(config_path: str | Path | None, overrides: list[str] = (), *, data: str | None = None,
                         model: str | None = None, out: str | None = None,
                         self_caption: bool | None = None, caption_backend: str | None = None) -> FinetuneConfig:
    """Build the config in the order the module docstring gives; every layer is checked."""
    raw: dict[str, Any] = {}
    if config_path is not None:
        raw = read_yaml_mapping(config_path)
    # Set as values, not parsed as override text: "{000..003}.tar" must stay a string.
    if data is not None:
        raw.setdefault("data", {})["path"] = str(data)
    if model is not None:
        raw["init_from"] = str(model)
    if out is not None:
        raw.setdefault("train", {})["run_dir"] = str(out)
    if self_caption:
        raw.setdefault("data", {})["self_caption"] = True
    if caption_backend is not None:
        raw.setdefault("data", {})["caption_backend"] = caption_backend
    raw = apply_overrides(raw, list(overrides), schema=FinetuneConfig)
    section = raw.get("data") or {}
    if "image_size" not in section and raw.get("init_from"):
        raw.setdefault("data", {})["image_size"] = model_image_size(raw["init_from"])
    return FinetuneConfig.from_dict(raw, _where=Path(config_path).name if config_path else "FinetuneConfig")
