"""`DiTConfig` and the name -> preset registry of DiT sizes (tests/test_dit_model.py builds every entry).

One config describes both published shapes:

- LightningDiT (`head_depth == 0`): `depth` blocks of width `hidden_size`, the final layer reads
  the conditioning vector(s) directly.
- DiT^DH (`head_depth > 0`, RAE paper section 5): a body of `depth` blocks at `hidden_size`, then a
  wide shallow head of `head_depth` blocks at `head_hidden_size` that re-embeds the noisy latent and
  is modulated per token by the body's output.

The width rule (RAE paper section 4) is checked here, before any module is built.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from unimodal.config import Config, ConfigError
from unimodal.dit.sampling import SamplerConfig

CondMode = Literal["class", "tokens", "none"]


@dataclasses.dataclass
class DiTConfig(Config):
    in_channels: int = 768           # token channels C of the latent [B, N, C]
    num_tokens: int = 256            # N, a square grid (16 x 16 for 224/14 or 256/16 encoders)
    hidden_size: int = 1152          # body width
    depth: int = 28                  # body blocks
    num_heads: int = 16
    mlp_ratio: float = 4.0           # SwiGLU hidden = int(2/3 * int(mlp_ratio * width)) as LightningDiT
    head_hidden_size: int = 0        # DiT^DH head width; 0 with head_depth 0 = plain LightningDiT
    head_depth: int = 0
    head_num_heads: int = 0
    cond_mode: CondMode = "class"    # class labels / token-aligned connector output / unconditional
    num_classes: int = 1000          # class mode: labels 0..num_classes-1, num_classes = null label
    cond_dim: int | None = None      # conditioning width (t embedding, adaLN input); None = hidden_size
    cond_in_dim: int | None = None   # tokens mode: width of y as given; None = already cond_dim (no proj)
    cond_dropout: float = 0.1        # training-time probability of the null condition (CFG)
    rope_theta: float = 10000.0
    allow_narrow: bool = False       # permit output width < in_channels (width-rule experiments only)
    # Scale-RAE regenerates the Fourier frequencies from a seed; RAE (ImageNet) drew them from the
    # global RNG, so a converted RAE DiT must carry them in its state dict.
    store_fourier_frequencies: bool = False
    # Sampling defaults of a trained model, kept in its config.json: `train dit` sets the sampler of
    # its sample grids with the training shift, and `unimodal sample` starts from it. None = SamplerConfig().
    sampler: SamplerConfig | None = None

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_tokens", "hidden_size", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dit.{name} must be >= 1, got {getattr(self, name)}")
        if math.isqrt(self.num_tokens) ** 2 != self.num_tokens:
            raise ConfigError(f"dit.num_tokens must be a square grid (e.g. 256 = 16x16), got {self.num_tokens}")
        if self.cond_dim is None:
            self.cond_dim = self.hidden_size
        if self.cond_dim < 1:
            raise ConfigError(f"dit.cond_dim must be >= 1, got {self.cond_dim}")
        _check_heads("dit", self.hidden_size, self.num_heads)
        if self.head_depth < 0:
            raise ConfigError(f"dit.head_depth must be >= 0, got {self.head_depth}")
        if self.head_depth > 0:
            if self.head_hidden_size < 1 or self.head_num_heads < 1:
                raise ConfigError("dit.head_depth > 0 needs dit.head_hidden_size and dit.head_num_heads >= 1")
            _check_heads("dit.head", self.head_hidden_size, self.head_num_heads)
            if self.cond_dim != self.hidden_size:
                # s = silu(body_out + t_emb) adds the t embedding to the body output (RAE DiT^DH).
                raise ConfigError(f"DiT^DH needs dit.cond_dim == dit.hidden_size ({self.hidden_size}), got {self.cond_dim}")
        elif self.head_hidden_size or self.head_num_heads:
            raise ConfigError("dit.head_hidden_size / dit.head_num_heads are set but dit.head_depth is 0; set head_depth or zero them")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"dit.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.cond_mode == "class" and self.num_classes < 1:
            raise ConfigError(f"dit.num_classes must be >= 1 in class mode, got {self.num_classes}")
        if self.cond_in_dim is not None and (self.cond_mode != "tokens" or self.cond_in_dim < 1):
            raise ConfigError("dit.cond_in_dim is only for cond_mode 'tokens' and must be >= 1; use null otherwise")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"dit.cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.rope_theta <= 0:
            raise ConfigError(f"dit.rope_theta must be > 0, got {self.rope_theta}")
        if self.output_width < self.in_channels and not self.allow_narrow:
            which = "dit.head_hidden_size" if self.head_depth else "dit.hidden_size"
            raise ConfigError(
                f"width rule (RAE paper section 4): the output width {which}={self.output_width} is below the token "
                f"channel count in_channels={self.in_channels}, so the loss cannot fall below "
                f"{(self.in_channels - self.output_width) / self.in_channels:.3f}; widen it or set dit.allow_narrow=true"
            )

    @property
    def output_width(self) -> int:
        """Width of the layers that produce the prediction: the head for DiT^DH, else the body."""
        return self.head_hidden_size if self.head_depth else self.hidden_size

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.num_tokens)

    @property
    def is_dh(self) -> bool:
        return self.head_depth > 0


def _check_heads(where: str, width: int, heads: int) -> None:
    if width % heads:
        raise ConfigError(f"{where}: width {width} is not divisible by num_heads {heads}")
    if (width // heads) % 4:
        # 2D RoPE gives half the head dim to each axis and rotates pairs within each half.
        raise ConfigError(f"{where}: head dim {width // heads} must be a multiple of 4 for 2D RoPE")


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """SwiGLU hidden size int(2/3 * int(ratio * D)), LightningDiT's rounding (5461 for D=2048)."""
    return int(2 / 3 * int(width * mlp_ratio))


# Architectures only; data-dependent fields (in_channels, num_tokens, cond_mode) come from the
# experiment. Widths/depths/heads: DiT paper table 1 (S/B/L/XL), RAE paper section 5 (DiT^DH-S/XL),
# Scale-RAE paper (2.4B: hidden 2048, depth 32, heads 32, 256 tokens x 1152 channels, tokens mode).
DIT_PRESETS: dict[str, dict[str, Any]] = {
    # tiny presets are test-scale: a 4x4 grid of 32-channel tokens, 10 classes.
    "tiny": dict(hidden_size=64, depth=2, num_heads=4, in_channels=32, num_tokens=16, num_classes=10),
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
    "ScaleRAE-2.4B": dict(hidden_size=2048, depth=32, num_heads=32, in_channels=1152, num_tokens=256,
                          cond_mode="tokens", cond_dim=2048),
    "DH-tiny": dict(hidden_size=32, depth=2, num_heads=2, head_hidden_size=64, head_depth=1, head_num_heads=4,
                    in_channels=32, num_tokens=16, num_classes=10),
    "DH-S": dict(hidden_size=384, depth=12, num_heads=6, head_hidden_size=2048, head_depth=2, head_num_heads=16),
    "DH-XL": dict(hidden_size=1152, depth=28, num_heads=16, head_hidden_size=2048, head_depth=2, head_num_heads=16),
}


def dit_config(name: str, **overrides: Any) -> DiTConfig:
    """A preset by name, with any field overridden (e.g. `dit_config("XL", in_channels=768)`)."""
    if name not in DIT_PRESETS:
        raise ConfigError(f"unknown DiT preset {name!r}; valid presets are {sorted(DIT_PRESETS)}")
    return DiTConfig.from_dict({**DIT_PRESETS[name], **overrides})


def count_parameters(cfg: DiTConfig) -> int:
    """Trainable parameter count from the config alone (no module built); a test checks it against
    the module, and it lets benchmarks size models without allocating them."""
    def linear(i: int, o: int) -> int:
        return i * o + o

    def block(d: int, cond: int) -> int:
        h = swiglu_hidden(d, cfg.mlp_ratio)
        return 2 * d + linear(d, 3 * d) + linear(d, d) + linear(d, 2 * h) + linear(h, d) + linear(cond, 6 * d)

    d, c = cfg.hidden_size, cfg.cond_dim
    n = linear(cfg.in_channels, d) + linear(512, c) + linear(c, c)  # x_embedder, t_embedder.mlp.{0,2}
    if cfg.cond_mode == "class":
        n += (cfg.num_classes + 1) * c
    elif cfg.cond_mode == "tokens":
        n += c + (linear(cfg.cond_in_dim, c) if cfg.cond_in_dim is not None else 0)
    n += cfg.depth * block(d, c)
    out_w, out_cond = d, c
    if cfg.is_dh:
        hd = cfg.head_hidden_size
        n += (linear(d, hd) if hd != d else 0) + linear(cfg.in_channels, hd)  # s_projector, s_embedder
        n += cfg.head_depth * block(hd, hd)
        out_w, out_cond = hd, hd
    n += out_w + linear(out_w, cfg.in_channels) + linear(out_cond, 2 * out_w)  # final_layer
    return n
