"""Stage "decoder": train the RAE pixel decoder on a frozen encoder (RAE sec. 3, Scale-RAE sec. 3).

    unimodal train decoder --config configs/decoder_tiny.yaml [--deepspeed configs/deepspeed/zero1.json] [key=value ...]

One optimiser step = `train.grad_accum` micro batches, each:
  1. z = encoder(x) (frozen, no grad); recon = decoder(z) (latent noise tau in training mode)
  2. decoder loss = L1 + wL * perceptual + wG * Gram [+ wA * lambda * GAN after loss.gan_start_step]
  3. after loss.disc_start_step: discriminator hinge loss on (real, 8-bit fake), its own engine
     (DDP averages its gradients; the RAE reference never did).
Rerunning the same command resumes from the newest checkpoint in `train.run_dir` with the exact
data order and RNG state. The EMA decoder is exported as a `RAE.from_pretrained` directory.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch

from unimodal.config import Config, ConfigError, load_config
from unimodal.data.dataset import DataConfig, ImageDataset, build_image_dataset
from unimodal.rae.autoencoder import RAE, RAEConfig
from unimodal.rae.discriminator import Discriminator, DiscriminatorConfig, generator_logits, quantize_8bit
from unimodal.rae.losses import (DecoderLossConfig, LinearIO, VGGLPIPS, adaptive_weight_at_output, build_perceptual_loss,
                                 generator_loss, gram_loss, hinge_d_loss, l1_loss, lpips_available)
from unimodal.rae.metrics import psnr, ssim
from unimodal.train.checkpoint import resume_run, save_checkpoint
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import all_reduce_mean, cleanup
from unimodal.train.ema import EMA
from unimodal.train.engine import TrainEngine
from unimodal.train.logging import Throughput, check_finite
from unimodal.train.loop import infinite_loader
from unimodal.train.run import start_run
from unimodal.utils.weights import save_pretrained_dir


@dataclasses.dataclass
class DecoderStageConfig(Config):
    rae: RAEConfig = dataclasses.field(default_factory=RAEConfig)
    loss: DecoderLossConfig = dataclasses.field(default_factory=DecoderLossConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    latent_stats_file: str | None = None   # `unimodal stats` output, when rae.latent_stats is true
    disc_lr: float | None = None           # None: train.lr
    eval_images: int = 8                   # fixed images for the reconstruction grid and metrics
    eval_split: Literal["train", "eval"] = "train"   # train: centre crops of the first training images
    device: Literal["cpu", "cuda"] | None = None     # None: CUDA when available

    def __post_init__(self) -> None:
        if self.data.image_size != self.rae.image_size:
            raise ConfigError(f"data.image_size={self.data.image_size} but the decoder outputs {self.rae.image_size} px "
                              f"(grid {self.rae.decoder.grid_size} x patch {self.rae.decoder.patch_size}); set data.image_size={self.rae.image_size}")
        if self.rae.latent_stats != (self.latent_stats_file is not None):
            raise ConfigError("rae.latent_stats=true needs latent_stats_file (from `unimodal stats`), and the file needs rae.latent_stats=true")
        if self.eval_images < 1:
            raise ConfigError(f"eval_images must be >= 1, got {self.eval_images}")
        if self.disc_lr is not None and self.disc_lr <= 0:
            raise ConfigError(f"disc_lr must be > 0, got {self.disc_lr}")


def _eval_images(cfg: DecoderStageConfig, train_set: ImageDataset, dist, log) -> torch.Tensor:
    if cfg.eval_split == "eval":
        dataset = build_image_dataset(cfg.data, "eval", dist=dist, log=log)
    else:
        dataset = ImageDataset(train_set.source, train_set.indices, image_size=cfg.data.image_size, train=False,
                               min_size=cfg.data.min_size, background=cfg.data.background)
    n = min(cfg.eval_images, len(dataset))
    return torch.stack([dataset[i]["pixels"] for i in range(n)])      # [n, 3, S, S] in [0, 1]


@torch.no_grad()
def evaluate(rae: RAE, images: torch.Tensor, lpips_fn: VGGLPIPS | None) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR / SSIM (/ LPIPS) of eval-mode reconstructions (no latent noise), and the reconstructions."""
    was_training = rae.decoder.training
    rae.decoder.eval()
    recon = rae.reconstruct(images).float()
    rae.decoder.train(was_training)
    metrics = {"eval_psnr": psnr(recon, images).mean().item()}
    if min(images.shape[-2:]) >= 11:
        metrics["eval_ssim"] = ssim(recon, images).mean().item()
    if lpips_fn is not None:
        metrics["eval_lpips"] = lpips_fn(recon, images).item()
    return metrics, recon


def save_grid(path: Path, images: torch.Tensor, recon: torch.Tensor) -> None:
    """Originals on the top row, reconstructions below, as one PNG."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([images, recon]).cpu(), str(path), nrow=images.shape[0], padding=2)


def export_rae(rae: RAE, ema: EMA | None, directory: Path) -> None:
    """Save the RAE with the EMA decoder weights in float32 (live weights when there is no EMA)."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in rae.state_dict().items()}
    if ema is not None:
        for k, v in ema.shadow.items():
            state[f"decoder.{k}"] = v.cpu()
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"cannot export ZeRO-3 partitioned weights ({', '.join(empty[:3])}, ...) without an EMA; set train.ema_decay")
    save_pretrained_dir(directory, rae.saved_config(), state)


def train(config_path: str | None, overrides: list[str] = (), deepspeed_config: str | None = None) -> Path:
    cfg = load_config(DecoderStageConfig, config_path, overrides)
    tc, lc = cfg.train, cfg.loss
    dist, logger = start_run(cfg, tc, cfg.device)
    device = dist.device

    # ---- models: frozen encoder, trainable decoder (+ discriminator) ----------------------------
    rae = RAE(cfg.rae)
    if cfg.latent_stats_file is not None:
        rae.load_latent_stats(cfg.latent_stats_file)
    rae.to(device)
    decoder = rae.decoder
    dec_engine = TrainEngine(decoder, tc, deepspeed_config=deepspeed_config, dist=dist)
    engines = {"decoder": dec_engine}
    ema = EMA(decoder, tc.ema_decay) if tc.ema_decay is not None else None
    perceptual = None
    if lc.perceptual_weight > 0 or lc.gram_weight > 0:
        perceptual = build_perceptual_loss(lc.perceptual, rae.encoder, lc.encoder_layers).to(device)
    lpips_metric = perceptual if isinstance(perceptual, VGGLPIPS) else (VGGLPIPS().to(device) if lpips_available() else None)
    disc = disc_engine = None
    if lc.uses_gan:
        disc = Discriminator(cfg.discriminator)
        disc_lr = cfg.disc_lr or tc.lr
        # Always a plain engine (DDP averages its gradients): the heads are small, and the
        # generator pass below needs D's parameters as ordinary tensors.
        disc_train = tc.replace(lr=disc_lr, min_lr=tc.min_lr * disc_lr / tc.lr,
                                total_steps=max(1, tc.total_steps - lc.disc_start_step), warmup_steps=0)
        disc_engine = TrainEngine(disc, disc_train, dist=dist)
        engines["discriminator"] = disc_engine
    logger.info(f"decoder stage: {sum(p.numel() for p in decoder.parameters()) / 1e6:.1f}M decoder params, "
                f"encoder {cfg.rae.encoder.family} ({rae.encoder.num_tokens} x {rae.encoder.channels}), "
                f"perceptual={perceptual.name if perceptual is not None else 'off'}, gan={'on' if disc else 'off'}, "
                f"world_size={dist.world_size}, deepspeed={deepspeed_config is not None}, bf16={dec_engine.bf16}")

    # ---- resume -------------------------------------------------------------------------------
    step, position, _ = resume_run(tc.run_dir, engines, ema, logger)

    # ---- data ---------------------------------------------------------------------------------
    train_set = build_image_dataset(cfg.data, "train", dist=dist, log=logger.info)
    eval_x = _eval_images(cfg, train_set, dist, logger.info).to(device)
    loader = infinite_loader(train_set, tc.batch_size, seed=tc.seed, start_position=position, dist=dist,
                             num_workers=tc.num_workers)
    batches = iter(loader)
    last_linear = LinearIO(decoder.to_pixels)   # its W sets the adaptive GAN weight (RAE / VQGAN)
    pixel_mean, pixel_std = rae.encoder.pixel_mean, rae.encoder.pixel_std

    # ---- loop ---------------------------------------------------------------------------------
    bar = logger.progress(tc.total_steps, initial=step, desc="decoder")
    speed = Throughput()
    dec_engine.train()
    while step < tc.total_steps:
        lr = dec_engine.set_lr(step)[0]
        d_on = disc is not None and step >= lc.disc_start_step
        g_on = disc is not None and step >= lc.gan_start_step
        if d_on:
            disc_engine.set_lr(step - lc.disc_start_step)
        logs: dict[str, list[torch.Tensor]] = {}
        for _ in range(tc.grad_accum):
            x = next(batches)["pixels"].to(device, non_blocking=True)          # [B, 3, S, S] in [0, 1]
            with dec_engine.autocast():
                z = rae.encode(x)                                                 # [B, N, C], no grad
                recon = dec_engine(z) * pixel_std + pixel_mean                    # [B, 3, S, S], unclamped
                terms = {"l1": l1_loss(recon.float(), x)}
                if perceptual is not None:
                    f_recon = perceptual.features_of(recon)
                    with torch.no_grad():
                        f_real = perceptual.features_of(x)
                    terms["perceptual"] = perceptual.distance(f_recon, f_real).mean()
                    if lc.gram_weight > 0:
                        terms["gram"] = gram_loss(f_recon, f_real)
                rec = (lc.l1_weight * terms["l1"] + lc.perceptual_weight * terms.get("perceptual", 0.0)
                       + lc.gram_weight * terms.get("gram", 0.0))
                loss = rec
                if g_on:
                    terms["gan_g"] = generator_loss(generator_logits(disc, quantize_8bit(recon.float())))
                    # lambda from d/d(recon), mapped back onto to_pixels' output (CLS row dropped).
                    terms["lambda"] = adaptive_weight_at_output(
                        rec, terms["gan_g"], recon, lambda g: decoder.patchify(g * pixel_std),
                        last_linear.input[:, 1:], lc.adaptive_weight_max)
                    loss = rec + lc.gan_weight * terms["lambda"] * terms["gan_g"]
            check_finite(loss, step)
            dec_engine.backward(loss)
            out = dec_engine.step()
            if d_on:
                with disc_engine.autocast():
                    # One forward over real and fake together (DDP allows one forward per backward).
                    logits = disc_engine(torch.cat([x, quantize_8bit(recon.detach().float())]))
                    d_real, d_fake = logits.float().chunk(2)
                    terms["d_loss"] = hinge_d_loss(d_real, d_fake)
                check_finite(terms["d_loss"], step, "discriminator loss")
                disc_engine.backward(terms["d_loss"])
                d_out = disc_engine.step()
                terms["d_real"], terms["d_fake"] = d_real.mean().detach(), d_fake.mean().detach()
            terms["loss"] = loss
            for k, v in terms.items():
                logs.setdefault(k, []).append(v.detach().float())
            speed.update(x.shape[0] * dist.world_size)
        if ema is not None and out.stepped:
            ema.update(decoder)
        step += 1
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.total_steps:
            means = all_reduce_mean(torch.stack([torch.stack(v).mean() for v in logs.values()]))
            row = dict(zip(logs, means.tolist()))
            row.update(lr=lr, grad_norm=out.grad_norm, imgs_per_s=speed.rate())
            if d_on:
                row["d_grad_norm"] = d_out.grad_norm
            logger.metrics(step, **row)
        if tc.sample_every and (step % tc.sample_every == 0 or step == tc.total_steps):
            with ema.swapped(decoder) if ema is not None else torch.no_grad():
                metrics, recon_eval = evaluate(rae, eval_x, lpips_metric)
            if dist.is_main:
                save_grid(Path(tc.run_dir) / "samples" / f"step_{step:08d}.png", eval_x, recon_eval)
            logger.metrics(step, **metrics)
        if step % tc.ckpt_every == 0 or step == tc.total_steps:
            extra = {"step": step, "data_position": loader.position, "config": cfg.to_dict(),
                     "ema": ema.state_dict() if ema is not None else None}
            save_checkpoint(tc.run_dir, step, engines, extra, keep=tc.keep_checkpoints)
    bar.close()

    export = Path(tc.run_dir) / "export"
    if dist.is_main:
        export_rae(rae, ema, export)
        logger.info(f"exported the {'EMA ' if ema is not None else ''}RAE to {export} (RAE.from_pretrained)")
    logger.close()
    for engine in engines.values():
        engine.close()
    cleanup()
    return export
