"""Scale-RAE HF model directories (`model_type` "cambrian_qwen") -> a `UnifiedModel.from_pretrained` directory.

Source layout (the released `nyu-visionx/Scale-RAE-*` directories): `config.json`, tokenizer files and
`model.safetensors` or shards with `model.safetensors.index.json`. Keys:

- the Qwen2 LM under `model.` and `lm_head.weight` (omitted or equal to the embedding when tied)
  -> `llm.model.*`, `llm.lm_head.weight`;
- `model.latent_queries` [N, H] -> `queries.weight`; `model.mm_projector.{0,2}` -> `projector.{0,2}`;
  `diff_head_projector` [Dc, H] -> `connector.0` (one Linear, connector_depth 1);
- the LightningDiT under `diff_head.model.` -> `dit.` (:func:`convert_dit_state`).

Neither the SigLIP-2 encoder nor the pixel decoder is in these checkpoints: the encoder comes from
its own checkpoint and the decoder from a converted decoder directory (`unimodal convert
scale-rae-decoder`), or both from an `RAE.from_pretrained` directory.

Conversation format: Scale-RAE wraps images in its own added tokens `<im_start>` / `<im_end>`; ours
uses Qwen-2.5's reserved `<|vision_start|>` / `<|vision_end|>`. With `image_tokens="scale-rae"` the
two rows of the embedding (and of an untied LM head) are copied from the Scale-RAE tokens, so our
format feeds the LLM the embeddings it was trained on; the system prompt is Scale-RAE's ChatML one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from unimodal.config import ConfigError
from unimodal.convert.common import (
    ConversionError,
    Rule,
    apply_plan,
    cast_floating,
    check_targets,
    conv1x1_to_linear,
    copy,
    load_safetensors_dir,
    read_json,
    verified_copy,
    verify_equal,
)
from unimodal.convert.lightning import (
    block_rules,
    check_mlp_ratio,
    count_blocks,
    final_layer_rules,
    heads_from_rope,
    need,
    rope_check_rules,
)
from unimodal.dit.blocks import sincos_2d_pos_embed
from unimodal.dit.config import DiTConfig
from unimodal.dit.model import DiT
from unimodal.text.special_tokens import IMAGE_END, IMAGE_START
from unimodal.utils.weights import CONFIG_NAME, WEIGHTS_NAME, atomic_output_dir

DIT_PREFIX = "diff_head.model."
SCALE_RAE_IMAGE_START, SCALE_RAE_IMAGE_END = "<im_start>", "<im_end>"
SCALE_RAE_SYSTEM_PROMPT = "You are a helpful assistant."   # scale_rae/conversation.py, conv_qwen
TIED_KEY = "llm.lm_head.weight"
# Scale-RAE config fields (besides Qwen2's) that the converter reads or checks.
_DIT_FIELDS = {"diffusion_model_hidden_size": "hidden_size", "diffusion_model_depth": "depth",
               "diffusion_model_heads": "num_heads", "diffusion_model_channels": "in_channels",
               "diffusion_model_z_channels": "cond_dim"}


# ----------------------------------------------------------------------------- the DiT

def dit_config_from_scale_rae(state: Mapping[str, torch.Tensor], where: str, source_config: Mapping[str, Any] | None = None
                              ) -> DiTConfig:
    """LightningDiT (token-aligned conditioning) from its tensors, cross-checked with config.json."""
    if "s_embedder.proj.weight" in state:
        raise ConversionError(f"{where}: this is Scale-RAE's DDT variant (s_embedder present); its head is conditioned with "
                              f"silu(s) instead of silu(s + t) and is not supported")
    d, c = need(state, "x_embedder.proj.weight", where).shape[:2]
    n = need(state, "pos_embed", where).shape[1]
    depth = count_blocks(state, "dit_blocks.", where)
    cond = need(state, "t_embedder.mlp.0.weight", where).shape[0]
    check_mlp_ratio(state, "dit_blocks.0.mlp.w12.weight", d)
    dropout = (source_config or {}).get("diffusion_class_dropout_prob", 0.1)
    try:
        cfg = DiTConfig(in_channels=int(c), num_tokens=int(n), hidden_size=int(d), depth=depth,
                        num_heads=heads_from_rope(need(state, "feat_rope.freqs_cos", where), d, "feat_rope.freqs_cos"),
                        cond_mode="tokens", cond_dim=int(cond), cond_dropout=float(dropout))
    except ConfigError as e:
        raise ConversionError(f"{where}: {e}") from None
    if source_config is not None:
        wrong = [f"{k}={source_config[k]} but the weights say {getattr(cfg, f)}" for k, f in _DIT_FIELDS.items()
                 if k in source_config and source_config[k] != getattr(cfg, f)]
        if wrong:
            raise ConversionError(f"{where}: config.json disagrees with the DiT weights: " + "; ".join(wrong))
    return cfg


def dit_plan(cfg: DiTConfig, src: str = "", dst: str = "") -> list[Rule]:
    """Scale-RAE's names are ours except its block list `dit_blocks` (our `blocks`) and the 1x1-conv
    embedder; the RoPE tables are checked and dropped; the Fourier frequencies are not stored by
    either side."""
    grid = cfg.grid_size
    return [
        Rule(dst + "x_embedder.proj.weight", (src + "x_embedder.proj.weight",), conv1x1_to_linear(src + "x_embedder.proj.weight")),
        copy(dst + "x_embedder.proj.bias", src + "x_embedder.proj.bias"),
        verified_copy(src + "pos_embed", sincos_2d_pos_embed(cfg.hidden_size, grid)[None], "our 2D sin-cos position table",
                      target=dst + "pos_embed"),
        *[copy(dst + f"t_embedder.mlp.{i}.{p}", src + f"t_embedder.mlp.{i}.{p}") for i in (0, 2) for p in ("weight", "bias")],
        copy(dst + "y_embedder.dropout_embedding", src + "y_embedder.dropout_embedding"),
        *rope_check_rules(src + "feat_rope.", grid, cfg.hidden_size // cfg.num_heads, cfg.rope_theta),
        *[r for i in range(cfg.depth) for r in block_rules(f"{src}dit_blocks.{i}.", f"{dst}blocks.{i}.")],
        *final_layer_rules(src + "final_layer.", dst + "final_layer."),
    ]


def convert_dit_state(state: Mapping[str, torch.Tensor], where: str, source_config: Mapping[str, Any] | None = None,
                      dtype: torch.dtype | None = None) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """The DiT alone, from keys without the `diff_head.model.` prefix."""
    cfg = dit_config_from_scale_rae(state, where, source_config)
    with torch.device("meta"):
        expected = DiT(cfg).state_dict()
    out = apply_plan(state, dit_plan(cfg), where)
    check_targets(expected, out, where)
    return cfg, cast_floating(out, dtype)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- the whole model

def llm_config_from_source(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The Qwen2 fields of a cambrian_qwen config (everything Qwen2Config itself knows)."""
    from transformers import Qwen2Config

    known = set(Qwen2Config().to_dict()) | {"rope_theta", "rope_scaling"}
    volatile = {"transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype", "model_type"}
    llm = {k: v for k, v in cfg.items() if k in known and k not in volatile}
    qwen = Qwen2Config(**llm)
    out = json.loads(qwen.to_json_string(use_diff=False))
    return {k: v for k, v in out.items() if k not in volatile}


def check_source_config(cfg: Mapping[str, Any], where: str) -> None:
    problems = []
    if cfg.get("model_type") != "cambrian_qwen":
        problems.append(f"model_type is {cfg.get('model_type')!r}, expected 'cambrian_qwen'")
    if cfg.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        problems.append(f"mm_projector_type {cfg['mm_projector_type']!r} (only mlp2x_gelu is supported)")
    if cfg.get("vision_loss_mode", "query") not in ("query",):
        problems.append(f"vision_loss_mode {cfg['vision_loss_mode']!r} (only the 256-query mode is supported)")
    if cfg.get("vision_loss", "diffusion-loss") != "diffusion-loss":
        problems.append(f"vision_loss {cfg['vision_loss']!r} (only 'diffusion-loss' with a LightningDiT is supported)")
    if cfg.get("diffusion_model_z_channels", 1) == 0:
        problems.append("diffusion_model_z_channels is 0 (no diff_head_projector); not supported")
    if problems:
        raise ConversionError(f"{where}: " + "; ".join(problems))


def _row_copy(tokenizer, image_tokens: str, where: str) -> dict[int, int]:
    """{our row: source row} for the image-span tokens."""
    if image_tokens == "keep":
        return {}
    if image_tokens != "scale-rae":
        raise ConversionError(f"image_tokens must be 'scale-rae' or 'keep', got {image_tokens!r}")
    rows = {}
    for ours, theirs in ((IMAGE_START, SCALE_RAE_IMAGE_START), (IMAGE_END, SCALE_RAE_IMAGE_END)):
        ids = tokenizer.encode(theirs, add_special_tokens=False)
        if len(ids) != 1:
            raise ConversionError(f"{where}: the tokenizer has no single token {theirs}; use image_tokens='keep'")
        rows[tokenizer.convert_tokens_to_ids(ours)] = ids[0]
    return rows


def unified_plan(expected: Mapping[str, torch.Tensor], dit_cfg: DiTConfig, tied: bool, embed: torch.Tensor,
                 copy_rows: Mapping[int, int]) -> list[Rule]:
    def with_rows(t: torch.Tensor) -> torch.Tensor:
        if not copy_rows:
            return t
        t = t.clone()
        for ours, theirs in copy_rows.items():
            t[ours] = t[theirs]
        return t

    rules: list[Rule] = []
    for key in expected:
        if key.startswith("llm.model."):
            src = key[len("llm."):]
            rules.append(Rule(key, (src,), with_rows) if src == "model.embed_tokens.weight" else copy(key, src))
    if tied:
        rules.append(Rule(None, ("lm_head.weight",), verify_equal("lm_head.weight", embed, "model.embed_tokens.weight "
                                                                  "(tie_word_embeddings)", atol=0.0)))
    else:
        rules.append(Rule(TIED_KEY, ("lm_head.weight",), with_rows))
    rules += [copy("queries.weight", "model.latent_queries"),
              *[copy(f"projector.{i}.{p}", f"model.mm_projector.{i}.{p}") for i in (0, 2) for p in ("weight", "bias")],
              copy("connector.0.weight", "diff_head_projector.weight"), copy("connector.0.bias", "diff_head_projector.bias"),
              *dit_plan(dit_cfg, src=DIT_PREFIX, dst="dit.")]
    return rules


def convert_scale_rae(src: str | os.PathLike, dst: str | os.PathLike, rae_config, rae_state: Mapping[str, torch.Tensor],
                      dtype: torch.dtype | None = None, image_tokens: str = "scale-rae") -> list[str]:
    """Convert `src` with the given RAE (config with the encoder architecture + state dict) and write
    `dst` atomically in the `UnifiedModel.save_pretrained` layout. Returns notes for the user."""
    from safetensors.torch import save_file

    from unimodal.text.tokenizer import load_tokenizer
    from unimodal.unified.config import UnifiedConfig
    from unimodal.unified.model import UnifiedModel

    src = Path(src)
    where = str(src)
    cfg = read_json(src / CONFIG_NAME)
    check_source_config(cfg, where)
    if rae_config.encoder.normalization != "layernorm":
        raise ConversionError(f"{where}: Scale-RAE latents are per-token layer-normalised; the RAE given uses "
                              f"encoder.normalization={rae_config.encoder.normalization!r}")
    state = load_safetensors_dir(src)
    dit_cfg = dit_config_from_scale_rae(strip_prefix(state, DIT_PREFIX), where, cfg)
    llm = llm_config_from_source(cfg)
    tied = bool(llm.get("tie_word_embeddings", False))
    tokenizer, added = load_tokenizer(src)
    if added:
        raise ConversionError(f"{where}: the tokenizer lacks {added} of our special tokens; a Qwen2.5-based tokenizer has them all")
    try:
        config = UnifiedConfig(llm=llm, init_llm_from=None, rae=rae_config, dit=dit_cfg, projector="mlp2x_gelu",
                               connector_depth=1, system_prompt=SCALE_RAE_SYSTEM_PROMPT,
                               generate_template="{prompt}")  # Scale-RAE trained on the bare request
    except ConfigError as e:
        raise ConversionError(f"{where}: {e}") from None
    with torch.device("meta"):
        expected = UnifiedModel(config, tokenizer).state_dict()
    if tied:
        # Saved once (safetensors has no shared tensors); UnifiedModel.from_pretrained re-ties it.
        expected.pop(TIED_KEY)
        if "lm_head.weight" not in state:
            state = {**state, "lm_head.weight": need(state, "model.embed_tokens.weight", where)}
    rows = _row_copy(tokenizer, image_tokens, where)
    plan = unified_plan(expected, dit_cfg, tied, need(state, "model.embed_tokens.weight", where), rows)
    out = apply_plan(state, plan, where)
    out.update({f"rae.{k}": v for k, v in rae_state.items()})
    check_targets(expected, out, where)
    out = cast_floating(out, dtype)
    with atomic_output_dir(dst) as tmp:
        (tmp / CONFIG_NAME).write_text(config.to_json_string())
        save_file({k: v.contiguous() for k, v in out.items()}, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
    notes = [f"DiT: hidden {dit_cfg.hidden_size}, depth {dit_cfg.depth}, heads {dit_cfg.num_heads}, "
             f"{dit_cfg.num_tokens} tokens x {dit_cfg.in_channels} channels, conditioning width {dit_cfg.cond_dim}",
             f"system prompt: Scale-RAE's {SCALE_RAE_SYSTEM_PROMPT!r}"]
    if rows:
        notes.append(f"embedding rows of {IMAGE_START} / {IMAGE_END} copied from {SCALE_RAE_IMAGE_START} / {SCALE_RAE_IMAGE_END}")
    return notes
