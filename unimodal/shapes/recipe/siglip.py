"""Tiny SigLIP-2-style image/text encoder trained on Shapes scenes with the sigmoid loss.

The model is transformers' `SiglipModel` (fixed-resolution SigLIP-2 checkpoints use these same
classes) from a tiny `SiglipConfig`; its own `return_loss=True` path is the pairwise sigmoid loss of
the SigLIP paper (Zhai et al. 2023, eq. 1), so nothing here re-implements the objective. The
vision tower is exported as a `SiglipVisionModel` directory: `unimodal.rae.encoders` (family
"siglip2", pixel mean/std 0.5) loads it as the frozen encoder of the RAE.

SigLIP 2 adds decoder losses (LocCa) to the sigmoid loss; `locca_weight` > 0 trains the caption
decoder of `unimodal.shapes.recipe.locca` on the patch tokens alongside (dropped at export).

Text side: our tokenizer, captions padded to a fixed `text_max_length` with no attention mask and
pooled at the last position, as SigLIP is trained (`padding="max_length"`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from unimodal.config import Config, ConfigError
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.recipe.common import StepLog, finish_stage, open_stage, preset_config
from unimodal.shapes.recipe.locca import CaptionDecoder, caption_loss
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import init_distributed
from unimodal.train.engine import TrainEngine
from unimodal.train.loop import ResumableBatchSampler

PIXEL_MEAN = PIXEL_STD = 0.5  # SigLIP normalises [0, 1] pixels to [-1, 1]


@dataclasses.dataclass
class SiglipRecipeConfig(Config):
    tokenizer: str = "runs/shapes/tokenizer"
    # Vision tower (image size comes from shapes.image_size): 64 px / patch 8 = 8x8 = 64 tokens.
    patch_size: int = 8
    vision_hidden_size: int = 128      # = latent channels C of the RAE / DiT downstream
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 512
    # Text tower.
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 512
    text_max_length: int = 64          # long Shapes captions: ~36 tokens on average, <= ~65
    # Data (long-caption share: shapes.long_caption_prob).
    num_train_scenes: int = 6000       # rendered once (+ a shape twin each), captions re-drawn per visit
    # Half of every batch is the other half's shape twins (one object's shape changed): without
    # these hard negatives colour and place identify a scene among random ones, and a 300-step
    # tower learns almost nothing about shape (zero-shot shape accuracy 0.28, chance 0.14).
    shape_twins: bool = True
    eval_scenes: int = 512             # held-out retrieval scenes (split "val")
    retrieval_batch: int = 64          # candidates per retrieval query (chance = 1 / this)
    probe_scenes: int = 2000           # held-out probe scenes (split "val", after the retrieval ones)
    probe_train_fraction: float = 0.75
    # SigLIP 2's LocCa decoder loss on the unpooled patch tokens (0 = sigmoid loss alone); the
    # decoder is `locca_layers` deep at the vision width and predicts each scene's long description.
    locca_weight: float = 1.0
    locca_layers: int = 2
    # SigLIP paper init: t' = log 10, b = -10, so the many negatives start near zero loss.
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    # The two logit scalars get a larger lr: at the base lr Adam moves t' by <= ~0.3 in a few hundred
    # steps, which would pin t near 10, i.e. a matching pair's probability near sigmoid(10 - 10) = 0.5.
    logit_lr_mult: float = 10.0
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        run_dir="runs/shapes/siglip", total_steps=400, batch_size=64, lr=1e-3, min_lr=1e-5,
        warmup_steps=40, betas=(0.9, 0.95), weight_decay=0.05, grad_clip=1.0, log_every=25))

    def __post_init__(self) -> None:
        size = self.shapes.image_size
        if self.patch_size < 1 or size % self.patch_size:
            raise ConfigError(f"shapes.image_size ({size}) must be a multiple of patch_size ({self.patch_size})")
        for width, heads, name in ((self.vision_hidden_size, self.vision_heads, "vision"),
                                   (self.text_hidden_size, self.text_heads, "text")):
            if heads < 1 or width % heads:
                raise ConfigError(f"{name}_hidden_size ({width}) must be divisible by {name}_heads ({heads})")
        if self.retrieval_batch < 2 or self.eval_scenes < self.retrieval_batch:
            raise ConfigError(f"need 2 <= retrieval_batch <= eval_scenes; got {self.retrieval_batch}, {self.eval_scenes}")
        if not 0 < self.probe_train_fraction < 1 or self.probe_scenes < 8:
            raise ConfigError("probe_train_fraction must be in (0, 1) and probe_scenes >= 8")
        if self.locca_weight < 0 or self.locca_layers < 1:
            raise ConfigError(f"need locca_weight >= 0 and locca_layers >= 1, got {self.locca_weight} / {self.locca_layers}")
        if self.logit_lr_mult <= 0:
            raise ConfigError(f"logit_lr_mult must be > 0, got {self.logit_lr_mult}")
        if self.train.batch_size < 2 or (self.shape_twins and self.train.batch_size % 2):
            raise ConfigError(f"train.batch_size must be >= 2 (the sigmoid loss needs negatives) and even with "
                              f"shape_twins; got {self.train.batch_size}")


SIGLIP_PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": dict(vision_hidden_size=32, vision_layers=2, vision_heads=2, vision_mlp=64, text_hidden_size=32,
                  text_layers=1, text_heads=2, text_mlp=64, text_max_length=48, num_train_scenes=128,
                  eval_scenes=64, retrieval_batch=32, probe_scenes=96,
                  train=dict(run_dir="runs/shapes-quick/siglip", total_steps=30, batch_size=32, lr=2e-3,
                             min_lr=2e-4, warmup_steps=3, log_every=10)),
}


def siglip_preset(name: str, overrides: dict[str, Any] | None = None) -> SiglipRecipeConfig:
    return preset_config(SiglipRecipeConfig, SIGLIP_PRESETS, name, overrides)


def siglip_config(cfg: SiglipRecipeConfig, tokenizer):
    from transformers import SiglipConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size, intermediate_size=cfg.text_mlp,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                max_position_embeddings=cfg.text_max_length, projection_size=cfg.vision_hidden_size,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    vision = dict(image_size=cfg.shapes.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden_size,
                  intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=cfg.vision_heads, num_channels=3)
    return SiglipConfig(text_config=text, vision_config=vision)


def build_siglip(cfg: SiglipRecipeConfig, tokenizer, seed: int):
    from transformers import SiglipModel

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG stream
        torch.manual_seed(seed)
        model = SiglipModel(siglip_config(cfg, tokenizer))
    with torch.no_grad():
        model.logit_scale.fill_(cfg.init_logit_scale)
        model.logit_bias.fill_(cfg.init_logit_bias)
    return model


class SiglipTrainer(torch.nn.Module):
    """The SigLIP model and (with LocCa) its caption decoder as one module for the engine:
    returns (total loss, sigmoid loss, caption loss or None)."""

    def __init__(self, siglip, captioner: CaptionDecoder | None, locca_weight: float, pad_id: int):
        super().__init__()
        self.siglip, self.captioner = siglip, captioner
        self.locca_weight, self.pad_id = locca_weight, pad_id

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, caption_ids: torch.Tensor | None):
        out = self.siglip(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)   # sigmoid loss
        if self.captioner is None:
            return out.loss, out.loss, None
        patches = out.vision_model_output.last_hidden_state                               # [B, N, D]
        cap = caption_loss(self.captioner, patches, caption_ids, self.pad_id)
        return out.loss + self.locca_weight * cap, out.loss, cap


def normalize_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> SigLIP input in [-1, 1]."""
    return (images_u8.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


def encode_text(tokenizer, captions: list[str], max_length: int) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", truncation=True, max_length=max_length,
                     add_special_tokens=False, return_tensors="pt").input_ids


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, logit_lr_mult: float) -> list[dict]:
    """Decay matrices only; biases, norms, position/probe vectors and the logit scalars stay free;
    the logit scale/bias train at `logit_lr_mult` times the lr."""
    decay, free, logit = [], [], []
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("logit_scale", "logit_bias"):
            logit.append(p)
        elif p.ndim >= 2 and "position_embedding" not in name and "probe" not in name:
            decay.append(p)
        else:
            free.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": free, "weight_decay": 0.0, "name": "no_decay"},
            {"params": logit, "weight_decay": 0.0, "lr": lr * logit_lr_mult, "name": "logit"}]


@torch.no_grad()
def retrieval_accuracy(model, tokenizer, images_u8: torch.Tensor, captions: list[str], group: int,
                       max_length: int) -> dict[str, float]:
    """Top-1 image->text and text->image accuracy within consecutive groups of `group` scenes."""
    hits_i2t = hits_t2i = n = 0
    for start in range(0, len(captions) - group + 1, group):
        out = model(input_ids=encode_text(tokenizer, captions[start:start + group], max_length),
                    pixel_values=normalize_pixels(images_u8[start:start + group]))
        target = torch.arange(group)
        hits_i2t += int((out.logits_per_image.argmax(1) == target).sum())
        hits_t2i += int((out.logits_per_text.argmax(1) == target).sum())
        n += group
    return {"i2t_top1": hits_i2t / n, "t2i_top1": hits_t2i / n, "chance": 1.0 / group}


def evaluate_siglip(model, tokenizer, cfg: SiglipRecipeConfig, eval_set, probe_set) -> dict[str, float]:
    """Retrieval on held-out scenes (long captions, unique per scene) and linear probes of the
    frozen vision tower against a random tower of the same architecture."""
    from unimodal.shapes.recipe.data import probe_targets
    from unimodal.shapes.recipe.probe import patch_features, probe_suite

    was_training = model.training
    model.eval()
    metrics = retrieval_accuracy(model, tokenizer, eval_set.images, eval_set.long, cfg.retrieval_batch,
                                 cfg.text_max_length)
    targets = probe_targets(probe_set.scenes, cfg.shapes, cfg.shapes.image_size // cfg.patch_size)
    n_train = int(len(probe_set) * cfg.probe_train_fraction)
    pixels = normalize_pixels(probe_set.images)
    random_tower = build_siglip(cfg, tokenizer, seed=cfg.train.seed + 1).vision_model.eval()
    for prefix, tower in (("probe", model.vision_model), ("probe_random", random_tower)):
        for k, v in probe_suite(patch_features(tower, pixels), targets, n_train).items():
            metrics[f"{prefix}_{k}"] = v
    metrics["patch_background_rate"] = float((targets["patch_color"][n_train:] == 0).float().mean())
    model.train(was_training)
    return metrics


def export_vision_tower(model, out_dir: str | Path) -> None:
    """Save the vision tower as a standalone `SiglipVisionModel` directory.

    In transformers 5 `SiglipModel.vision_model` *is* a `SiglipVisionModel` (same keys, its own
    SiglipVisionConfig), so its own save_pretrained writes a directory that
    `SiglipVisionModel.from_pretrained` loads with no missing or unexpected key.
    """
    from transformers import SiglipVisionModel

    if not isinstance(model.vision_model, SiglipVisionModel):
        raise TypeError(f"expected SiglipModel.vision_model to be a SiglipVisionModel, got {type(model.vision_model).__name__}")
    model.vision_model.save_pretrained(out_dir)


@dataclasses.dataclass
class SiglipResult:
    model_dir: Path      # full SiglipModel (+ tokenizer/ subfolder)
    vision_dir: Path     # SiglipVisionModel for the RAE encoder
    metrics: dict[str, float]


def train_siglip(cfg: SiglipRecipeConfig, progress: bool = True) -> SiglipResult:
    """Train, evaluate and save; writes `<run_dir>/{siglip,vision}` and final_metrics.json."""
    from unimodal.shapes.recipe.data import EVAL_SPLIT, TRAIN_SPLIT, PairSet

    run_dir = Path(cfg.train.run_dir)
    logger, tokenizer = open_stage(cfg, "siglip")
    t0, cpu0 = time.time(), time.process_time()
    train_set = PairSet.build(cfg.shapes, TRAIN_SPLIT, cfg.num_train_scenes, twins=cfg.shape_twins)
    eval_set, probe_set = PairSet.build(cfg.shapes, EVAL_SPLIT, cfg.eval_scenes + cfg.probe_scenes).split(cfg.eval_scenes)
    logger.info(f"siglip data: {len(train_set)} train (twins included) / {len(eval_set)} retrieval / {len(probe_set)} probe scenes "
                f"({time.time() - t0:.1f} s)")

    model = build_siglip(cfg, tokenizer, seed=cfg.train.seed)
    captioner = None
    if cfg.locca_weight > 0:
        captioner = CaptionDecoder(len(tokenizer), cfg.vision_hidden_size, cfg.locca_layers, cfg.vision_heads,
                                   cfg.text_max_length)
    trainer = SiglipTrainer(model, captioner, cfg.locca_weight, tokenizer.pad_token_id).train()
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.vision_model.parameters())
    n_captioner = sum(p.numel() for p in captioner.parameters()) if captioner is not None else 0
    logger.info(f"siglip: {n_params / 1e6:.2f}M parameters (vision {n_vision / 1e6:.2f}M), "
                f"LocCa caption decoder {n_captioner / 1e6:.2f}M (weight {cfg.locca_weight})")
    # CUDA when available (init_distributed's rule); the model returns to the CPU for evaluation and export
    dist = init_distributed()
    device = dist.device
    engine = TrainEngine(trainer, cfg.train, param_groups(trainer, cfg.train.weight_decay, cfg.train.lr, cfg.logit_lr_mult),
                         dist=dist)
    # Per-sample seeds: the caption drawn for a scene depends on (seed, epoch, index) only. With
    # twins the sampler deals base scenes, half a batch, and each brings its twin.
    per_batch = cfg.train.batch_size // 2 if cfg.shape_twins else cfg.train.batch_size
    batches = iter(ResumableBatchSampler(cfg.num_train_scenes, per_batch, seed=cfg.train.seed, sample_seeds=True))
    log = StepLog(logger, cfg.train.total_steps, cfg.train.log_every, "siglip", progress, cfg.train.batch_size, "images")
    for step in range(cfg.train.total_steps):
        index, captions = train_set.batch(next(batches), cfg.shapes.long_caption_prob)
        ids = encode_text(tokenizer, captions, cfg.text_max_length).to(device)          # [B, text_max_length]
        pixels = normalize_pixels(train_set.images[index]).to(device)                    # [B, 3, H, W] in [-1, 1]
        long_ids = None if captioner is None else encode_text(
            tokenizer, [train_set.captions[i]["long"][0] for i in index], cfg.text_max_length).to(device)
        with engine.autocast():
            loss, sigmoid, cap = engine(ids, pixels, long_ids)
        engine.backward(loss)
        out = engine.step()
        engine.set_lr(step + 1)
        parts = {"sigmoid_loss": sigmoid.item()} | ({"caption_loss": cap.item()} if cap is not None else {})
        log.update(step, loss, out.grad_norm, engine.lrs()[0], logit_scale=model.logit_scale.exp().item(),
                   logit_bias=model.logit_bias.item(), **parts)
    train_seconds = log.close()
    trainer.cpu()

    t2 = time.time()
    metrics = {"first_loss": log.first, "final_train_loss": log.smooth, **{f"final_{k}": v for k, v in parts.items()},
               **evaluate_siglip(model, tokenizer, cfg, eval_set, probe_set), "params": n_params,
               "train_seconds": train_seconds, "eval_seconds": time.time() - t2,
               "total_seconds": time.time() - t0, "total_cpu_seconds": time.process_time() - cpu0}

    model_dir, vision_dir = run_dir / "siglip", run_dir / "vision"
    model.save_pretrained(model_dir)
    # In a subfolder: a siglip config.json next to it would make AutoTokenizer pick SigLIP's own class.
    tokenizer.save_pretrained(model_dir / "tokenizer")
    export_vision_tower(model, vision_dir)
    finish_stage(logger, "siglip", run_dir, metrics)
    return SiglipResult(model_dir=model_dir, vision_dir=vision_dir, metrics=metrics)
