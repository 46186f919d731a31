"""Export a finetune run: the full model directory (LoRA merged) and the LoRA adapters on their own.

`trained_model` rebuilds the finetuned model from any checkpoint of a run: the start model
(`init_from`), the same trainable set, the checkpoint's weights (plain or DeepSpeed ZeRO, which
`deepspeed.utils.zero_to_fp32` consolidates) and, when the run kept one, the EMA weights.

The adapter directory (``run_dir/adapters``) holds
- ``adapter_config.json`` + ``adapter_model.safetensors``: peft's own format for the LLM's LoRA
  layers (`PeftModel.from_pretrained(<the start model's LLM as Qwen2>, dir)` reads it);
- ``trained.safetensors``: every other tensor the run trained (projector, queries, connector, DiT
  unless frozen, and `unfreeze` LLM parameters), under UnifiedModel names;
- ``finetune_adapters.json``: the start model's path and the LoRA / unfreeze settings.
`load_finetuned(adapter_dir)` puts the three back onto the start model.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unimodal.config import ConfigError
from unimodal.train.checkpoint import latest_checkpoint, list_checkpoints
from unimodal.utils.weights import WeightLoadError, check_state_dict, load_state_dict_strict, replace_directory

ADAPTER_META = "finetune_adapters.json"
TRAINED_FILE = "trained.safetensors"
_PEFT_PREFIX = "base_model.model."


def freeze_parts(model, parts) -> None:
    """Stop the named top-level parts (dit / connector / projector / queries) from training."""
    for name in parts:
        getattr(model, name).requires_grad_(False)


def prepare_model(model, cfg) -> None:
    """The run's trainable set on a freshly loaded start model (as the stage loop builds it)."""
    from unimodal.unified.trainable import configure_trainable

    configure_trainable(model, cfg.llm_mode, cfg.lora, cfg.unfreeze)
    freeze_parts(model, cfg.freeze)


def checkpoint_model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The stage module's (JointLoss) state dict from a checkpoint written by TrainEngine."""
    plain = ckpt / "engines" / "model.pt"
    if plain.is_file():
        return torch.load(plain, map_location="cpu", weights_only=True)["model"]
    if not (ckpt / "engines" / "model").is_dir():
        raise FileNotFoundError(f"{ckpt} holds no engine state named 'model'")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "engines"), tag="model")


def trained_model(cfg, step: int | None = None):
    """The finetuned UnifiedModel (LoRA layers still separate) from checkpoint `step` (default: latest)."""
    from unimodal.train.ema import EMA
    from unimodal.unified.model import UnifiedModel

    run_dir = Path(cfg.train.run_dir)
    if step is None:
        ckpt = latest_checkpoint(run_dir)
    else:
        ckpt = dict(list_checkpoints(run_dir)).get(step)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint{'' if step is None else f' for step {step}'} in {run_dir}")
    model = UnifiedModel.from_pretrained(cfg.init_from)
    prepare_model(model, cfg)
    state = checkpoint_model_state(ckpt)
    if any(not k.startswith("model.") for k in state):
        raise WeightLoadError(f"{ckpt}: expected JointLoss keys under 'model.'")
    state = {k[len("model."):]: v for k, v in state.items()}
    if model.llm.config.tie_word_embeddings:  # DeepSpeed's consolidation may drop the tied alias
        state.setdefault("llm.lm_head.weight", state.get("llm.model.embed_tokens.weight"))
    load_state_dict_strict(model, state, source=str(ckpt))
    extra = torch.load(ckpt / "extra_state.pt", map_location="cpu", weights_only=True)["extra_state"]
    if extra.get("ema") is not None:
        ema = EMA(model, extra["ema"]["decay"])
        ema.load_state_dict(extra["ema"])
        ema.copy_to(model)
    return model.eval()


def save_adapters(model, cfg, directory: str | Path) -> Path:
    """Write the adapter directory described in the module docstring (atomically)."""
    from peft import get_peft_model_state_dict

    if cfg.llm_mode != "lora":
        raise ConfigError(f"adapters exist only for llm_mode=lora (this run: {cfg.llm_mode})")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    lora = {_PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model.llm).items()}
    trained = {k: p.detach().contiguous().cpu() for k, p in model.named_parameters()
               if p.requires_grad and ".lora_" not in k}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        model.llm.peft_config["default"].save_pretrained(str(tmp))
        save_file(lora, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        save_file(trained, str(tmp / TRAINED_FILE), metadata={"format": "pt"})
        meta = {"base_model": str(Path(cfg.init_from).resolve()), "lora": cfg.lora.to_dict(),
                "unfreeze": list(cfg.unfreeze), "freeze": list(cfg.freeze), "trained_tensors": sorted(trained)}
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=1) + "\n")
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_finetuned(adapter_dir: str | Path, base_model: str | Path | None = None):
    """The start model with the adapters and other trained tensors of `adapter_dir` put back (strict)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from unimodal.unified.model import UnifiedModel
    from unimodal.unified.trainable import LoraSettings, configure_trainable

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_META).is_file():
        raise FileNotFoundError(f"{adapter_dir} has no {ADAPTER_META}; is it a finetune adapter directory?")
    meta: dict[str, Any] = json.loads((adapter_dir / ADAPTER_META).read_text())
    model = UnifiedModel.from_pretrained(base_model or meta["base_model"])
    configure_trainable(model, "lora", LoraSettings.from_dict(meta["lora"]), meta["unfreeze"])
    given = load_file(str(adapter_dir / "adapter_model.safetensors"))
    if any(not k.startswith(_PEFT_PREFIX) for k in given):
        raise WeightLoadError(f"{adapter_dir}: adapter keys must start with {_PEFT_PREFIX!r}")
    given = {k[len(_PEFT_PREFIX):]: v for k, v in given.items()}
    check_state_dict(get_peft_model_state_dict(model.llm), given, str(adapter_dir / "adapter_model.safetensors"))
    set_peft_model_state_dict(model.llm, given)
    trained = load_file(str(adapter_dir / TRAINED_FILE))
    params = dict(model.named_parameters())
    check_state_dict({k: params[k] for k in meta["trained_tensors"] if k in params}, trained, str(adapter_dir / TRAINED_FILE))
    with torch.no_grad():
        for k, v in trained.items():
            params[k].copy_(v)
    return model.requires_grad_(False).eval()


def export_run(cfg, step: int | None = None, full_dir: str | Path | None = None,
               adapters_dir: str | Path | None = None) -> dict[str, str]:
    """Rebuild the model from a checkpoint and write the requested exports; returns their paths."""
    model = trained_model(cfg, step)
    out: dict[str, str] = {}
    if full_dir is not None:
        out["full"] = str(model.save_pretrained(full_dir))
    if adapters_dir is not None:
        out["adapters"] = str(save_adapters(model, cfg, adapters_dir))
    return out
