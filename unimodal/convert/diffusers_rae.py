"""diffusers `AutoencoderRAE` directories <-> `RAE.from_pretrained` directories, both ways.

Layout (diffusers >= 0.39, `models/autoencoders/autoencoder_rae.py`): `config.json` (`_class_name`
"AutoencoderRAE") + `diffusion_pytorch_model.safetensors` (or shards). What differs from ours:

- encoder: `encoder.<transformers keys>` (ours `encoder.model.<...>`); SigLIP under its transformers-4
  `vision_model.` prefix; the final layer norm has no weights at all (diffusers uses it without
  affine, which is our "standardize" normalisation; ours keeps the unused weights, filled with
  ones / zeros on import). The architecture is rebuilt from a few config fields, with
  `heads = hidden // 64` and a fixed `image_size` per encoder type (:func:`encoder_hf_config`).
- decoder: ViTMAE's names (:func:`~unimodal.convert.vitmae_decoder.vitmae_name`) but for the
  attention, `attention.to_{q,k,v}` / `attention.to_out.0` (ViTMAE's
  `attention.attention.{query,key,value}` / `attention.output.dense`); the decoder position table is
  not stored: diffusers recomputes it with positions scaled by 16 / grid (:func:`diffusers_pos_table`),
  which is MAE's table only for a 16 x 16 grid; an import keeps diffusers' table, an export checks it.
- pixel normalisation: `encoder_mean` / `encoder_std` buffers; ours is fixed per encoder family, so
  they must match it.
- latent normalisation: z = (tokens - mean) / (std + 1e-5) * scaling_factor, mean/std over the
  [C, h, w] latent. Ours: z = (tokens - mean) / sqrt(var + 1e-5) over [N, C] tokens; the map
  var = ((std + 1e-5) / scaling_factor)^2 - 1e-5 is exact. A diffusers model without statistics
  still divides by 1 + 1e-5, so it imports with near-unit statistics; a model of ours without
  statistics exports with `latents_std = [1 - 1e-5]` so that diffusers divides by exactly 1.
"""
from __future__ import annotations

import json
import math
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
    copy,
    load_safetensors_dir,
    read_json,
    verify_equal,
)
from unimodal.convert.vitmae_decoder import vitmae_name
from unimodal.rae.autoencoder import RAE, RAEConfig
from unimodal.rae.decoder import DecoderConfig
from unimodal.rae.encoders import _FAMILIES, EncoderConfig
from unimodal.rae.stats import STATS_EPS
from unimodal.utils.weights import CONFIG_NAME, atomic_output_dir, load_pretrained_dir, rename_legacy_keys, save_pretrained_dir

DIFFUSERS_WEIGHTS_STEM = "diffusion_pytorch_model"
CLASS_NAME = "AutoencoderRAE"
DIFFUSERS_EPS = 1e-5                       # `_normalize_latents`: (z - mean) / (std + 1e-5)
DIFFUSERS_HEAD_DIM = 64                    # `_build_encoder`: heads = hidden // 64
DIFFUSERS_BASE_SIZE = 16                   # `get_2d_sincos_pos_embed` default: positions scaled by 16 / grid
# diffusers encoder_type -> (our family, fixed HF image_size, the HF final-norm module name).
_TYPES = {"dinov2": ("dinov2_reg", 518, "layernorm"), "siglip2": ("siglip2", 256, "post_layernorm"),
          "mae": ("mae", 224, "layernorm")}
_ATTN = {"attention.attention.query": "attention.to_q", "attention.attention.key": "attention.to_k",
         "attention.attention.value": "attention.to_v", "attention.output.dense": "attention.to_out.0"}
_CONFIG_FIELDS = {"encoder_type", "encoder_hidden_size", "encoder_patch_size", "encoder_num_hidden_layers",
                  "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                  "decoder_intermediate_size", "patch_size", "encoder_input_size", "image_size", "num_channels",
                  "encoder_norm_mean", "encoder_norm_std", "latents_mean", "latents_std", "noise_tau",
                  "reshape_to_2d", "use_encoder_loss", "scaling_factor"}


def is_diffusers_dir(path: str | os.PathLike) -> bool:
    cfg = Path(path) / CONFIG_NAME
    return cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == CLASS_NAME


def encoder_hf_config(encoder_type: str, hidden: int, patch: int, layers: int) -> dict[str, Any]:
    """The transformers config diffusers builds for its encoder (mirrors `_build_encoder`)."""
    import transformers

    if encoder_type not in _TYPES:
        raise ConversionError(f"unknown diffusers encoder_type {encoder_type!r}; known: {sorted(_TYPES)}")
    family, image_size, _ = _TYPES[encoder_type]
    if hidden % DIFFUSERS_HEAD_DIM:
        raise ConversionError(f"encoder hidden size {hidden} is not a multiple of diffusers' head dim {DIFFUSERS_HEAD_DIM}")
    kwargs = dict(hidden_size=hidden, patch_size=patch, image_size=image_size,
                  num_attention_heads=hidden // DIFFUSERS_HEAD_DIM, num_hidden_layers=layers)
    if encoder_type == "mae":
        kwargs["mask_ratio"] = 0.0
    cfg = getattr(transformers, _FAMILIES[family].config_cls)(**kwargs)
    return json.loads(cfg.to_json_string(use_diff=False))


def _hf_prefix(encoder_type: str, our_keys) -> str:
    """diffusers' SigLIP keys keep transformers-4's `vision_model.`; transformers 5 dropped it."""
    if encoder_type != "siglip2" or any(k.startswith("encoder.model.vision_model.") for k in our_keys):
        return ""
    return "vision_model."


def _final_norm_keys(encoder_type: str, keys) -> set[str]:
    """Our encoder's final-norm weights (never used: the tokens are normalised without affine)."""
    name = _TYPES[encoder_type][2]
    wanted = {f"encoder.model.{p}{name}.{w}" for p in ("", "vision_model.") for w in ("weight", "bias")}
    return {k for k in keys if k in wanted}


def diffusers_pos_table(dim: int, grid: int) -> torch.Tensor:
    """The decoder position table diffusers computes, [1, N+1, dim] (`get_2d_sincos_pos_embed` with its
    default base_size 16): MAE's layout (zero CLS row; column half, then row half; [sin | cos]) at
    positions i * 16 / grid. It equals MAE's table for the 16 x 16 grids of the released RAEs only."""
    pos = (torch.arange(grid, dtype=torch.float32) / (grid / DIFFUSERS_BASE_SIZE)).double()
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def half(p: torch.Tensor) -> torch.Tensor:
        ang = torch.outer(p.reshape(-1), omega)
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    table = torch.cat([half(cols), half(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float().unsqueeze(0)


def _decoder_name(ours: str) -> str:
    """diffusers' name of one of our `decoder.` keys."""
    name = "decoder." + vitmae_name(ours[len("decoder."):])
    for a, b in _ATTN.items():
        name = name.replace(a, b)
    return name


def _grid_latent(t: torch.Tensor, num_tokens: int, channels: int, two_d: bool, name: str) -> torch.Tensor:
    """A diffusers statistic (broadcastable to [C, h, w] or [N, C]) as our [N, C]."""
    grid = math.isqrt(num_tokens)
    shape = (channels, grid, grid) if two_d else (num_tokens, channels)
    src = t.double()
    while src.ndim > len(shape) and src.shape[0] == 1:   # a leading batch axis of 1
        src = src[0]
    try:
        full = torch.broadcast_to(src, shape)
    except RuntimeError:
        raise ConversionError(f"{name}: shape {tuple(t.shape)} does not broadcast to the latent {shape}") from None
    return full.reshape(channels, num_tokens).t() if two_d else full


# ----------------------------------------------------------------------------- diffusers -> ours

def config_from_diffusers(cfg: Mapping[str, Any], where: str) -> RAEConfig:
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _CONFIG_FIELDS)
    if unknown:
        raise ConversionError(f"{where}: unknown AutoencoderRAE config fields {unknown}")
    etype = cfg.get("encoder_type", "dinov2")
    if etype not in _TYPES:
        raise ConversionError(f"{where}: unknown encoder_type {etype!r}; known: {sorted(_TYPES)}")
    hidden, epatch = int(cfg.get("encoder_hidden_size", 768)), int(cfg.get("encoder_patch_size", 14))
    size, dpatch = int(cfg.get("encoder_input_size", 224)), int(cfg.get("patch_size", 16))
    if cfg.get("num_channels", 3) != 3:
        raise ConversionError(f"{where}: num_channels must be 3")
    model_config = encoder_hf_config(etype, hidden, epatch, int(cfg.get("encoder_num_hidden_layers", 12)))
    try:
        enc = EncoderConfig(family=_TYPES[etype][0], image_size=size, patch_size=epatch, hidden_size=hidden,
                            normalization="standardize", model_config=model_config)
        if cfg.get("image_size") not in (None, enc.grid_size * dpatch):
            raise ConversionError(f"{where}: image_size {cfg['image_size']} != decoder patch x grid = {enc.grid_size * dpatch}")
        dec = DecoderConfig(in_channels=hidden, grid_size=enc.grid_size, patch_size=dpatch,
                            hidden_size=int(cfg.get("decoder_hidden_size", 512)),
                            num_layers=int(cfg.get("decoder_num_hidden_layers", 8)),
                            num_heads=int(cfg.get("decoder_num_attention_heads", 16)),
                            intermediate_size=int(cfg.get("decoder_intermediate_size", 2048)),
                            layer_norm_eps=1e-12, noise_tau=float(cfg.get("noise_tau", 0.0)))
        return RAEConfig(encoder=enc, decoder=dec, latent_stats=True)
    except ConfigError as e:
        raise ConversionError(f"{where}: {e}") from None


def _pixel_check(family: str, which: str) -> Rule:
    spec = _FAMILIES[family]
    ref = torch.tensor(spec.pixel_mean if which == "mean" else spec.pixel_std).view(1, 3, 1, 1)
    return Rule(None, (f"encoder_{which}",), verify_equal(f"encoder_{which}", ref, f"the {family} pixel {which} our encoder uses"))


def from_diffusers(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None) -> list[str]:
    src = Path(src)
    where = str(src)
    cfg = read_json(src / CONFIG_NAME)
    if cfg.get("_class_name") != CLASS_NAME:
        raise ConversionError(f"{where}: config.json is not an {CLASS_NAME} config (_class_name {cfg.get('_class_name')!r})")
    state = load_safetensors_dir(src, DIFFUSERS_WEIGHTS_STEM)
    config = config_from_diffusers(cfg, where)
    enc, etype = config.encoder, cfg.get("encoder_type", "dinov2")
    with torch.device("meta"):
        expected = RAE(config, load_encoder_weights=False).state_dict()
    prefix = _hf_prefix(etype, expected)
    finals = _final_norm_keys(etype, expected)
    rules: list[Rule] = []
    # diffusers' SigLIP encoder keeps its attention-pooling head; latents never use it, ours has none.
    rules += [Rule(None, (key,), lambda t: None) for key in state if key.startswith(f"encoder.{prefix}head.")]
    for key, t in expected.items():
        if key in finals:  # unused by our forward, absent from diffusers: the identity norm
            rules.append(Rule(key, (), lambda t=t, key=key: (torch.ones if key.endswith("weight") else torch.zeros)(t.shape)))
        elif key.startswith("encoder.model."):
            rules.append(copy(key, "encoder." + prefix + key[len("encoder.model."):]))
        elif key == "decoder.pos_embed":
            # diffusers recomputes the table (and ignores one a file stores): ours keeps what it computes.
            table = diffusers_pos_table(config.decoder.hidden_size, config.decoder.grid_size)
            stored = _decoder_name(key)
            rules.append(Rule(key, (stored,) if stored in state else (), lambda *_, table=table: table))
        elif key.startswith("decoder."):
            rules.append(copy(key, _decoder_name(key)))
    two_d, sf = bool(cfg.get("reshape_to_2d", True)), float(cfg.get("scaling_factor", 1.0))
    if not sf > 0:
        raise ConversionError(f"{where}: scaling_factor must be > 0, got {sf}")

    def latent_mean(m: torch.Tensor) -> torch.Tensor:
        return _grid_latent(m, enc.num_tokens, enc.channels, two_d, "_latents_mean").float()

    def latent_var(s: torch.Tensor) -> torch.Tensor:
        scale = (_grid_latent(s, enc.num_tokens, enc.channels, two_d, "_latents_std") + DIFFUSERS_EPS) / sf
        var = scale ** 2 - STATS_EPS
        if (var < 0).any():
            raise ConversionError(f"{where}: _latents_std / scaling_factor give a scale below sqrt({STATS_EPS}); not representable")
        return var.float()

    rules += [Rule("latent_mean", ("_latents_mean",), latent_mean), Rule("latent_var", ("_latents_std",), latent_var),
              _pixel_check(enc.family, "mean"), _pixel_check(enc.family, "std")]
    for name, buffer in (("latents_mean", "_latents_mean"), ("latents_std", "_latents_std")):
        if cfg.get(name) is not None and buffer in state:  # both describe the same tensor: they must agree
            verify_equal(buffer, torch.tensor(cfg[name], dtype=torch.float64), f"config.json {name}")(state[buffer])
    out = apply_plan(state, rules, where)
    check_targets(expected, out, where)
    save_pretrained_dir(dst, config, cast_floating(out, dtype))
    return [f"encoder {etype} -> family {enc.family!r} (normalization 'standardize'), "
            f"{enc.num_tokens} tokens x {enc.channels}; latent statistics folded into latent_mean / latent_var"]


# ----------------------------------------------------------------------------- ours -> diffusers

def config_to_diffusers(config: RAEConfig, where: str, version: str) -> dict[str, Any]:
    enc, dec = config.encoder, config.decoder
    etype = next((t for t, (fam, _, _) in _TYPES.items() if fam == enc.family), None)
    if etype is None:
        raise ConversionError(f"{where}: diffusers' AutoencoderRAE has no {enc.family!r} encoder (it knows {sorted(_TYPES)})")
    if enc.normalization != "standardize":
        raise ConversionError(f"{where}: diffusers normalises encoder tokens with the encoder's own final norm (no affine), "
                              f"our 'standardize'; this RAE uses {enc.normalization!r}")
    if dec.layer_norm_eps != 1e-12:
        raise ConversionError(f"{where}: diffusers' decoder uses layer_norm_eps 1e-12, this one {dec.layer_norm_eps}")
    mc = enc.model_config or {}
    layers = int(mc.get("num_hidden_layers", 0))
    mirror = encoder_hf_config(etype, enc.hidden_size, enc.patch_size, layers)
    # vision_use_head is not compared: our SigLIP encoders drop the attention-pooling head (latents
    # never use it), so an exported SigLIP-2 RAE has no head weights for diffusers to load.
    fields = ("hidden_act", "layer_norm_eps", "image_size", "num_attention_heads", "qkv_bias", "num_register_tokens",
              "layerscale_value", "use_swiglu_ffn", "intermediate_size", "mlp_ratio")
    wrong = [f"{k}={mc.get(k)!r} (diffusers builds {mirror.get(k)!r})" for k in fields if mc.get(k) != mirror.get(k)]
    if wrong:
        raise ConversionError(f"{where}: diffusers rebuilds the encoder from a few fields and would get another "
                              f"architecture: " + "; ".join(wrong))
    spec = _FAMILIES[enc.family]
    return {"_class_name": CLASS_NAME, "_diffusers_version": version, "encoder_type": etype,
            "encoder_hidden_size": enc.hidden_size, "encoder_patch_size": enc.patch_size,
            "encoder_num_hidden_layers": layers, "decoder_hidden_size": dec.hidden_size,
            "decoder_num_hidden_layers": dec.num_layers, "decoder_num_attention_heads": dec.num_heads,
            "decoder_intermediate_size": dec.intermediate_size, "patch_size": dec.patch_size,
            "encoder_input_size": enc.image_size, "image_size": dec.image_size, "num_channels": 3,
            "encoder_norm_mean": list(spec.pixel_mean), "encoder_norm_std": list(spec.pixel_std),
            "noise_tau": dec.noise_tau, "reshape_to_2d": True, "use_encoder_loss": False, "scaling_factor": 1.0}


def to_diffusers(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None) -> list[str]:
    from safetensors.torch import save_file

    where = str(src)
    config, state = load_pretrained_dir(src, RAEConfig)
    try:
        import diffusers
        version = diffusers.__version__
    except ImportError:
        version = "0.39.0"
    out_cfg = config_to_diffusers(config, where, version)
    enc, etype = config.encoder, out_cfg["encoder_type"]
    with torch.device("meta"):
        expected = RAE(config, load_encoder_weights=False).state_dict()
    state = rename_legacy_keys(expected, state, where)
    check_targets(expected, state, where)
    prefix = _hf_prefix(etype, state)
    finals = _final_norm_keys(etype, state)
    grid = enc.grid_size
    rules: list[Rule] = []
    for key in state:
        if key in finals:  # diffusers' encoder has no final-norm weights; ours are never used
            rules.append(Rule(None, (key,), lambda t: None))
        elif key.startswith("encoder.model."):
            rules.append(copy("encoder." + prefix + key[len("encoder.model."):], key))
        elif key == "decoder.pos_embed":  # diffusers recomputes it: ours must be what it computes
            table = diffusers_pos_table(config.decoder.hidden_size, grid)
            rules.append(Rule(None, (key,), verify_equal(
                key, table, f"the table diffusers computes for a {grid}x{grid} grid",
                "diffusers scales decoder positions by 16 / grid, so only 16 x 16 MAE tables (or tables imported from diffusers) export")))
        elif key.startswith("decoder."):
            rules.append(copy(_decoder_name(key), key))

    def to_grid(t: torch.Tensor) -> torch.Tensor:
        return t.double().t().reshape(enc.channels, grid, grid)

    if config.latent_stats:
        rules += [Rule("_latents_mean", ("latent_mean",), lambda m: to_grid(m).float()),
                  Rule("_latents_std", ("latent_var",), lambda v: (to_grid(v) + STATS_EPS).sqrt().sub(DIFFUSERS_EPS).float())]
    out = apply_plan(state, rules, where)
    if not config.latent_stats:
        out["_latents_mean"], out["_latents_std"] = torch.zeros(1), torch.full((1,), 1.0 - DIFFUSERS_EPS)
    spec = _FAMILIES[enc.family]
    out["encoder_mean"] = torch.tensor(spec.pixel_mean).view(1, 3, 1, 1)
    out["encoder_std"] = torch.tensor(spec.pixel_std).view(1, 3, 1, 1)
    out_cfg["latents_mean"] = out["_latents_mean"].tolist()
    out_cfg["latents_std"] = out["_latents_std"].tolist()
    with atomic_output_dir(dst) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(out_cfg, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in cast_floating(out, dtype).items()},
                  str(tmp / f"{DIFFUSERS_WEIGHTS_STEM}.safetensors"), metadata={"format": "pt"})
    return [f"family {enc.family!r} -> diffusers encoder_type {etype!r}"]
