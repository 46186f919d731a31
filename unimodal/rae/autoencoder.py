"""The representation autoencoder: frozen encoder -> (optional dataset statistics) -> ViT decoder.

``encode`` maps images in [0, 1] to the latent space the DiT models; ``decode`` maps latents back
to images in [0, 1]. A saved directory (config.json + model.safetensors) holds the encoder's
weights and full architecture too, so it loads without the original encoder checkpoint.
"""
from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from unimodal.config import Config, ConfigError
from unimodal.rae.decoder import DecoderConfig, RAEDecoder
from unimodal.rae.encoders import EncoderConfig, FrozenEncoder
from unimodal.rae.stats import denormalize_latents, load_latent_stats, normalize_latents
from unimodal.utils.weights import load_pretrained_dir, load_state_dict_strict, save_pretrained_dir


@dataclasses.dataclass
class RAEConfig(Config):
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    # Per-element dataset statistics (RAE's optional normalisation); the tensors are buffers of
    # the module, filled by `set_latent_stats` and saved with the weights.
    latent_stats: bool = False

    def __post_init__(self) -> None:
        enc, dec = self.encoder, self.decoder
        if dec.in_channels != enc.channels:
            raise ConfigError(f"decoder.in_channels={dec.in_channels} but the encoder gives {enc.channels} channels; set decoder.in_channels={enc.channels}")
        if dec.grid_size != enc.grid_size:
            raise ConfigError(f"decoder.grid_size={dec.grid_size} but the encoder gives a {enc.grid_size}x{enc.grid_size} token grid "
                              f"(image_size {enc.image_size} / patch {enc.patch_size}); set decoder.grid_size={enc.grid_size}")
        if self.latent_stats and enc.normalization != "standardize":
            raise ConfigError("latent_stats applies on top of encoder.normalization='standardize' (RAE); set one or the other")

    @property
    def image_size(self) -> int:
        """Output resolution = token grid x decoder patch."""
        return self.decoder.image_size


class RAE(nn.Module):
    def __init__(self, config: RAEConfig, load_encoder_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = FrozenEncoder(config.encoder, load_weights=load_encoder_weights)
        self.decoder = RAEDecoder(config.decoder)
        if config.latent_stats:
            shape = (config.encoder.num_tokens, config.encoder.channels)
            # NaN until set: using unset statistics fails loudly instead of silently not normalising.
            self.register_buffer("latent_mean", torch.full(shape, float("nan")))
            self.register_buffer("latent_var", torch.full(shape, float("nan")))
        self._stats_checked = False

    # -- latent statistics ------------------------------------------------------------------
    def set_latent_stats(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        if not self.config.latent_stats:
            raise ConfigError("this RAE was built with latent_stats=false; set latent_stats=true to use dataset statistics")
        if mean.shape != self.latent_mean.shape or var.shape != self.latent_var.shape:
            raise ValueError(f"latent statistics must have shape {tuple(self.latent_mean.shape)}, got {tuple(mean.shape)} / {tuple(var.shape)}")
        if (var < 0).any() or not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            raise ValueError("latent statistics must be finite with non-negative variance")
        self.latent_mean.copy_(mean)
        self.latent_var.copy_(var)
        self._stats_checked = True

    def load_latent_stats(self, path: str | os.PathLike) -> None:
        self.set_latent_stats(*load_latent_stats(path))

    def _require_stats(self) -> None:
        if not self._stats_checked:
            if not (torch.isfinite(self.latent_mean).all() and torch.isfinite(self.latent_var).all()):
                raise RuntimeError("latent statistics are not set: call rae.load_latent_stats(path) or load a saved RAE")
            self._stats_checked = True

    # -- encode / decode --------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] (any size) -> latents [B, N, C]."""
        z = self.encoder(images)
        if self.config.latent_stats:
            self._require_stats()
            z = normalize_latents(z, self.latent_mean, self.latent_var)
        return z

    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latents [B, N, C] -> images [B, 3, S, S] in [0, 1], S = grid x decoder patch.

        `clamp=False` keeps the raw values (losses need gradients outside [0, 1] too).
        """
        if self.config.latent_stats:
            self._require_stats()
            latents = denormalize_latents(latents, self.latent_mean, self.latent_var)
        x = self.decoder(latents)                                   # encoder-normalised pixels
        x = x * self.encoder.pixel_std + self.encoder.pixel_mean     # -> [0, 1]
        return x.clamp(0, 1) if clamp else x

    def forward(self, images: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """Reconstruct: decode(encode(images)); the decoder adds its training noise in train mode."""
        return self.decode(self.encode(images), clamp=clamp)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images, clamp=True)

    # -- save / load ------------------------------------------------------------------------
    def saved_config(self) -> RAEConfig:
        """The config with the encoder's full architecture recorded (for a self-contained directory)."""
        return self.config.replace(encoder=self.config.encoder.replace(model_config=self.encoder.model_config_dict()))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_pretrained_dir(directory, self.saved_config(), self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "RAE":
        config, state = load_pretrained_dir(directory, RAEConfig)
        if config.encoder.model_config is None:
            raise ConfigError(f"{directory}: config.json lacks encoder.model_config; re-save it with RAE.save_pretrained")
        model = cls(config, load_encoder_weights=False)
        load_state_dict_strict(model, state, source=str(directory))
        model._stats_checked = False
        return model.to(map_location)
