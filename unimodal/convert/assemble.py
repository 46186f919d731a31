"""Assemble a complete `RAE.from_pretrained` directory: a frozen encoder checkpoint + a converted decoder
(+ optional RAE latent statistics).

Neither reference stores the encoder with the decoder (the SigLIP-2 / DINOv2 weights come from their
own hub checkpoints), so the encoder is named separately and its weights copied in; the saved
config records its full architecture, and the directory then loads offline.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from unimodal.config import ConfigError
from unimodal.convert.common import ConversionError, as_state_dict, cast_floating, check_targets, load_torch_file
from unimodal.rae.autoencoder import RAE, RAEConfig
from unimodal.rae.decoder import DecoderConfig
from unimodal.rae.encoders import EncoderConfig, FrozenEncoder


def encoder_config_for(encoder: str, family: str, grid_size: int, normalization: str) -> EncoderConfig:
    """An EncoderConfig for a transformers checkpoint whose token grid must be `grid_size` (the
    decoder's): image size = grid x the checkpoint's patch size."""
    from transformers import AutoConfig  # heavy; only when converting

    try:
        hf = AutoConfig.from_pretrained(encoder)
    except OSError as e:
        raise FileNotFoundError(f"encoder {encoder!r} not found locally: {str(e).splitlines()[0]}") from None
    vision = getattr(hf, "vision_config", None) or hf
    try:
        return EncoderConfig(family=family, pretrained=str(encoder), image_size=grid_size * int(vision.patch_size),
                             patch_size=int(vision.patch_size), hidden_size=int(vision.hidden_size),
                             normalization=normalization)
    except ConfigError as e:
        raise ConversionError(f"encoder {encoder}: {e}") from None


def load_encoder(config: EncoderConfig) -> tuple[EncoderConfig, dict[str, torch.Tensor]]:
    """Load the encoder weights once; the config gains the full transformers architecture."""
    frozen = FrozenEncoder(config, load_weights=True)
    state = {f"encoder.{k}": v.detach() for k, v in frozen.state_dict().items()}
    return config.replace(model_config=frozen.model_config_dict()), state


def stats_to_tokens(stats: Mapping[str, torch.Tensor], num_tokens: int, channels: int, where: str) -> dict[str, torch.Tensor]:
    """RAE's `stat.pt` holds per-element mean/var over the [C, H, W] latent (its 2D layout); ours are
    [N, C] over row-major tokens. Exactly the keys `mean` and `var`."""
    if set(stats) != {"mean", "var"}:
        raise ConversionError(f"{where}: expected exactly the tensors 'mean' and 'var', found {sorted(stats)}")
    out = {}
    for name in ("mean", "var"):
        t = stats[name]
        grid = math.isqrt(num_tokens)
        if t.numel() != num_tokens * channels or t.shape[-3:] != (channels, grid, grid):
            raise ConversionError(f"{where}: {name} has shape {tuple(t.shape)}, expected [(1,) {channels}, {grid}, {grid}]")
        out[f"latent_{name}"] = t.reshape(channels, num_tokens).t().contiguous()   # [N, C]
    if (out["latent_var"] < 0).any():
        raise ConversionError(f"{where}: var has negative entries")
    return out


def read_stats(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return as_state_dict(load_torch_file(path), str(path))


def assemble_rae(encoder: EncoderConfig, decoder: DecoderConfig, decoder_state: Mapping[str, torch.Tensor],
                 stats: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                 where: str = "RAE") -> tuple[RAEConfig, dict[str, Any]]:
    """(RAEConfig, state dict) of a complete RAE; every key checked against the RAE module."""
    enc_cfg, enc_state = load_encoder(encoder)
    try:
        config = RAEConfig(encoder=enc_cfg, decoder=decoder, latent_stats=stats is not None)
    except ConfigError as e:
        raise ConversionError(f"{where}: the encoder does not fit the decoder: {e}") from None
    state = dict(enc_state)
    state.update({f"decoder.{k}": v for k, v in decoder_state.items()})
    if stats is not None:
        state.update(stats_to_tokens(stats, enc_cfg.num_tokens, enc_cfg.channels, where))
    with torch.device("meta"):
        expected = RAE(config, load_encoder_weights=False).state_dict()
    check_targets(expected, state, where)
    return config, cast_floating(state, dtype)


def rae_from_decoder_dir(directory: str | os.PathLike, encoder: str | None, family: str, normalization: str,
                         where: str) -> tuple[RAEConfig, dict[str, torch.Tensor]]:
    """A converted decoder directory + an encoder checkpoint, or a complete RAE directory alone."""
    from unimodal.convert.vitmae_decoder import load_decoder_dir
    from unimodal.utils.weights import load_pretrained_dir, rename_legacy_keys

    cfg_path = Path(directory) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json")
    if {"encoder", "decoder"} <= set(json.loads(cfg_path.read_text())):
        if encoder is not None:
            raise ConversionError(f"{directory} is a complete RAE directory with its own encoder; drop the encoder option")
        config, state = load_pretrained_dir(directory, RAEConfig)
        if config.encoder.model_config is None:
            raise ConversionError(f"{directory}: config.json lacks encoder.model_config; re-save it with RAE.save_pretrained")
        with torch.device("meta"):
            expected = RAE(config, load_encoder_weights=False).state_dict()
        state = rename_legacy_keys(expected, state, str(directory))
        check_targets(expected, state, str(directory))
        return config, state
    if encoder is None:
        raise ConversionError(f"{directory} is a decoder directory: name the {family} encoder checkpoint it decodes")
    dec_cfg, dec_state = load_decoder_dir(directory)
    enc_cfg = encoder_config_for(encoder, family, dec_cfg.grid_size, normalization)
    return assemble_rae(enc_cfg, dec_cfg, dec_state, where=where)


def convert_decoder(src: str | os.PathLike, dst: str | os.PathLike, *, config_path: str | os.PathLike | None = None,
                    encoder: str | None = None, family: str = "siglip2", normalization: str = "layernorm",
                    stats: str | os.PathLike | None = None, noise_tau: float = 0.0,
                    dtype: torch.dtype | None = None, loaded: Any = None) -> list[str]:
    """A ViTMAE-style decoder (Scale-RAE or RAE) -> a decoder directory, or with `encoder` a complete
    RAE directory (with `stats`, RAE's latent statistics). `loaded`: the already-read `src` file."""
    from unimodal.convert.vitmae_decoder import convert_decoder_state, read_decoder_source, save_decoder_dir
    from unimodal.utils.weights import save_pretrained_dir

    cfg, state = read_decoder_source(src, config_path, loaded)
    dec_cfg, dec_state = convert_decoder_state(cfg, state, str(src), dtype=None, noise_tau=noise_tau)
    notes = [f"decoder: D={dec_cfg.hidden_size} L={dec_cfg.num_layers} heads={dec_cfg.num_heads} MLP={dec_cfg.intermediate_size} "
             f"p={dec_cfg.patch_size}, {dec_cfg.num_tokens} tokens x {dec_cfg.in_channels} -> {dec_cfg.image_size}px"]
    if encoder is None:
        if stats is not None:
            raise ConversionError("latent statistics belong to a complete RAE; name the encoder too")
        save_decoder_dir(dst, dec_cfg, cast_floating(dec_state, dtype))
        return notes + ["a decoder directory (no encoder): pass it to `unimodal convert scale-rae --decoder` with --encoder"]
    enc_cfg = encoder_config_for(encoder, family, dec_cfg.grid_size, normalization)
    stat_tensors = read_stats(stats) if stats is not None else None
    config, state = assemble_rae(enc_cfg, dec_cfg, dec_state, stat_tensors, dtype, where=str(src))
    save_pretrained_dir(dst, config, state)
    return notes + [f"encoder {encoder} ({family}, {normalization}) copied in" + (", latent statistics from " + str(stats) if stats else "")]
