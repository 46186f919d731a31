"""The ViTMAE-style pixel decoders of Scale-RAE and RAE: `config.json` + `model.pt` (a raw state dict).

Checkpoints: ``nyu-visionx/siglip2_decoder``, ``nyu-visionx/webssl300m_decoder`` (Scale-RAE) and the RAE
ImageNet decoders (``model.pt`` with a separate ``configs/decoder/ViT*/config.json``). The files
use ViTMAE's nested names (:func:`vitmae_name` maps ours onto them), so the plan copies every
tensor under its new name; the architecture is read from the tensor shapes and cross-checked
with the config. The head count is the one field no shape reveals, so it comes from
`decoder_num_attention_heads`. The config's `hidden_size` is *not* the decoder input width: both
references overwrite it with the encoder's width at run time, so the input width comes from
`decoder_embed`. RAE's configs also say ``patch_size: "SHOULD BE RELOADED"`` and a stale
`image_size`; those two are checked only when the patch size is a number.

The output is a *decoder directory* (`DecoderConfig` config.json + model.safetensors, loaded by
:func:`load_decoder_dir`), or, given an encoder, a complete `RAE.from_pretrained` directory.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from unimodal.config import ConfigError
from unimodal.convert.common import (
    ConversionError,
    apply_plan,
    as_state_dict,
    cast_floating,
    check_targets,
    copy,
    load_torch_file,
    read_json,
    verified_copy,
)
from unimodal.convert.lightning import count_blocks, need
from unimodal.dit.blocks import sincos_2d_pos_embed
from unimodal.rae.decoder import DecoderConfig, RAEDecoder
from unimodal.utils.weights import load_pretrained_dir, load_state_dict_strict, rename_legacy_keys, save_pretrained_dir

STATE_NAME = "model.pt"
# Our decoder's module names -> ViTMAE's (the reference checkpoints, and diffusers' decoder
# besides its attention): the top-level modules, then those inside each layer.
_VITMAE_TOP = {"embed": "decoder_embed", "pos_embed": "decoder_pos_embed", "cls_token": "trainable_cls_token",
               "norm": "decoder_norm", "to_pixels": "decoder_pred"}
_VITMAE_LAYER = {"norm1": "layernorm_before", "attn.query": "attention.attention.query",
                 "attn.key": "attention.attention.key", "attn.value": "attention.attention.value",
                 "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
                 "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def vitmae_name(key: str) -> str:
    """The ViTMAE name of one of our decoder keys (no prefix): `layers.3.attn.query.weight` ->
    `decoder_layers.3.attention.attention.query.weight`."""
    top, _, rest = key.partition(".")
    if top != "layers":
        return _VITMAE_TOP[top] + (f".{rest}" if rest else "")
    i, _, rest = rest.partition(".")
    module, _, param = rest.rpartition(".")
    return f"decoder_layers.{i}.{_VITMAE_LAYER[module]}.{param}"


def read_decoder_source(src: str | os.PathLike, config_path: str | os.PathLike | None = None, loaded: Any = None
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) from a decoder directory (config.json + model.pt) or a model.pt file
    with its config given separately (`loaded`: that file's contents, if already read)."""
    src = Path(src)
    weights = src / STATE_NAME if src.is_dir() else src
    cfg_path = Path(config_path) if config_path is not None else (src / "config.json" if src.is_dir() else None)
    if cfg_path is None:
        raise ConversionError(f"{src}: a decoder state file needs its ViTMAE config.json (the head count is not in the weights); "
                              f"pass the decoder config")
    return read_json(cfg_path), as_state_dict(load_torch_file(weights) if loaded is None else loaded, str(weights))


def decoder_config_from_source(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str,
                               noise_tau: float = 0.0) -> DecoderConfig:
    """Architecture from the shapes, cross-checked against the ViTMAE-style config fields."""
    d, c = need(state, "decoder_embed.weight", where).shape
    n_pos = need(state, "decoder_pos_embed", where).shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ConversionError(f"{where}: decoder_pos_embed has {n_pos} patch positions (+1 CLS slot), not a square grid")
    out = need(state, "decoder_pred.weight", where).shape[0]
    patch = math.isqrt(out // 3)
    if patch * patch * 3 != out:
        raise ConversionError(f"{where}: decoder_pred gives {out} values per token, not patch^2 * 3")
    layers = count_blocks(state, "decoder_layers.", where)
    inter = need(state, "decoder_layers.0.intermediate.dense.weight", where).shape[0]
    heads = cfg.get("decoder_num_attention_heads")
    if not isinstance(heads, int):
        raise ConversionError(f"{where}: the config lacks decoder_num_attention_heads (the weights do not reveal it)")
    checks = {"decoder_hidden_size": d, "decoder_num_hidden_layers": layers, "decoder_intermediate_size": inter}
    if isinstance(cfg.get("patch_size"), int):
        checks["patch_size"] = patch
        if isinstance(cfg.get("image_size"), int):
            checks["image_size"] = grid * patch
    wrong = [f"{k}={cfg[k]} but the weights say {v}" for k, v in checks.items() if k in cfg and cfg[k] != v]
    if cfg.get("hidden_act", "gelu") != "gelu":
        wrong.append(f"hidden_act={cfg['hidden_act']!r} (only the erf GELU of ViTMAE is supported)")
    if cfg.get("qkv_bias", True) is not True or cfg.get("num_channels", 3) != 3:
        wrong.append("qkv_bias must be true and num_channels 3")
    if wrong:
        raise ConversionError(f"{where}: config disagrees with the weights: " + "; ".join(wrong))
    try:
        return DecoderConfig(in_channels=int(c), grid_size=grid, patch_size=patch, hidden_size=int(d), num_layers=layers,
                             num_heads=heads, intermediate_size=int(inter),
                             layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), noise_tau=noise_tau)
    except ConfigError as e:
        raise ConversionError(f"{where}: {e}") from None


def decoder_plan(config: DecoderConfig, expected: Mapping[str, torch.Tensor]) -> list:
    """Every key copied from its ViTMAE name; the fixed position table [1, N+1, D] (zero CLS row) is
    checked against ours first."""
    table = sincos_2d_pos_embed(config.hidden_size, config.grid_size, cls_token=True).unsqueeze(0)
    rules = [copy(k, vitmae_name(k)) for k in expected if k != "pos_embed"]
    rules.append(verified_copy(vitmae_name("pos_embed"), table, "our MAE 2D sin-cos table with a zero CLS row",
                               target="pos_embed"))
    return rules


def convert_decoder_state(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str,
                          dtype: torch.dtype | None = None, noise_tau: float = 0.0
                          ) -> tuple[DecoderConfig, dict[str, torch.Tensor]]:
    config = decoder_config_from_source(cfg, state, where, noise_tau)
    with torch.device("meta"):
        expected = RAEDecoder(config).state_dict()
    out = apply_plan(state, decoder_plan(config, expected), where)
    check_targets(expected, out, where)
    return config, cast_floating(out, dtype)


# ----------------------------------------------------------------------------- decoder directories

def save_decoder_dir(directory: str | os.PathLike, config: DecoderConfig, state: Mapping[str, torch.Tensor]) -> Path:
    return save_pretrained_dir(directory, config, state)


def load_decoder_dir(directory: str | os.PathLike) -> tuple[DecoderConfig, dict[str, torch.Tensor]]:
    """A decoder directory written by `save_decoder_dir` (keys checked against `RAEDecoder`)."""
    config, state = load_pretrained_dir(directory, DecoderConfig)
    with torch.device("meta"):
        expected = RAEDecoder(config).state_dict()
    state = rename_legacy_keys(expected, state, str(directory))
    check_targets(expected, state, str(directory))
    return config, state


def build_decoder(config: DecoderConfig, state: Mapping[str, torch.Tensor]) -> RAEDecoder:
    decoder = RAEDecoder(config)
    load_state_dict_strict(decoder, state, source="converted decoder")
    return decoder
