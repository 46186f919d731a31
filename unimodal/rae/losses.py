"""Decoder training losses (RAE sec. 3 / Scale-RAE): L1 + wL * perceptual + wG * Gram + wA * lambda * GAN.

Pure functions plus two small frozen perceptual modules:

- :class:`VGGLPIPS` (``name = "lpips"``): LPIPS v0.1 with a VGG-16 trunk (Zhang et al. 2018), the
  RAE recipe. It needs torchvision's ImageNet VGG-16 weights in the torch hub cache and the
  calibrated linear weights that ship inside the ``lpips`` package. It is never built with a
  random trunk: a random VGG would give a meaningless loss.
- :class:`EncoderPerceptualLoss` (``name = "encoder-perceptual"``): the documented substitute when
  the VGG weights are not on this machine: LPIPS's unit-normalised feature distance, computed on
  hidden states of the frozen RAE encoder at a few depths (no learned channel weights).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.config import Config, ConfigError
from unimodal.utils.weights import WeightLoadError


@dataclasses.dataclass
class DecoderLossConfig(Config):
    l1_weight: float = 1.0
    perceptual: Literal["auto", "lpips", "encoder"] = "auto"   # auto: LPIPS if its weights are local
    perceptual_weight: float = 1.0        # RAE: 1.0, from the start
    gram_weight: float = 0.0              # Scale-RAE adds a Gram (style) term; off in the RAE recipe
    gan_weight: float = 0.75              # RAE: 0.75 x adaptive lambda
    disc_start_step: int = 0              # optimiser step at which the discriminator starts training
    gan_start_step: int = 0               # step at which the generator gets the GAN term
    adaptive_weight_max: float = 1e4
    encoder_layers: list[int] | None = None   # depths for encoder-perceptual; None = 4 evenly spaced

    def __post_init__(self) -> None:
        for name in ("l1_weight", "perceptual_weight", "gram_weight", "gan_weight", "adaptive_weight_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start_step < 0 or self.gan_start_step < 0:
            raise ConfigError("loss.disc_start_step and loss.gan_start_step must be >= 0")
        if self.gan_weight > 0 and self.gan_start_step < self.disc_start_step:
            raise ConfigError(f"loss.gan_start_step ({self.gan_start_step}) is before loss.disc_start_step ({self.disc_start_step}); "
                              "the generator would learn from an untrained discriminator")

    @property
    def uses_gan(self) -> bool:
        return self.gan_weight > 0


# ---------------------------------------------------------------------------------------------
# Pure loss functions
# ---------------------------------------------------------------------------------------------

def l1_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on [0, 1] pixels."""
    return (recon - target).abs().mean()


def _unit_normalize(f: torch.Tensor, dim: int) -> torch.Tensor:
    # LPIPS's normalize_tensor: divide by the channel L2 norm (+1e-10).
    return f / (f.pow(2).sum(dim, keepdim=True).sqrt() + 1e-10)


def _as_tokens(f: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C]; [B, N, C] unchanged."""
    return f.flatten(2).transpose(1, 2) if f.ndim == 4 else f


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrix [B, C, C] normalised by the number of positions and channels (Gatys et al. 2016)."""
    f = _as_tokens(features).float()            # [B, N, C]
    n, c = f.shape[1], f.shape[2]
    return f.transpose(1, 2) @ f / (n * c)


def gram_loss(feats_recon: list[torch.Tensor], feats_target: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the squared Frobenius distance between Gram matrices (per element mean)."""
    if len(feats_recon) != len(feats_target) or not feats_recon:
        raise ValueError("gram_loss needs the same non-zero number of recon and target feature maps")
    terms = [F.mse_loss(gram_matrix(r), gram_matrix(t)) for r, t in zip(feats_recon, feats_target)]
    return torch.stack(terms).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), halved (Lim & Ye 2017)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss: -mean(D(fake))."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, param: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-6) -> torch.Tensor:
    """lambda = ||grad_W rec|| / (||grad_W gan|| + eps), clamped to [0, max_weight], detached.

    W is the decoder's last linear weight (VQGAN, Esser et al. 2021, eq. 7; RAE keeps it). Both
    losses must still have their graphs; they are retained for the real backward pass.
    """
    g_rec, = torch.autograd.grad(rec_loss, param, retain_graph=True)
    g_gan, = torch.autograd.grad(gan_loss, param, retain_graph=True)
    return _ratio(g_rec, g_gan, max_weight, eps)


def adaptive_weight_at_output(rec_loss: torch.Tensor, gan_loss: torch.Tensor, images: torch.Tensor,
                              to_linear_output: Callable[[torch.Tensor], torch.Tensor], linear_input: torch.Tensor,
                              max_weight: float = 1e4, eps: float = 1e-6) -> torch.Tensor:
    """The same lambda, differentiating only down to `images` instead of to W.

    `images` is computed from the last linear layer's output y = h W^T + b by a fixed linear map
    (for the decoder: drop CLS, unpatchify, de-normalise); `to_linear_output` is that map's adjoint,
    turning dL/d(images) into dL/dy, and `linear_input` is h at the same positions. Then
    grad_W L = sum over positions of (dL/dy)^T h. Stopping at `images`, outside the DDP /
    DeepSpeed-wrapped decoder, keeps their backward hooks quiet: DeepSpeed ZeRO-2 takes any
    gradient pass through its module's output for the real backward and fails; ZeRO-3's
    partitioned W is never needed either.
    """
    g_rec, = torch.autograd.grad(rec_loss, images, retain_graph=True)
    g_gan, = torch.autograd.grad(gan_loss, images, retain_graph=True)
    h = linear_input.detach().float().flatten(0, -2)                         # [M, D]
    grad_w = lambda g: to_linear_output(g).float().flatten(0, -2).t() @ h    # noqa: E731  [P, D]
    return _ratio(grad_w(g_rec), grad_w(g_gan), max_weight, eps)


def _ratio(g_rec: torch.Tensor, g_gan: torch.Tensor, max_weight: float, eps: float) -> torch.Tensor:
    lam = g_rec.float().norm() / (g_gan.float().norm() + eps)
    return lam.clamp(0.0, max_weight).detach()


class LinearIO:
    """Keeps the latest input and output of a linear layer (a forward hook), for adaptive_weight_at_output."""

    def __init__(self, layer: nn.Linear) -> None:
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.input, self.output = args[0], output


# ---------------------------------------------------------------------------------------------
# Perceptual losses
# ---------------------------------------------------------------------------------------------

def vgg16_weights_path() -> str:
    """Where torchvision keeps ImageNet VGG-16 weights (torch hub cache)."""
    from torchvision.models import VGG16_Weights

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG16_Weights.IMAGENET1K_V1.url))


def lpips_available() -> bool:
    return os.path.isfile(vgg16_weights_path())


class VGGLPIPS(nn.Module):
    """LPIPS v0.1 / VGG-16 on [0, 1] images; loaded strictly from local files only."""

    name = "lpips"
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 end at these indices of vgg16().features.
    SLICE_ENDS = (4, 9, 16, 23, 30)
    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        import lpips
        from torchvision.models.vgg import cfgs, make_layers

        path = vgg16_weights_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG-16 weights for LPIPS not found at {path}; use loss.perceptual=encoder or place the file there")
        # VGG-16 ("D") conv stack up to relu5_3, without the 100M-parameter classifier.
        self.features = make_layers(cfgs["D"])[: self.SLICE_ENDS[-1]]
        state = torch.load(path, map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        other = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
        if other:
            raise WeightLoadError(f"{path}: unexpected keys {other[:8]}")
        expected = self.features.state_dict()
        if set(feats) != set(expected):
            raise WeightLoadError(f"{path}: VGG-16 feature keys differ: missing {sorted(set(expected) - set(feats))[:8]}")
        self.features.load_state_dict(feats, strict=True)
        # LPIPS's calibrated per-channel weights ship in the package: lin{k}.model.1.weight [1, C, 1, 1].
        lin_path = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
        lins = torch.load(lin_path, map_location="cpu", weights_only=True)
        want = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(self.CHANNELS)}
        if {k: tuple(v.shape) for k, v in lins.items()} != want:
            raise WeightLoadError(f"{lin_path}: expected {want}, found {sorted(lins)}")
        for k in range(len(self.CHANNELS)):
            self.register_buffer(f"lin{k}", lins[f"lin{k}.model.1.weight"])
        # LPIPS ScalingLayer constants (inputs in [-1, 1]).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VGGLPIPS":
        return self

    def features_of(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (2 * images - 1 - self.shift) / self.scale
        out, start = [], 0
        for end in self.SLICE_ENDS:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out

    def distance(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
        """Per-sample LPIPS [B] from precomputed features."""
        total = 0.0
        for k, (fa, fb) in enumerate(zip(feats_a, feats_b)):
            d = (_unit_normalize(fa, 1) - _unit_normalize(fb, 1)) ** 2
            total = total + F.conv2d(d, getattr(self, f"lin{k}")).mean((1, 2, 3))
        return total

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features_of(recon), self.features_of(target)).mean()


class EncoderPerceptualLoss(nn.Module):
    """Unit-normalised feature distance on the frozen encoder's hidden states (LPIPS without lins)."""

    name = "encoder-perceptual"

    def __init__(self, encoder: nn.Module, layers: list[int] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        n = encoder.model.config.num_hidden_layers
        # hidden_states has n + 1 entries (embeddings, then each layer); default: 4 evenly spaced layers.
        self.layers = list(layers) if layers is not None else sorted({max(1, round(n * f)) for f in (0.25, 0.5, 0.75, 1.0)})
        bad = [i for i in self.layers if not 0 <= i <= n]
        if bad:
            raise ConfigError(f"loss.encoder_layers {bad} out of range 0..{n} for this encoder")

    def features_of(self, images: torch.Tensor) -> list[torch.Tensor]:
        hs = self.encoder.hidden_states(images)
        return [hs[i] for i in self.layers]

    def distance(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for fa, fb in zip(feats_a, feats_b):
            total = total + ((_unit_normalize(fa.float(), -1) - _unit_normalize(fb.float(), -1)) ** 2).sum(-1).mean(-1)
        return total / len(feats_a)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features_of(recon), self.features_of(target)).mean()


def build_perceptual_loss(kind: str, encoder: nn.Module, encoder_layers: list[int] | None = None) -> nn.Module:
    """'lpips' (error if its weights are missing), 'encoder', or 'auto' (LPIPS if present, else warn + encoder)."""
    if kind == "lpips" or (kind == "auto" and lpips_available()):
        return VGGLPIPS()
    if kind == "auto":
        warnings.warn(f"LPIPS disabled: VGG-16 weights not found at {vgg16_weights_path()}; "
                      "using the encoder-feature perceptual loss instead (logged as 'encoder-perceptual')", stacklevel=2)
    elif kind != "encoder":
        raise ConfigError(f"unknown perceptual loss {kind!r}; use auto, lpips or encoder")
    return EncoderPerceptualLoss(encoder, encoder_layers)
