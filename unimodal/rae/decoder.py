"""The RAE pixel decoder: an MAE-style ViT from latent tokens [B, N, C] to pixels (RAE paper, sec. 3).

Linear(C -> D), a trainable CLS token prepended, fixed 2D sin-cos positions (MAE layout, zero row
for the CLS slot), L pre-LN transformer layers with a GELU MLP, final LN, Linear(D -> p*p*3), CLS
dropped, unpatchify. The output lives in the encoder's normalised pixel space; the RAE maps it
back to [0, 1] with the encoder's pixel mean/std.

The official decoder checkpoints (``nyu-visionx/siglip2_decoder`` ``model.pt``) use ViTMAE's nested
module names; unimodal/convert/vitmae_decoder.py maps them onto the plain names here.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.config import Config, ConfigError
from unimodal.dit.blocks import sincos_2d_pos_embed  # shared with the DiT (same MAE layout)


@dataclasses.dataclass
class DecoderConfig(Config):
    in_channels: int = 1152         # latent channels C (= encoder hidden size)
    grid_size: int = 16             # latent token grid; N = grid_size ** 2
    patch_size: int = 14            # decoder patch p; output resolution = grid_size * p
    hidden_size: int = 1152
    num_layers: int = 28
    num_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-12   # ViTMAE's eps, used by the official decoders
    noise_tau: float = 0.0          # training-only latent noise scale (RAE: 0.8; Scale-RAE: 0)

    def __post_init__(self) -> None:
        for name in ("in_channels", "grid_size", "patch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"decoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"decoder.hidden_size ({self.hidden_size}) must be divisible by decoder.num_heads ({self.num_heads})")
        if self.hidden_size % 4:
            raise ConfigError(f"decoder.hidden_size ({self.hidden_size}) must be a multiple of 4 for 2D sin-cos positions")
        if self.noise_tau < 0:
            raise ConfigError(f"decoder.noise_tau must be >= 0, got {self.noise_tau}")

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size


# name -> (hidden, layers, heads, MLP): ViT-B/L/XL are the RAE paper's decoder sizes (ViT-XL is used everywhere).
DECODER_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
    "ViT-B": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "ViT-L": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "ViT-XL": dict(hidden_size=1152, num_layers=28, num_heads=16, intermediate_size=4096),
}


def decoder_preset(name: str, **changes: Any) -> DecoderConfig:
    if name not in DECODER_PRESETS:
        raise ConfigError(f"unknown decoder preset {name!r}; choose one of {sorted(DECODER_PRESETS)}")
    return DecoderConfig.from_dict({**DECODER_PRESETS[name], **changes})


def decoder_param_count(config: DecoderConfig) -> int:
    """Trainable parameters, by formula (lets tests check the big presets without allocating them)."""
    d, m, c, out = config.hidden_size, config.intermediate_size, config.in_channels, config.patch_size ** 2 * 3
    layer = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 2 * 2 * d
    return (c * d + d) + d + config.num_layers * layer + 2 * d + (d * out + out)


def add_latent_noise(z: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """RAE noise-augmented decoding: z + sigma * eps, sigma = tau * U(0, 1) per sample (RAE sec. 3.2)."""
    sigma = tau * torch.rand(z.shape[0], *([1] * (z.ndim - 1)), device=z.device, dtype=z.dtype, generator=generator)
    return z + sigma * torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q / k / v projections (ViTMAE's layout), no RoPE."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        heads = lambda t: t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        q, k, v = (heads(lin(x)) for lin in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v)      # [B, heads, N, d/heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DecoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)); x + MLP(LN(x)), GELU (erf) MLP as in ViTMAE."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = SelfAttention(d, config.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(d, config.intermediate_size), act=nn.GELU(),
                                             fc2=nn.Linear(config.intermediate_size, d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RAEDecoder(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.embed = nn.Linear(config.in_channels, d)
        # Fixed, so a buffer: saved with the weights (the official checkpoints store it) but never optimised.
        self.register_buffer("pos_embed", sincos_2d_pos_embed(d, config.grid_size, cls_token=True).unsqueeze(0))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.to_pixels = nn.Linear(d, p * p * 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # MAE initialisation: xavier-uniform linears with zero bias, N(0, 0.02) CLS token, unit LNs.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, g*g, p*p*3] -> [B, 3, g*p, g*p]; each token's vector is (row, col, channel) ordered."""
        b, g, p = x.shape[0], self.config.grid_size, self.config.patch_size
        x = x.view(b, g, g, p, p, 3)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, 3, g * p, g * p)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, g*p, g*p] -> [B, g*g, p*p*3]: the inverse (and the adjoint) of unpatchify."""
        b, g, p = images.shape[0], self.config.grid_size, self.config.patch_size
        x = images.reshape(b, 3, g, p, g, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if z.ndim != 3 or z.shape[1:] != (cfg.num_tokens, cfg.in_channels):
            raise ValueError(f"decoder expects latents [B, {cfg.num_tokens}, {cfg.in_channels}], got {tuple(z.shape)}")
        if self.training and cfg.noise_tau > 0:
            z = add_latent_noise(z, cfg.noise_tau)
        x = self.embed(z)                                                  # [B, N, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)        # [B, N+1, D]
        for layer in self.layers:
            x = layer(x)
        x = self.to_pixels(self.norm(x))[:, 1:]                            # [B, N, p*p*3]
        return self.unpatchify(x)                                          # [B, 3, g*p, g*p]

