"""The RAE and Scale-RAE papers' findings, re-run at toy scale on the Shapes world (issue #5 part 6).

One shared experiment: class-conditional generation of single-object Shapes scenes, a class being
a (colour, shape) pair of the world. Render `train_images` scenes, encode them once with the
model's frozen encoder (the latent cache lives in memory), train a small class-conditional DiT
(`unimodal.dit`, flow matching), sample `samples_per_class` latents per class, decode them and
score *generation accuracy*: the fraction of samples in which ShapesEval's detector finds exactly
one object, of the requested colour and shape ("color_accuracy" drops the shape; the detector's
accuracy on decoded real latents, "reconstruction_accuracy", is the ceiling through a decoder).
Each finding changes one thing:

- shift: the dimension-dependent time shift alpha = sqrt(N * C / 4096) vs alpha = 1, in training
  and sampling (RAE paper section 4.2; Scale-RAE calls it the single most important knob). At the
  shipped 64 x 96 latent the formula gives only ~1.22, so a third run uses `shift_scale`
  times it (the recipe's shift): the formula's base 4096 is an ImageNet VAE latent's size, not this
  world's. The other findings' DiTs all use that shift.
- dh: LightningDiT vs DiT^DH, the same body plus a wide shallow head (RAE paper section 5).
- noise: two RAE decoders trained on the frozen encoder, with and without noise-augmented decoding
  (RAE paper section 3.2, tau > 0 in training only): clean reconstruction PSNR of each, and the
  accuracy of the same DiT samples decoded by each.
- vae: a small convolutional VAE (diffusers' AutoencoderKL, the RAE's latent grid) trained from
  scratch for the RAE decoders' budget, then a DiT of the same size on its latents; accuracy curves
  of both DiTs and the steps each needs to reach the VAE DiT's final accuracy (Scale-RAE: RAE
  converges ~4x faster). The RAE side decodes with the model's own decoder.

Every function is seeded and single-process; `run_finding` returns one JSON-ready dict whose
"conclusion" is computed from the measured numbers (`compare` decides whether a difference is
larger than two standard errors of the accuracy difference; smaller ones are called a tie).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from unimodal.config import Config, ConfigError
from unimodal.dit import (DiT, DiTConfig, SamplerConfig, dimension_shift, flow_matching_loss, noise_from_seeds, sample,
                          sample_drop, sample_time)
from unimodal.rae.autoencoder import RAE
from unimodal.rae.decoder import RAEDecoder
from unimodal.rae.losses import EncoderPerceptualLoss, l1_loss
from unimodal.rae.metrics import psnr
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.detect import Detection, detect_objects
from unimodal.shapes.recipe.run import SHIFT_SCALE
from unimodal.shapes.scene import Scene, image_to_tensor, render_scene
from unimodal.shapes.world import item_rng, place_objects, random_size
from unimodal.train.logging import check_finite
from unimodal.train.schedule import warmup_cosine

FINDINGS = ("shift", "dh", "noise", "vae")
Log = Callable[[str], None]
Codec = Callable[[torch.Tensor], torch.Tensor]   # images [B, 3, S, S] <-> latents [B, N, C]


@dataclasses.dataclass
class FindingSettings(Config):
    seed: int = 0
    # Data: balanced over the classes; held-out renders measure PSNR and the decoder's ceiling.
    train_images: int = 2000
    eval_images: int = 100
    # DiT (class-conditional LightningDiT) and its training.
    dit_width: int = 128
    dit_depth: int = 2
    dit_heads: int = 4
    head_width: int = 192            # DiT^DH head, 1.5x the body (DiT^DH-XL: 2048 over 1152); dh only
    head_depth: int = 2
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    # Sampling and scoring.
    samples_per_class: int = 2
    num_inference_steps: int = 20
    guidance_scale: float = 1.0      # 1 = no guidance; at a few hundred steps 2 and 4 scored lower
    checkpoints: int = 5             # vae finding: accuracy measured every steps / checkpoints
    # The recipe's shift: every DiT here trains and samples at shift_scale x the dimension shift,
    # except the shift finding's alpha = formula and alpha = 1 runs.
    shift_scale: float = SHIFT_SCALE
    # Pixel decoders, one budget (steps x batch) for each: the noise finding's two RAE decoders and
    # the vae finding's VAE. The RAE decoders start from the model's own ("model") or from scratch
    # ("scratch": a few minutes then decode no object at all); the VAE always starts from scratch.
    decoder_init: Literal["model", "scratch"] = "model"
    decoder_steps: int = 600
    decoder_batch: int = 8           # at one budget, 8 x 600 taught the VAE more than 16 x 300
    decoder_lr: float = 5e-4         # a fine-tuning rate; decoder_init scratch wants ~2e-3
    perceptual_weight: float = 0.1   # L1 + this x the encoder-perceptual loss (no VGG weights needed)
    noise_tau: float = 0.8           # RAE's tau for the noise-augmented decoder
    vae_channels: int = 16           # VAE latent channels (FLUX-VAE has 16)
    vae_kl_weight: float = 1e-4
    vae_lr: float = 2e-3             # the VAE always trains from scratch

    def __post_init__(self) -> None:
        for name in ("train_images", "eval_images", "dit_width", "dit_depth", "dit_heads", "head_width", "head_depth",
                     "steps", "batch_size", "samples_per_class", "num_inference_steps", "checkpoints", "decoder_steps",
                     "decoder_batch", "vae_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "decoder_lr", "vae_lr", "guidance_scale", "shift_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.noise_tau <= 0:
            raise ConfigError(f"noise_tau must be > 0 (the noise finding compares it with 0), got {self.noise_tau}")
        if self.checkpoints > self.steps:
            raise ConfigError(f"checkpoints={self.checkpoints} exceeds steps={self.steps}")


# About 30 s a finding on one CPU core with the shipped model (the tests use it on a tiny model).
QUICK = dict(train_images=200, eval_images=20, steps=40, batch_size=16, samples_per_class=1, num_inference_steps=4,
             dit_depth=1, head_depth=1, decoder_steps=30, checkpoints=2)


def finding_settings(quick: bool = False, **changes) -> FindingSettings:
    """The default settings (a few minutes a finding on one core), or the --quick ones, with changes."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return FindingSettings.from_dict({**(QUICK if quick else {}), **changes})


# ------------------------------------------------------------------------------------------- world

def single_object_world(image_size: int) -> ShapesConfig:
    """The default Shapes world at `image_size`, one object a scene; small images get the smallest
    object (8 px) and gap (2 px) the world allows."""
    base = ShapesConfig()
    min_size = max(base.min_size, 8 / image_size)
    return ShapesConfig(image_size=image_size, min_objects=1, max_objects=1, min_size=min_size,
                        max_size=max(base.max_size, min_size), min_gap=max(base.min_gap, 2 / image_size))


def class_names(world: ShapesConfig) -> list[tuple[str, str]]:
    """(colour, shape) of each class label, shape-major: label = shape index * colours + colour index."""
    return [(color, shape) for shape in world.shapes for color in world.colors]


def render_class_images(world: ShapesConfig, count: int, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` single-object scenes, label i % classes for item i, each at a random place and size
    drawn from its own generator (seed, split, i): images [count, 3, S, S] in [0, 1], labels [count]."""
    classes = class_names(world)
    images, labels = [], []
    for i in range(count):
        label = i % len(classes)
        color, shape = classes[label]
        rng = item_rng(seed, split, i)
        objects = place_objects([(shape, color, random_size(world, rng))], world, rng)
        images.append(image_to_tensor(render_scene(Scene(objects), world)))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def is_correct(detections: Sequence[Detection], color: str, shape: str | None = None) -> bool:
    """Exactly one object, of the requested colour and (unless None) shape."""
    return len(detections) == 1 and detections[0].color == color and shape in (None, detections[0].shape)


def generation_scores(images: torch.Tensor, labels: torch.Tensor, world: ShapesConfig,
                      by_shape: bool = False) -> dict:
    """Over images [B, 3, S, S] in [0, 1] and their class labels: "accuracy", the fraction that
    `is_correct` (one object, right colour and shape), and "color_accuracy", the fraction with one
    object of the right colour (whatever its shape; a finer signal while shapes are still blobs).
    `by_shape` adds "accuracy_by_shape": the accuracy over the images of each of the world's shapes."""
    classes = class_names(world)
    hits: dict[str, list[bool]] = {shape: [] for shape in world.shapes}
    color_hits = 0
    for img, y in zip(images, labels):
        color, shape = classes[int(y)]
        found = detect_objects(img.permute(1, 2, 0).clamp(0, 1).numpy(), world)
        hits[shape].append(is_correct(found, color, shape))
        color_hits += is_correct(found, color)
    n = max(1, len(labels))
    scores = {"accuracy": round(sum(map(sum, hits.values())) / n, 4), "color_accuracy": round(color_hits / n, 4)}
    if by_shape:
        scores["accuracy_by_shape"] = {shape: round(sum(h) / max(1, len(h)), 4) for shape, h in hits.items()}
    return scores


class PixelCodec:
    """The lossless control codec: each p x p x 3 pixel patch is one latent token of 3 p^2 channels
    in [-1, 1], row-major over the grid like an encoder's tokens. A DiT on it generates pixels
    directly; the speed it learns at is what a representation has to match (issue #14)."""

    def __init__(self, image_size: int, patch_size: int):
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.grid, self.patch = image_size // patch_size, patch_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        b, g, p = len(images), self.grid, self.patch
        x = (2 * images - 1).reshape(b, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5)    # [B, g, g, 3, p, p]
        return x.reshape(b, g * g, 3 * p * p)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        b, g, p = len(tokens), self.grid, self.patch
        x = tokens.reshape(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * p, g * p)
        return ((x + 1) / 2).clamp(0, 1)


class Whitening:
    """PCA whitening of latent tokens, fitted on training latents [T, N, C]: `encode` maps tokens to
    unit variance in every direction, `decode(codec_decode)` maps back before a codec's decoder.

    Why: flow matching adds isotropic unit noise, so a latent direction of standard deviation s
    is only resolvable at times t < s / (1 + s). The tiny tower's token spectrum spans ~5,000x in
    variance (s from 3 down to ~0.04), so whatever lives in its small directions forms only in
    the last few percent of t, which logit-normal times shifted by ~3.7 almost never train. Whitened,
    every direction forms at the same noise level (the per-element standardisation of the RAE
    paper's latent statistics, taken across channels)."""

    def __init__(self, latents: torch.Tensor, floor: float = 1e-4):
        x = latents.reshape(-1, latents.shape[-1]).double()
        self.mean = x.mean(0)
        var, vectors = torch.linalg.eigh(torch.cov((x - self.mean).T))
        scale = var.clamp_min(floor * var.max()).rsqrt()       # the floor keeps null directions finite
        self.forward_map, self.inverse_map = vectors * scale, (vectors / scale).T
        self.mean, self.forward_map, self.inverse_map = (t.float() for t in (self.mean, self.forward_map,
                                                                             self.inverse_map))

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.mean) @ self.forward_map

    def decode(self, codec_decode: Codec) -> Codec:
        return lambda latents: codec_decode(latents @ self.inverse_map + self.mean)


# ----------------------------------------------------------------------------- reading the numbers

def compare(a: float, b: float, n: int, z: float = 2.0) -> int:
    """+1 if accuracy a is clearly above b, -1 if clearly below, 0 if within z standard errors.

    Both are fractions of n samples; the standard error of their difference is sqrt(2 p (1 - p) / n)
    with the pooled p kept at least 1/n from 0 and 1, so one lucky sample is never "clear".
    """
    if n < 1:
        raise ValueError(f"compare needs n >= 1 samples, got {n}")
    p = min(max((a + b) / 2, 1 / n), 1 - 1 / n) if n > 1 else 0.5
    se = math.sqrt(2 * p * (1 - p) / n)
    return 0 if abs(a - b) <= z * se else (1 if a > b else -1)


def steps_to_reach(curve: Sequence[Sequence[float]], target: float) -> int | None:
    """The first step of a [(step, accuracy, ...), ...] curve whose accuracy is >= target; None if none."""
    return next((int(point[0]) for point in curve if point[1] >= target), None)


def describe(name_a: str, a: float, name_b: str, b: float, n: int) -> str:
    """One sentence comparing two accuracies over n samples each, from `compare`."""
    verdict = compare(a, b, n)
    if verdict == 0:
        return f"{name_a} ({a:.3f}) and {name_b} ({b:.3f}) tie within 2 standard errors at n={n}"
    hi, lo = ((name_a, a), (name_b, b)) if verdict > 0 else ((name_b, b), (name_a, a))
    return f"{hi[0]} ({hi[1]:.3f}) beats {lo[0]} ({lo[1]:.3f}) by more than 2 standard errors at n={n}"


# ------------------------------------------------------------------------------ the shared pipeline

@torch.no_grad()
def encode_all(encode: Codec, images: torch.Tensor, batch: int = 200) -> torch.Tensor:
    return torch.cat([encode(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def decode_all(decode: Codec, latents: torch.Tensor, batch: int = 200) -> torch.Tensor:
    return torch.cat([decode(latents[i:i + batch]).float().clamp(0, 1) for i in range(0, len(latents), batch)])


@dataclasses.dataclass
class Experiment:
    """What every finding shares: the RAE, the renders with their class labels, the frozen encoder's
    latents of them (encoded once), the settings, and where progress and sample grids go."""
    rae: RAE
    settings: FindingSettings
    world: ShapesConfig
    train_images: torch.Tensor       # [T, 3, S, S] in [0, 1]
    train_labels: torch.Tensor       # [T]
    train_latents: torch.Tensor      # [T, N, C]
    eval_images: torch.Tensor        # [E, 3, S, S], held out
    eval_labels: torch.Tensor
    eval_latents: torch.Tensor
    log: Log = print
    out: Path | None = None
    device: str = "cpu"              # where the DiTs train and sample; codecs run on the CPU

    @classmethod
    def build(cls, rae: RAE, settings: FindingSettings, world: ShapesConfig | None = None, log: Log = print,
              out: Path | None = None, device: str = "cpu") -> "Experiment":
        """Render the training and held-out scenes at the RAE's image size and encode them once."""
        size = rae.config.encoder.image_size
        world = world or single_object_world(size)
        if world.image_size != size or rae.config.image_size != size:
            raise ValueError(f"the world renders {world.image_size} px but the RAE encodes {size} px and decodes "
                             f"{rae.config.image_size} px; use a ShapesConfig with image_size={size}")
        start = time.time()
        rae.eval()
        train_x, train_y = render_class_images(world, settings.train_images, "findings-train", settings.seed)
        eval_x, eval_y = render_class_images(world, settings.eval_images, "findings-eval", settings.seed)
        exp = cls(rae, settings, world, train_x, train_y, encode_all(rae.encode, train_x), eval_x, eval_y,
                  encode_all(rae.encode, eval_x), log, out, device)
        log(f"data: {len(train_x)} train + {len(eval_x)} held-out renders of {exp.num_classes} classes, "
            f"latents {tuple(exp.train_latents.shape[1:])} ({time.time() - start:.1f}s)")
        return exp

    @property
    def num_classes(self) -> int:
        return len(class_names(self.world))

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.settings.samples_per_class

    def dit_config(self, latents: torch.Tensor, head: bool = False) -> DiTConfig:
        """The class-conditional DiT for latents [*, N, C]; `head` adds the DiT^DH head."""
        s = self.settings
        dh = dict(head_hidden_size=s.head_width, head_depth=s.head_depth, head_num_heads=s.dit_heads) if head else {}
        return DiTConfig(in_channels=latents.shape[2], num_tokens=latents.shape[1], hidden_size=s.dit_width,
                         depth=s.dit_depth, num_heads=s.dit_heads, cond_mode="class", num_classes=self.num_classes,
                         **dh)

    def shift(self, latents: torch.Tensor) -> float:
        """The time shift for latents [*, N, C]: `shift_scale` x the dimension shift."""
        return self.settings.shift_scale * dimension_shift(latents.shape[1], latents.shape[2])

    def train_dit(self, latents: torch.Tensor, shift: float, name: str, head: bool = False,
                  on_checkpoint: Callable[[int, DiT], None] | None = None) -> tuple[DiT, float]:
        """Flow matching on (latents, train labels) with logit-normal times shifted by `shift`
        (AdamW, warm-up + cosine, clip 1.0, the config's 10% condition dropout). Returns the model
        in eval mode and the mean loss of the last 10% of steps; `on_checkpoint(step, model)` runs
        every steps / checkpoints steps when given."""
        s = self.settings
        torch.manual_seed(s.seed)                  # init and the condition-dropout draws
        model = DiT(self.dit_config(latents, head)).to(self.device)
        latents, labels = latents.to(self.device), self.train_labels.to(self.device)
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
        g = torch.Generator(self.device).manual_seed(s.seed + 1)
        losses, start = [], time.time()
        for step in range(s.steps):
            _set_lr(opt, warmup_cosine(step, total_steps=s.steps, warmup_steps=min(20, s.steps // 10), base_lr=s.lr,
                                       min_lr=s.lr / 10))
            idx = torch.randint(len(latents), (s.batch_size,), generator=g, device=self.device)
            x = latents[idx]
            t = sample_time(len(idx), shift=shift, generator=g, device=self.device)
            noise = torch.randn(x.shape, generator=g, device=self.device)
            drop = sample_drop(len(idx), model.config.cond_dropout, device=self.device)  # global RNG, as before
            loss = flow_matching_loss(model, x, labels[idx], t, noise, drop=drop)
            _step(opt, model, loss, step)
            losses.append(loss.item())
            if (step + 1) % max(1, s.steps // 5) == 0:
                self.log(f"{name}: step {step + 1}/{s.steps} loss {sum(losses[-20:]) / len(losses[-20:]):.4f} "
                         f"({time.time() - start:.0f}s)")
            if on_checkpoint is not None and (step + 1) % (s.steps // s.checkpoints) == 0:
                on_checkpoint(step + 1, model.eval())
                model.train()
        tail = losses[-max(1, s.steps // 10):]
        return model.eval(), sum(tail) / len(tail)

    def sample(self, model: DiT, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`samples_per_class` latents of every class (Euler over the `shift` grid, CFG); sample i
        starts from noise seeded (seed, i) alone, so any one of them can be regenerated."""
        s, cfg = self.settings, model.config
        labels = torch.arange(cfg.num_classes).repeat_interleave(s.samples_per_class)
        noise = noise_from_seeds([s.seed * 1_000_003 + i for i in range(len(labels))], cfg.num_tokens, cfg.in_channels)
        return sample(model, noise.to(self.device), labels.to(self.device), self.sampler(shift)).cpu(), labels

    def sampler(self, shift: float) -> SamplerConfig:
        s = self.settings
        return SamplerConfig(num_inference_steps=s.num_inference_steps, shift=shift, guidance_scale=s.guidance_scale)

    def denoise_from(self, model: DiT, shift: float, start: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out latents noised to time `start` (noise seeded by `seed`) and sampled back from
        there (SDEdit): with a small `start` the layout is given and only the DiT's fine detail is
        tested, with a large one mostly its layout. Returns (latents, their labels)."""
        x = self.eval_latents
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(self.settings.seed + 3))
        noisy = ((1 - start) * x + start * eps).to(self.device)
        return (sample(model, noisy, self.eval_labels.to(self.device), self.sampler(shift), start=start).cpu(),
                self.eval_labels)

    def score(self, latents: torch.Tensor, labels: torch.Tensor, decode: Codec, name: str) -> dict[str, float]:
        """`generation_scores` of sampled latents decoded by `decode`; the grid (one row per shape)
        goes to out/name.png when an output folder is set."""
        images = decode_all(decode, latents)
        if self.out is not None:
            from torchvision.utils import save_image

            self.out.mkdir(parents=True, exist_ok=True)
            save_image(images, self.out / f"{name}.png", nrow=len(self.world.colors) * self.settings.samples_per_class)
        return generation_scores(images, labels, self.world)

    def reconstruction(self, eval_latents: torch.Tensor, decode: Codec) -> dict[str, float]:
        """Clean reconstructions of the held-out renders: mean PSNR, and the detector's accuracy on
        them, the ceiling of any generation accuracy measured through this decoder."""
        recon = decode_all(decode, eval_latents)
        scores = generation_scores(recon, self.eval_labels, self.world, by_shape=True)
        return {"psnr": round(psnr(recon, self.eval_images).mean().item(), 3),
                **{f"reconstruction_{k}": v for k, v in scores.items()}}

    def fit_pixels(self, module: torch.nn.Module, reconstruct: Callable[[torch.Tensor], tuple],
                   perceptual: EncoderPerceptualLoss, lr: float, name: str) -> None:
        """The loop shared by the RAE decoders and the VAE: `reconstruct(idx)` gives (reconstruction
        of training renders idx, extra loss); the loss adds L1 + perceptual_weight x perceptual."""
        s = self.settings
        module.train()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                                weight_decay=0.0)
        g = torch.Generator().manual_seed(s.seed + 2)
        start = time.time()
        for step in range(s.decoder_steps):
            _set_lr(opt, warmup_cosine(step, total_steps=s.decoder_steps, warmup_steps=min(20, s.decoder_steps // 10),
                                       base_lr=lr, min_lr=lr / 10))
            idx = torch.randint(len(self.train_images), (s.decoder_batch,), generator=g)
            recon, extra = reconstruct(idx)
            x = self.train_images[idx]
            loss = l1_loss(recon.float(), x) + s.perceptual_weight * perceptual(recon, x) + extra
            _step(opt, module, loss, step)
            if (step + 1) % max(1, s.decoder_steps // 5) == 0:
                self.log(f"{name}: step {step + 1}/{s.decoder_steps} loss {loss.item():.4f} "
                         f"({time.time() - start:.0f}s)")
        module.eval()

    def train_rae_decoder(self, noise_tau: float) -> RAE:
        """A copy of the RAE whose decoder (the model's own, or a fresh one of its architecture:
        `decoder_init`) is trained on the cached latents; noise_tau > 0 adds RAE's training-only
        latent noise (`RAEDecoder.forward` in train mode). Returned in eval mode: no noise."""
        torch.manual_seed(self.settings.seed)     # init and the latent-noise draws
        rae = copy.deepcopy(self.rae)              # the frozen encoder is copied along, untouched
        rae.config = rae.config.replace(decoder=rae.config.decoder.replace(noise_tau=noise_tau))
        if self.settings.decoder_init == "scratch":
            rae.decoder = RAEDecoder(rae.config.decoder)
        rae.decoder.config = rae.config.decoder
        rae.decoder.requires_grad_(True)           # a UnifiedModel freezes its whole RAE
        self.fit_pixels(rae.decoder, lambda idx: (rae.decode(self.train_latents[idx], clamp=False), 0.0),
                        EncoderPerceptualLoss(rae.encoder), self.settings.decoder_lr, f"decoder tau={noise_tau}")
        return rae.eval()

    def train_vae(self) -> "ToyVAE":
        """A ToyVAE with the RAE's latent grid, trained like the RAE decoders (same loop, losses and
        steps) plus the KL term; its latent shift and scale are then set from the training renders."""
        s = self.settings
        torch.manual_seed(s.seed)                 # init and the posterior samples
        vae = ToyVAE(self.world.image_size, math.isqrt(self.train_latents.shape[1]), s.vae_channels)
        self.fit_pixels(vae, lambda idx: vae.training_step(self.train_images[idx], s.vae_kl_weight),
                        EncoderPerceptualLoss(self.rae.encoder), s.vae_lr, "vae")
        raw = encode_all(vae.encode, self.train_images)          # shift 0 / scale 1 still: raw posterior means
        vae.shift.fill_(raw.mean().item())
        vae.scale.fill_(raw.std().item())
        return vae


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _step(opt: torch.optim.Optimizer, module: torch.nn.Module, loss: torch.Tensor, step: int) -> None:
    check_finite(loss, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
    opt.step()


def rae_decode(rae: RAE) -> Codec:
    return lambda z: rae.decode(z)


class ToyVAE(torch.nn.Module):
    """diffusers' AutoencoderKL at toy size as a codec between [0, 1] images and latent tokens
    [B, g*g, C] (row-major, like the RAE's), standardised by a train-set shift and scale (the VAE
    shift / scaling factors of FLUX and LDM) so the DiT sees unit-scale latents."""

    def __init__(self, image_size: int, grid_size: int, channels: int):
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError("the vae finding needs diffusers: pip install diffusers") from e
        levels = round(math.log2(image_size / grid_size))
        if grid_size * 2 ** levels != image_size:
            raise ValueError(f"a VAE with a {grid_size}x{grid_size} latent grid needs an image size of "
                             f"{grid_size} x 2^k, got {image_size}")
        widths = tuple(min(8 * 2 ** i, 64) for i in range(levels + 1))   # 8, 16, 32, 64; 2x down between blocks
        self.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=channels, layers_per_block=1,
                                 down_block_types=("DownEncoderBlock2D",) * len(widths),
                                 up_block_types=("UpDecoderBlock2D",) * len(widths),
                                 block_out_channels=widths, sample_size=image_size,
                                 norm_num_groups=2)   # >= 4 channels a group: 1 would normalise colour away
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def posterior(self, images: torch.Tensor):
        return self.vae.encode(2 * images - 1).latent_dist              # diffusers' VAEs take [-1, 1]

    def decode_grid(self, z: torch.Tensor) -> torch.Tensor:
        return (self.vae.decode(z).sample + 1) / 2

    def training_step(self, images: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction from a posterior sample, kl_weight x KL per latent element)."""
        post = self.posterior(images)
        return self.decode_grid(post.sample()), kl_weight * post.kl().mean() / post.mean[0].numel()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.posterior(images).mean                                    # [B, C, g, g]
        return (z.flatten(2).transpose(1, 2) - self.shift) / self.scale    # [B, g*g, C]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        g = math.isqrt(n)
        z = (tokens * self.scale + self.shift).transpose(1, 2).reshape(b, c, g, g)
        return self.decode_grid(z).clamp(0, 1)


# -------------------------------------------------------------------------------------- findings

def finding_shift(exp: Experiment) -> dict:
    n, c = exp.train_latents.shape[1:]
    alpha = dimension_shift(n, c)
    strong = exp.shift(exp.train_latents)
    runs = {}
    for name, shift in (("shifted", alpha), ("unshifted", 1.0), ("strong", strong)):
        model, loss = exp.train_dit(exp.train_latents, shift, f"dit {name}")
        runs[name] = {"alpha": round(shift, 4), "final_loss": round(loss, 4),
                      **exp.score(*exp.sample(model, shift), rae_decode(exp.rae), f"shift_{name}")}
        exp.log(f"{name}: {runs[name]}")
    note = f"latent {n}x{c} gives alpha = sqrt({n}*{c}/4096) = {alpha:.2f}"
    if alpha < 2:
        note += " (the papers' 256x768 gives 6.93)"
    # While shapes are still blobs, colour-only accuracy is the measure that moves.
    sentences = [describe(f"{key} alpha={runs[name]['alpha']:.2f}", runs[name][key], "alpha=1", runs["unshifted"][key],
                          exp.num_samples) for name in ("shifted", "strong") for key in ("accuracy", "color_accuracy")]
    return {"latent_shape": [n, c], "alpha": round(alpha, 4), "alpha_note": note, **runs,
            **exp.reconstruction(exp.eval_latents, rae_decode(exp.rae)), "samples": exp.num_samples,
            "verdict": compare(runs["shifted"]["accuracy"], runs["unshifted"]["accuracy"], exp.num_samples),
            "strong_verdict": compare(runs["strong"]["color_accuracy"], runs["unshifted"]["color_accuracy"],
                                      exp.num_samples),
            "conclusion": "; ".join(sentences) + f"; {note}"}


def finding_dh(exp: Experiment) -> dict:
    shift = exp.shift(exp.train_latents)
    runs = {}
    for name, head in (("dit", False), ("dit_dh", True)):
        start = time.time()
        model, loss = exp.train_dit(exp.train_latents, shift, name, head=head)
        seconds = time.time() - start
        cfg = model.config
        runs[name] = {"params": sum(p.numel() for p in model.parameters()), "train_seconds": round(seconds, 1),
                      "widths": [cfg.hidden_size] + [cfg.head_hidden_size] * head,
                      "depths": [cfg.depth] + [cfg.head_depth] * head, "final_loss": round(loss, 4),
                      **exp.score(*exp.sample(model, shift), rae_decode(exp.rae), name)}
        exp.log(f"{name}: {runs[name]}")
    a, b = runs["dit_dh"]["accuracy"], runs["dit"]["accuracy"]
    params = runs["dit_dh"]["params"] / runs["dit"]["params"]
    seconds = runs["dit_dh"]["train_seconds"] / max(runs["dit"]["train_seconds"], 0.1)
    return {**runs, "steps_each": exp.settings.steps, "samples": exp.num_samples,
            "verdict": compare(a, b, exp.num_samples),
            "conclusion": f"{describe('DiT^DH', a, 'DiT', b, exp.num_samples)} after {exp.settings.steps} steps each; "
                          f"DiT^DH has {params:.2f}x the parameters and took {seconds:.2f}x the training time"}


def finding_noise(exp: Experiment) -> dict:
    shift = exp.shift(exp.train_latents)
    model, loss = exp.train_dit(exp.train_latents, shift, "dit")
    latents, labels = exp.sample(model, shift)            # one set of samples, decoded by each decoder
    runs = {}
    for name, tau in (("noisy", exp.settings.noise_tau), ("clean", 0.0)):
        decode = rae_decode(exp.train_rae_decoder(tau))
        runs[name] = {"noise_tau": tau, **exp.reconstruction(exp.eval_latents, decode),
                      **exp.score(latents, labels, decode, f"noise_{name}")}
        exp.log(f"{name}: {runs[name]}")
    a, b = runs["noisy"]["accuracy"], runs["clean"]["accuracy"]
    d_psnr = round(runs["noisy"]["psnr"] - runs["clean"]["psnr"], 3)
    generation = describe(f"tau={exp.settings.noise_tau} decoder", a, "tau=0 decoder", b, exp.num_samples)
    psnr_words = f"the noise {'costs' if d_psnr < 0 else 'gains'} {abs(d_psnr):.2f} dB of clean PSNR"
    return {"dit_final_loss": round(loss, 4), **runs, "psnr_change_db": d_psnr, "samples": exp.num_samples,
            "verdict": compare(a, b, exp.num_samples),
            "conclusion": f"generation: {generation}; reconstruction: {psnr_words}"}


def finding_vae(exp: Experiment) -> dict:
    vae = exp.train_vae()
    codecs = {"rae": (exp.train_latents, exp.eval_latents, rae_decode(exp.rae)),
              "vae": (encode_all(vae.encode, exp.train_images), encode_all(vae.encode, exp.eval_images), vae.decode)}
    runs = {}
    for name, (latents, eval_latents, decode) in codecs.items():
        shift = exp.shift(latents)
        curve: list[list[float]] = []           # [step, accuracy, color_accuracy]

        def checkpoint(step: int, model: DiT) -> None:
            scores = exp.score(*exp.sample(model, shift), decode, f"vae_{name}_step{step}")
            curve.append([step, scores["accuracy"], scores["color_accuracy"]])
            exp.log(f"{name} dit: step {step} {scores}")

        _, loss = exp.train_dit(latents, shift, f"{name} dit", on_checkpoint=checkpoint)
        runs[name] = {"latent_shape": list(latents.shape[1:]), "alpha": round(shift, 4),
                      "final_loss": round(loss, 4), "curve": curve, **exp.reconstruction(eval_latents, decode)}
    target = runs["vae"]["curve"][-1][1]
    reach = {name: steps_to_reach(runs[name]["curve"], target) for name in runs}
    a = runs["rae"]["curve"][-1][1]
    if target == 0:
        summary = "the VAE DiT ends at accuracy 0, so steps-to-reach says nothing"
    elif reach["rae"] is None:
        summary = f"the RAE DiT never reaches the VAE DiT's final accuracy {target:.3f}"
    else:
        summary = (f"the RAE DiT reaches the VAE DiT's final accuracy {target:.3f} at step {reach['rae']}, the VAE DiT "
                   f"at step {reach['vae']} ({reach['vae'] / reach['rae']:.1f}x the RAE's steps)")
    return {**runs, "decoders": f"RAE: the model's own decoder; VAE: trained here for {exp.settings.decoder_steps} steps",
            "target_accuracy": target, "steps_to_reach_vae_final": reach, "samples": exp.num_samples,
            "verdict": compare(a, target, exp.num_samples),
            "conclusion": f"{summary}; final accuracy: {describe('RAE', a, 'VAE', target, exp.num_samples)}"}


FINDING_FUNCTIONS: dict[str, Callable[[Experiment], dict]] = {
    "shift": finding_shift, "dh": finding_dh, "noise": finding_noise, "vae": finding_vae}


def run_finding(name: str, rae: RAE, settings: FindingSettings, world: ShapesConfig | None = None, log: Log = print,
                out: Path | None = None) -> dict:
    """Run one finding on `rae`'s frozen encoder: a JSON-ready dict with the settings, the measured
    numbers, the wall time and a conclusion computed from the numbers."""
    if name not in FINDING_FUNCTIONS:
        raise ValueError(f"unknown finding {name!r}; choose one of: {', '.join(FINDINGS)}")
    start = time.time()
    result = FINDING_FUNCTIONS[name](Experiment.build(rae, settings, world, log, out))
    return {"finding": name, "settings": settings.to_dict(), **result, "wall_seconds": round(time.time() - start, 1)}
