"""RAE (ImageNet) checkpoints: DiT^DH stage-2 models (`stage2_model.pt`) and ViT decoders.

Stage-2 files are `torch.save` dicts with the EMA weights under ``"ema"`` (the published samplers use
those) and, in training checkpoints, the live weights under ``"model"``; a released file may also be
the bare state dict. The model is ``stage2.models.DDT.DiTwDDTHead``; its names differ from ours in
three places (read from the released checkpoints and the reference code):

- its *body* embedder is ``s_embedder`` and its *head* embedder ``x_embedder`` (the other way round
  here: `x_embedder` embeds the latent for the body, `s_embedder` re-embeds it for the head);
- blocks are one list ``blocks.{i}``, body first, then head -> our ``blocks.{i}`` (body) and
  ``head_blocks.{i - depth}`` (head);
- the embedders are 1x1 convs over the [B, C, H, W] latent -> Linear over row-major tokens.

Derived buffers are checked, not loaded: ``enc_feat_rope`` / ``dec_feat_rope`` against our RoPE
tables. ``t_embedder.W`` is copied: RAE drew it from the global RNG (unlike Scale-RAE's seeded
frequencies), so the converted DiT is built with `store_fourier_frequencies=True`.
The time convention needs no change: RAE's linear path is x_t = (1 - t) x + t eps with velocity
eps - x, exactly ours. RAE's plain LightningDiT (no DDT head) is not supported: it conditions with
t + y where ours (and Scale-RAE) use silu(t + y).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from unimodal.config import ConfigError
from unimodal.convert.common import (
    ConversionError,
    Rule,
    apply_plan,
    as_state_dict,
    cast_floating,
    check_targets,
    conv1x1_to_linear,
    copy,
    load_torch_file,
    verified_copy,
)
from unimodal.convert.lightning import (
    block_rules,
    check_mlp_ratio,
    count_blocks,
    final_layer_rules,
    heads_from_rope,
    need,
    rope_check_rules,
    width_of_block,
)
from unimodal.dit.blocks import sincos_2d_pos_embed
from unimodal.dit.config import DiTConfig
from unimodal.dit.model import DiT
from unimodal.utils.weights import save_pretrained_dir

DEFAULT_HEAD_DEPTH = 2  # DiT^DH-S / -XL (RAE paper section 5)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def select_weights(obj: Any, weights: str, where: str) -> dict[str, torch.Tensor]:
    """The state dict to convert: ``"ema"`` (default) or ``"model"`` (live weights) of a training
    checkpoint; a bare state dict is accepted for ``"ema"`` only if it has no wrapper at all."""
    if weights not in ("ema", "model"):
        raise ConversionError(f"weights must be 'ema' or 'model', got {weights!r}")
    if isinstance(obj, Mapping) and ("ema" in obj or "model" in obj):
        if weights not in obj:
            raise ConversionError(f"{where}: no {weights!r} entry (it has {sorted(k for k in obj if isinstance(k, str))})")
        state = as_state_dict(obj[weights], f"{where}[{weights!r}]")
    elif weights == "model":
        raise ConversionError(f"{where}: a bare state dict has no separate live ('model') weights")
    else:
        state = as_state_dict(obj, where)
    return strip_wrappers(state)


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DDP / torch.compile prefix only when *every* key carries it."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def is_dit_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("blocks.") for k in state)


def dit_config_from_rae(state: Mapping[str, torch.Tensor], where: str, head_depth: int | None = None) -> DiTConfig:
    """DiTwDDTHead's architecture from its tensors (head counts from the stored RoPE tables)."""
    if "s_embedder.proj.weight" not in state:
        raise ConversionError(f"{where}: no s_embedder; only RAE's DiT^DH (DiTwDDTHead) is supported, not its plain "
                              f"LightningDiT, which conditions with t + y instead of silu(t + y)")
    d_body, c = need(state, "s_embedder.proj.weight", where).shape[:2]
    d_head = need(state, "x_embedder.proj.weight", where).shape[0]
    n = need(state, "pos_embed", where).shape[1]
    total = count_blocks(state, "blocks.", where)
    widths = [width_of_block(state, "blocks.", i, where) for i in range(total)]
    if d_body != d_head:
        inferred = sum(w == d_head for w in widths)
        if widths != [d_body] * (total - inferred) + [d_head] * inferred:
            raise ConversionError(f"{where}: block widths {widths} are not {d_body} (body) then {d_head} (head)")
        if head_depth is not None and head_depth != inferred:
            raise ConversionError(f"{where}: the weights have {inferred} head blocks, not head_depth={head_depth}")
        head_depth = inferred
    elif head_depth is None:
        head_depth = DEFAULT_HEAD_DEPTH  # equal widths: the split is not in the shapes
    if not 0 < head_depth < total:
        raise ConversionError(f"{where}: head_depth {head_depth} must be between 1 and {total - 1}")
    cond = need(state, "t_embedder.mlp.0.weight", where).shape[0]
    if cond != d_body:
        raise ConversionError(f"{where}: t_embedder width {cond} differs from the body width {d_body}")
    for i, w in ((0, d_body), (total - 1, d_head)):
        check_mlp_ratio(state, f"blocks.{i}.mlp.w12.weight", w)
    try:
        return DiTConfig(in_channels=int(c), num_tokens=int(n), hidden_size=int(d_body), depth=total - head_depth,
                         store_fourier_frequencies=True,
                         num_heads=heads_from_rope(need(state, "enc_feat_rope.freqs_cos", where), d_body, "enc_feat_rope.freqs_cos"),
                         head_hidden_size=int(d_head), head_depth=head_depth,
                         head_num_heads=heads_from_rope(need(state, "dec_feat_rope.freqs_cos", where), d_head, "dec_feat_rope.freqs_cos"),
                         cond_mode="class", num_classes=int(need(state, "y_embedder.embedding_table.weight", where).shape[0]) - 1)
    except ConfigError as e:
        raise ConversionError(f"{where}: {e}") from None


def dit_plan(cfg: DiTConfig, has_projector: bool) -> list[Rule]:
    grid = cfg.grid_size
    rules = [
        Rule("x_embedder.proj.weight", ("s_embedder.proj.weight",), conv1x1_to_linear("s_embedder.proj.weight")),
        copy("x_embedder.proj.bias", "s_embedder.proj.bias"),
        Rule("s_embedder.proj.weight", ("x_embedder.proj.weight",), conv1x1_to_linear("x_embedder.proj.weight")),
        copy("s_embedder.proj.bias", "x_embedder.proj.bias"),
        verified_copy("pos_embed", sincos_2d_pos_embed(cfg.hidden_size, grid)[None], "our 2D sin-cos position table"),
        copy("t_embedder.W"),  # RAE drew W from the global RNG: the converted DiT stores it
        copy("y_embedder.embedding_table.weight"),
        *[copy(f"t_embedder.mlp.{i}.{p}") for i in (0, 2) for p in ("weight", "bias")],
        *rope_check_rules("enc_feat_rope.", grid, cfg.hidden_size // cfg.num_heads, cfg.rope_theta),
        *rope_check_rules("dec_feat_rope.", grid, cfg.head_hidden_size // cfg.head_num_heads, cfg.rope_theta),
        *[r for i in range(cfg.depth) for r in block_rules(f"blocks.{i}.", f"blocks.{i}.")],
        *[r for i in range(cfg.head_depth) for r in block_rules(f"blocks.{cfg.depth + i}.", f"head_blocks.{i}.")],
        *final_layer_rules("final_layer.", "final_layer."),
    ]
    if has_projector:
        rules += [copy("s_projector.weight"), copy("s_projector.bias")]
    return rules


def convert_dit(state: Mapping[str, torch.Tensor], where: str, head_depth: int | None = None,
                dtype: torch.dtype | None = None) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    cfg = dit_config_from_rae(state, where, head_depth)
    with torch.device("meta"):
        expected = DiT(cfg).state_dict()
    out = apply_plan(state, dit_plan(cfg, "s_projector.weight" in state), where)
    check_targets(expected, out, where)
    return cfg, cast_floating(out, dtype)


def convert_rae(src: str | os.PathLike, dst: str | os.PathLike, *, weights: str = "ema", head_depth: int | None = None,
                config_path: str | os.PathLike | None = None, encoder: str | None = None, family: str = "dinov2_reg",
                stats: str | os.PathLike | None = None, noise_tau: float = 0.0, dtype: torch.dtype | None = None) -> list[str]:
    """A stage-2 DiT^DH checkpoint -> a `DiT.from_pretrained` directory; a decoder (`model.pt`, or a
    directory with config.json + model.pt) -> a decoder or RAE directory (see `convert_decoder`)."""
    from unimodal.convert.assemble import convert_decoder

    src = Path(src)
    obj = None if src.is_dir() else load_torch_file(src)
    wrapped = isinstance(obj, Mapping) and ("ema" in obj or "model" in obj)
    if not (wrapped or (isinstance(obj, Mapping) and is_dit_state(strip_wrappers(obj)))):
        if weights != "ema" or head_depth is not None:
            raise ConversionError(f"{src} is a decoder: the weights / head-depth options belong to stage-2 DiT checkpoints")
        return convert_decoder(src, dst, config_path=config_path, encoder=encoder, family=family,
                               normalization="standardize", stats=stats, noise_tau=noise_tau, dtype=dtype, loaded=obj)
    if encoder is not None or stats is not None or config_path is not None:
        raise ConversionError(f"{src} is a stage-2 DiT checkpoint: the encoder / statistics / decoder config options "
                              f"belong to decoder conversions")
    cfg, out = convert_dit(select_weights(obj, weights, str(src)), str(src), head_depth, dtype)
    save_pretrained_dir(dst, cfg, out)
    return [f"DiT^DH: body {cfg.hidden_size} x {cfg.depth} ({cfg.num_heads} heads), head {cfg.head_hidden_size} x "
            f"{cfg.head_depth} ({cfg.head_num_heads} heads), {cfg.num_tokens} tokens x {cfg.in_channels}, "
            f"{cfg.num_classes} classes; {weights} weights" + ("" if wrapped else " (bare state dict)")]
