"""The RAE decoder's discriminator: frozen DINO ViT features at several depths + spectral-norm heads.

RAE (sec. 3, following StyleGAN-T / projected GANs) scores images with small trainable heads on
top of a *frozen* self-supervised ViT (DINO ViT-S/8), applying DiffAugment to real and fake
images and quantising fakes to 8 bit so the discriminator cannot tell them apart by their
sub-quantum values. The heads here are spectral-norm 1x1 / 3x3 convolutions on each depth's
token grid with a residual block; StyleGAN-T's local batch norm is left out (one less piece of
cross-rank state), spectral norm alone bounds the heads' Lipschitz constant.
"""
from __future__ import annotations

import dataclasses
import os
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from unimodal.config import Config, ConfigError
from unimodal.utils.weights import load_state_dict_strict


@dataclasses.dataclass
class DiscriminatorConfig(Config):
    backbone: str = "vit_small_patch8_224.dino"   # a timm model name
    pretrained: bool = True                      # load the backbone's weights (local files only)
    weights_file: str | None = None              # explicit file; else timm's entry in the HF cache
    backbone_kwargs: dict = dataclasses.field(default_factory=dict)   # timm overrides (tiny tests)
    image_size: int = 224                        # backbone input resolution
    layers: list[int] = dataclasses.field(default_factory=lambda: [2, 5, 8, 11])   # block indices
    head_channels: int = 128
    diffaug: bool = True
    translation: float = 0.125                   # DiffAugment translation, fraction of the side

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("discriminator.layers must name at least one backbone block")
        if self.head_channels < 1 or self.image_size < 1:
            raise ConfigError("discriminator.head_channels and discriminator.image_size must be >= 1")
        if not 0 <= self.translation < 0.5:
            raise ConfigError(f"discriminator.translation must be in [0, 0.5), got {self.translation}")
        if self.weights_file is not None and not self.pretrained:
            raise ConfigError("discriminator.weights_file is set but discriminator.pretrained=false; drop one")


# ---------------------------------------------------------------------------------------------
# DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training")
# ---------------------------------------------------------------------------------------------

def diff_augment(x: torch.Tensor, translation: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Colour (brightness, saturation, contrast) then translation with zero padding, per sample.

    `x` is [B, 3, H, W] in [0, 1]; the colour ranges are DiffAugment's, stated for [-1, 1] images,
    so brightness U(-0.5, 0.5) becomes U(-0.25, 0.25) here. Differentiable w.r.t. `x`.
    """
    b, dev, dt = x.shape[0], x.device, x.dtype
    u = lambda: torch.rand(b, 1, 1, 1, device=dev, dtype=dt, generator=generator)  # noqa: E731
    x = x + (u() - 0.5) * 0.5                                   # brightness
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (u() * 2) + mean_c                       # saturation x U(0, 2)
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean_all) * (u() + 0.5) + mean_all                 # contrast x U(0.5, 1.5)
    if translation > 0:
        x = _translate(x, translation, generator)
    return x


def _translate(x: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device, generator=generator)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device, generator=generator)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    # Output pixel (y, x) reads input (y - ty, x - tx) of a zero-padded copy (DiffAugment's gather).
    ys = (gy.unsqueeze(0) - ty + 1).clamp(0, h + 1)            # [B, H, W] in padded coordinates
    xs = (gx.unsqueeze(0) - tx + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))                              # [B, C, H+2, W+2]
    flat = padded.flatten(2)                                     # [B, C, (H+2)(W+2)]
    index = (ys * (w + 2) + xs).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
    return flat.gather(2, index).view_as(x)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels with a straight-through gradient."""
    q = torch.round(x.clamp(0, 1) * 255) / 255
    return x + (q - x).detach()


# ---------------------------------------------------------------------------------------------
# The discriminator
# ---------------------------------------------------------------------------------------------

class _Head(nn.Module):
    """SN 1x1 conv -> LeakyReLU -> residual SN 3x3 conv block -> SN 1x1 conv to one logit per position."""

    def __init__(self, c_in: int, c: int) -> None:
        super().__init__()
        self.inp = spectral_norm(nn.Conv2d(c_in, c, 1))
        self.res = spectral_norm(nn.Conv2d(c, c, 3, padding=1))
        self.out = spectral_norm(nn.Conv2d(c, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.inp(f), 0.2)
        h = h + F.leaky_relu(self.res(h), 0.2)
        return self.out(h).flatten(1)                            # [B, h*w]


def _build_backbone(config: DiscriminatorConfig) -> nn.Module:
    import timm

    model = timm.create_model(config.backbone, pretrained=False, num_classes=0, img_size=config.image_size,
                              **config.backbone_kwargs)
    if not config.pretrained:
        return model
    path = config.weights_file or _cached_timm_weights(model, config.backbone)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"discriminator backbone weights not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Classification heads are not part of a feature backbone (num_classes=0).
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_state_dict_strict(model, state, source=path)
    return model


def _cached_timm_weights(model: nn.Module, name: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    repo = model.pretrained_cfg.get("hf_hub_id")
    found = try_to_load_from_cache(repo, "model.safetensors") if repo else None
    if not isinstance(found, str):
        raise FileNotFoundError(f"pretrained weights for discriminator backbone {name!r} are not on this machine "
                                f"(looked for {repo}/model.safetensors in the HF cache); set discriminator.weights_file "
                                "or discriminator.pretrained=false")
    return found


class Discriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _build_backbone(config)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        depth = len(self.backbone.blocks)
        bad = [i for i in config.layers if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"discriminator.layers {bad} out of range for {config.backbone} with {depth} blocks")
        cfg = self.backbone.pretrained_cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
        self.heads = nn.ModuleList(_Head(self.backbone.embed_dim, config.head_channels) for _ in config.layers)

    def train(self, mode: bool = True) -> "Discriminator":
        super().train(mode)
        self.backbone.eval()           # frozen features: no dropout / drop-path
        return self

    def forward(self, images: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> logits [B, M] (one per position per depth)."""
        if augment and self.config.diffaug:
            images = diff_augment(images, self.config.translation)
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (images - self.pixel_mean) / self.pixel_std
        feats = self.backbone.forward_intermediates(x, indices=list(self.config.layers), intermediates_only=True,
                                                    output_fmt="NCHW")   # each [B, C, h, w]
        return torch.cat([head(f) for head, f in zip(self.heads, feats)], dim=1)


def generator_logits(disc: Discriminator, images: torch.Tensor) -> torch.Tensor:
    """D(images) for the generator's loss: D's weights act as constants and D is in eval mode.

    Gradients reach `images` only, so the decoder's backward never writes into the
    discriminator's `.grad` (which its own step accumulates), and spectral norm's power iteration
    does not advance on generator passes.
    """
    constants = {k: p.detach() for k, p in disc.named_parameters() if p.requires_grad}
    was_training = disc.training
    disc.eval()
    try:
        return torch.func.functional_call(disc, constants, (images,), strict=False)
    finally:
        disc.train(was_training)
