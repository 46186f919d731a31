"""Frozen representation encoders: images in [0, 1] -> normalised latent tokens [B, N, C].

One module, :class:`FrozenEncoder`, wraps four transformers vision backbones. They differ only in
data (which model class, how many leading tokens to drop, pixel mean/std), see ``_FAMILIES``:

- ``siglip2``: SigLIP-2 fixed-resolution checkpoints (``google/siglip2-*-patch14-224`` ...) use
  the SigLIP classes, so this is ``SiglipVisionModel``. Every token is a patch token. The NaFlex
  variant (``Siglip2VisionModel``) is left out: it takes variable-length patch sequences with an
  attention mask, which a fixed token grid does not need.
- ``dinov2_reg``: ``Dinov2WithRegistersModel``; drop CLS + registers (RAE paper's default).
- ``mae``: ``ViTMAEModel`` with mask ratio 0 and the identity "shuffle" (ascending noise), drop CLS.
- ``webssl``: WebSSL-DINO checkpoints are plain ``Dinov2Model``s; drop CLS.

Which hidden state: always the output of the last transformer layer
*before* the model's final layer norm, then an affine-free per-token layer norm:
``normalization="layernorm"`` (Scale-RAE, eps 1e-6) or ``"standardize"`` (RAE: the final layer
norm with its weight/bias removed, i.e. the model's own eps). Dataset statistics on top of
"standardize" live in :mod:`unimodal.rae.stats` and are applied by the RAE, not here.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.config import Config, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Family = Literal["siglip2", "dinov2_reg", "mae", "webssl"]


@dataclasses.dataclass(frozen=True)
class _FamilySpec:
    model_cls: str                 # transformers class name
    config_cls: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    has_cls: bool                  # a CLS token precedes the patch tokens
    config_extra: tuple[tuple[str, Any], ...] = ()   # forced model-config values


_FAMILIES: dict[str, _FamilySpec] = {
    # SigLIP normalises pixels to [-1, 1] (mean = std = 0.5).
    # The attention-pooling head is never used for latents; dropping it also keeps ZeRO-3 from
    # touching its un-gathered nn.MultiheadAttention weights.
    "siglip2": _FamilySpec("SiglipVisionModel", "SiglipVisionConfig", (0.5,) * 3, (0.5,) * 3, has_cls=False,
                           config_extra=(("vision_use_head", False),)),
    "dinov2_reg": _FamilySpec("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                              IMAGENET_MEAN, IMAGENET_STD, has_cls=True),
    # mask_ratio 0 keeps every patch; the ascending noise passed in forward keeps their order.
    "mae": _FamilySpec("ViTMAEModel", "ViTMAEConfig", IMAGENET_MEAN, IMAGENET_STD, has_cls=True,
                       config_extra=(("mask_ratio", 0.0),)),
    "webssl": _FamilySpec("Dinov2Model", "Dinov2Config", IMAGENET_MEAN, IMAGENET_STD, has_cls=True),
}

SCALE_RAE_LN_EPS = 1e-6


@dataclasses.dataclass
class EncoderConfig(Config):
    family: Family = "siglip2"
    pretrained: str | None = None          # local directory (or hub id, offline only if cached)
    image_size: int = 224                  # encoder input resolution; images are resized to it
    patch_size: int = 14
    hidden_size: int = 1152                # latent channels C
    # Architecture overrides used when building without weights (tiny test models); None = the
    # transformers config default. With `pretrained` they are checked against the checkpoint.
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    normalization: Literal["layernorm", "standardize"] = "layernorm"
    # The full transformers config; written by RAE.save_pretrained so a saved directory rebuilds
    # the architecture without the original checkpoint.
    model_config: dict | None = None

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(f"encoder.image_size ({self.image_size}) must be a multiple of encoder.patch_size ({self.patch_size})")
        if self.hidden_size < 1:
            raise ConfigError(f"encoder.hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_attention_heads is not None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"encoder.hidden_size ({self.hidden_size}) must be divisible by encoder.num_attention_heads ({self.num_attention_heads})")
        if self.model_config is not None:
            for key in ("hidden_size", "patch_size"):
                if self.model_config.get(key) != getattr(self, key):
                    raise ConfigError(f"encoder.{key}={getattr(self, key)} disagrees with encoder.model_config ({self.model_config.get(key)}); fix one of them")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def channels(self) -> int:
        return self.hidden_size


# The encoders RAE and Scale-RAE use, with their released weights, and tiny random ones for tests.
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "siglip2-so400m-p14-224": dict(family="siglip2", pretrained="google/siglip2-so400m-patch14-224",
                                   image_size=224, patch_size=14, hidden_size=1152),
    "siglip2-b-p16-256": dict(family="siglip2", pretrained="google/siglip2-base-patch16-256",
                              image_size=256, patch_size=16, hidden_size=768),
    "dinov2-reg-b": dict(family="dinov2_reg", pretrained="facebook/dinov2-with-registers-base",
                         image_size=224, patch_size=14, hidden_size=768, normalization="standardize"),
    "mae-b-p16-256": dict(family="mae", pretrained="facebook/vit-mae-base",
                          image_size=256, patch_size=16, hidden_size=768, normalization="standardize"),
    "webssl-dino300m": dict(family="webssl", pretrained="facebook/webssl-dino300m-full2b-224",
                            image_size=224, patch_size=14, hidden_size=1024, normalization="standardize"),
}
for _family in _FAMILIES:
    ENCODER_PRESETS[f"tiny-{_family}"] = dict(family=_family, image_size=32, patch_size=8, hidden_size=32,
                                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def encoder_preset(name: str, **changes: Any) -> EncoderConfig:
    if name not in ENCODER_PRESETS:
        raise ConfigError(f"unknown encoder preset {name!r}; choose one of {sorted(ENCODER_PRESETS)}")
    return EncoderConfig.from_dict({**ENCODER_PRESETS[name], **changes})


def _hf_config_dict(hf_config) -> dict:
    """A JSON-safe dict of a transformers config (what `save_pretrained` would write)."""
    return json.loads(hf_config.to_json_string(use_diff=False))


class FrozenEncoder(nn.Module):
    """A frozen vision backbone mapping images in [0, 1] to normalised patch tokens [B, N, C].

    Parameters never require grad and the module stays in eval mode even under ``.train()``;
    gradients still flow to the *input* (the encoder-feature perceptual loss relies on that).
    """

    def __init__(self, config: EncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.spec = _FAMILIES[config.family]
        self.model = _build_backbone(config, self.spec, load_weights)
        hf = self.model.config
        self.num_prefix_tokens = (1 + getattr(hf, "num_register_tokens", 0)) if self.spec.has_cls else 0
        self.final_norm_eps = float(hf.layer_norm_eps)
        # Interpolate position embeddings when the input size differs from the checkpoint's
        # (MAE-B was trained at 224 but RAE feeds it 256 px for a 16x16 grid).
        self.interpolate = config.image_size != hf.image_size
        self.register_buffer("pixel_mean", torch.tensor(self.spec.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.spec.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        # Frozen: dropout / drop-path stay off whatever the enclosing module's mode.
        return self

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    def model_config_dict(self) -> dict:
        return _hf_config_dict(self.model.config)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1], any size -> [B, 3, S, S] normalised encoder input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            # In float32: CPU has no bf16 kernel for antialiased resizing, and a bf16 encoder (a
            # DeepSpeed bf16 engine) is handed bf16 images.
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False).to(images.dtype)
        return (images - self.pixel_mean) / self.pixel_std

    def hidden_states(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Patch tokens after the embedding and after every layer, [B, N, C] each, prefix dropped.

        The last entry is the final layer's output *before* the model's final layer norm.
        """
        x = self.preprocess(images)
        kwargs: dict[str, Any] = {"output_hidden_states": True}
        if self.config.family in ("siglip2", "mae"):
            kwargs["interpolate_pos_encoding"] = self.interpolate
        if self.config.family == "mae":
            # ViTMAE keeps the tokens with the smallest noise, in ascending order: an increasing
            # ramp makes the "shuffle" the identity.
            n = self.num_tokens
            kwargs["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        out = self.model(pixel_values=x, **kwargs)
        return tuple(h[:, self.num_prefix_tokens:] for h in out.hidden_states)

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Affine-free per-token layer norm of the final hidden state (Scale-RAE's latent normalisation)."""
        eps = SCALE_RAE_LN_EPS if self.config.normalization == "layernorm" else self.final_norm_eps
        return F.layer_norm(h, (h.shape[-1],), eps=eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.hidden_states(images)[-1]        # [B, N, C]
        if h.shape[1] != self.num_tokens:
            raise RuntimeError(f"{self.config.family} encoder produced {h.shape[1]} tokens, expected {self.num_tokens}")
        return self.normalize(h)

    encode = forward


def _build_backbone(config: EncoderConfig, spec: _FamilySpec, load_weights: bool) -> nn.Module:
    import transformers  # heavy; only when an encoder is actually built

    model_cls = getattr(transformers, spec.model_cls)
    config_cls = getattr(transformers, spec.config_cls)
    forced = dict(spec.config_extra)
    if config.model_config is not None:
        hf_config = config_cls.from_dict({**config.model_config, **forced})
    elif config.pretrained is None:
        sizes = dict(hidden_size=config.hidden_size, patch_size=config.patch_size, image_size=config.image_size,
                     num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                     intermediate_size=config.intermediate_size)
        hf_config = config_cls(**{k: v for k, v in sizes.items() if v is not None}, **forced)
    else:
        hf_config = None

    if config.pretrained is not None and load_weights:
        try:
            if hf_config is None:   # the checkpoint's own config with the forced values set on it: passed as
                # from_pretrained kwargs, some transformers 5 releases drop them or hand them to the model's __init__
                hf_config = config_cls.from_pretrained(config.pretrained)
                for key, value in forced.items():
                    setattr(hf_config, key, value)
            model, info = model_cls.from_pretrained(config.pretrained, config=hf_config, output_loading_info=True)
        except OSError as e:
            raise FileNotFoundError(f"encoder weights {config.pretrained!r} not found locally: {str(e).splitlines()[0]}") from None
        # Unexpected keys are normal (a full SigLIP checkpoint also holds the text tower); a
        # missing or mis-shaped key would leave random weights in a "pretrained" encoder.
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ConfigError(f"encoder checkpoint {config.pretrained!r} does not fit {spec.model_cls}: "
                              f"missing {sorted(info['missing_keys'])[:8]}, mismatched {list(info['mismatched_keys'])[:8]}")
    else:
        if hf_config is None:
            raise ConfigError("encoder: set encoder.model_config (or load weights) to build a pretrained encoder without its checkpoint")
        model = model_cls(hf_config)
    _check_matches(config, model.config)
    return model


def _check_matches(config: EncoderConfig, hf) -> None:
    for key in ("hidden_size", "patch_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        want = getattr(config, key)
        if want is not None and getattr(hf, key) != want:
            raise ConfigError(f"encoder.{key}={want} but the {config.family} model has {getattr(hf, key)}; set encoder.{key}={getattr(hf, key)}")
