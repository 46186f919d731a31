"""Which parameters learn, in which optimiser group, and LoRA merging.

LLM modes:
- ``full`` (Scale-RAE): the whole LLM trains.
- ``frozen`` (MetaQuery): the LLM is frozen except the embedding rows of the image-span tokens
  (``<|vision_start|>`` / ``<|vision_end|>``), so the model can still learn to ask for an image;
  a gradient hook zeroes every other row. The learnable queries are their own parameter.
- ``lora``: peft LoRA adapters are injected into the LLM in place; only the adapters and the
  parameters named in ``unfreeze`` (substrings of LLM parameter names) train.

In every mode the projector, queries, connector and DiT train; the RAE never does. The
projector trains even with a frozen LLM because, unlike MetaQuery's MLLM, our LLM has no vision
tower of its own: the projector is the only way it can read a latent.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch

from unimodal.config import Config, ConfigError

LLMMode = Literal["full", "frozen", "lora"]
QWEN2_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class LoraSettings(Config):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(QWEN2_LINEARS))

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ConfigError(f"lora.r and lora.alpha must be >= 1, got r={self.r} alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (e.g. q_proj)")


def configure_trainable(model, mode: LLMMode = "full", lora: LoraSettings | None = None,
                        unfreeze: Sequence[str] = ()) -> None:
    """Set requires_grad for a :class:`~unimodal.unified.model.UnifiedModel` (in place, once)."""
    if mode not in ("full", "frozen", "lora"):
        raise ConfigError(f"llm mode must be full / frozen / lora, got {mode!r}")
    if getattr(model, "_llm_mode", None) is not None:
        raise RuntimeError(f"configure_trainable was already called (mode {model._llm_mode!r}); build a fresh model")
    model._llm_mode = mode
    model.rae.requires_grad_(False)
    for part in (model.projector, model.queries, model.connector, model.dit):
        part.requires_grad_(True)
    llm = model.llm
    if mode == "full":
        llm.requires_grad_(True)
    elif mode == "frozen":
        llm.requires_grad_(False)
        rows = [model.chat.image_start, model.chat.image_end]
        for emb in {id(m.weight): m.weight for m in (llm.get_input_embeddings(), llm.get_output_embeddings())}.values():
            emb.requires_grad_(True)
            mask = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
            mask[rows] = 1
            emb.register_hook(lambda g, m=mask: g * m.to(g.dtype))
    else:
        from peft import LoraConfig, inject_adapter_in_model

        lora = lora or LoraSettings()
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.target_modules), bias="none")
        inject_adapter_in_model(cfg, llm)
        for name, p in llm.named_parameters():
            p.requires_grad_("lora_" in name)
    if unfreeze:
        names = dict(llm.named_parameters())
        for pattern in unfreeze:
            hits = [n for n in names if pattern in n]
            if not hits:
                raise ConfigError(f"unfreeze pattern {pattern!r} matches no LLM parameter (e.g. {next(iter(names))})")
            for n in hits:
                names[n].requires_grad_(True)


def param_groups(model, *, llm_lr: float = 5.65e-5, llm_betas: tuple[float, float] = (0.9, 0.999),
                 dit_lr: float = 5.65e-4, dit_betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0) -> list[dict]:
    """Two AdamW groups (Scale-RAE): LLM + projector + queries, and DiT + connector. Empty groups
    are left out."""
    def trainable(*modules):
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    groups = [
        dict(name="llm", params=trainable(model.llm, model.projector, model.queries), lr=llm_lr,
             betas=tuple(llm_betas), weight_decay=weight_decay),
        dict(name="dit", params=trainable(model.dit, model.connector), lr=dit_lr, betas=tuple(dit_betas),
             weight_decay=weight_decay),
    ]
    return [g for g in groups if g["params"]]


def merged_llm_state(llm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LLM's state dict under plain Qwen2 names, LoRA deltas added to their base weights.
    Nothing is modified in place; without adapters this is just `llm.state_dict()`."""
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    for k, v in llm.state_dict().items():
        if ".lora_" in k:
            continue
        state[k.replace(".base_layer.", ".")] = v
    for name, m in llm.named_modules():
        if not isinstance(m, LoraLayer) or m.merged:
            continue
        if getattr(m, "use_dora", {}) and any(m.use_dora.values()):
            raise NotImplementedError(f"{name}: DoRA adapters are not supported by merged_llm_state")
        for adapter in m.active_adapters:
            if adapter in m.lora_A:
                key = f"{name}.weight"
                state[key] = state[key] + m.get_delta_weight(adapter).to(state[key].dtype)
    return state
