"""Finetuning a unified model on a user's own images: `unimodal finetune --data --model --out`.

- sources      what a --data string names: image folders, parquet / jsonl / csv, webdataset .tar shards, hub ids
- captioning   self-captioning of uncaptioned images with the model being finetuned
- data         prescan (per-reason bad-input counts, max_bad_fraction), validation split, data_report.json
- divergence   loss / grad-norm spike detection against a running median; rollback with a lower lr
- validation   a deterministic validation loss
- export       full model (LoRA merged) and peft adapters from any checkpoint; load_finetuned
- run          `finetune`: the unified stage loop (unimodal.train.pretrain.run_stage) with these hooks

Files in the run folder: config.json, train.log, metrics.jsonl (train rows and val_* rows),
data_report.json, self_captions.jsonl (with --self-caption), checkpoints/, samples/, rollbacks.json
(after a rollback), export/ (UnifiedModel.from_pretrained), adapters/ (llm_mode=lora),
finetune_report.json.
"""
from unimodal.finetune.config import FinetuneConfig, FinetuneDataConfig, ValConfig, load_finetune_config
from unimodal.finetune.data import FinetuneData, build_finetune_data
from unimodal.finetune.divergence import Diverged, DivergenceConfig, DivergenceError, DivergenceMonitor
from unimodal.finetune.export import export_run, load_finetuned, save_adapters, trained_model
from unimodal.finetune.run import FinetuneHooks, FinetuneResult, finetune
from unimodal.finetune.sources import CaptionOverlay, TarShardSource, detect_kind, expand_shards, resolve_source

__all__ = [
    "FinetuneConfig", "FinetuneDataConfig", "ValConfig", "load_finetune_config", "FinetuneData",
    "build_finetune_data", "Diverged", "DivergenceConfig", "DivergenceError", "DivergenceMonitor", "export_run",
    "load_finetuned", "save_adapters", "trained_model", "FinetuneHooks", "FinetuneResult", "finetune",
    "CaptionOverlay", "TarShardSource", "detect_kind", "expand_shards", "resolve_source",
]
