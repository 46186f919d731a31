"""Stage "dit": train a class-conditional (or unconditional) RAE-DiT with flow matching (RAE paper sections 4-5).

    unimodal train dit --config configs/dit_tiny.yaml [--deepspeed configs/deepspeed/zero1.json] [key=value ...]

One optimiser step = `train.grad_accum` micro batches, each:
  1. x = latents [B, N, C]: from a latent cache (`unimodal cache-latents`) or `rae.encode(images)`;
  2. t ~ logit-normal(0, 1) (or uniform) moved by `shift` (default the dimension shift
     sqrt(N * C / 4096)); eps ~ N(0, I); labels replaced by the null label with probability
     dit.cond_dropout (CFG, `flow.sample_drop`);
  3. loss = MSE(model(x_t, t, y), eps - x) (unimodal.dit.flow).
The noise, t and dropout of step s come from a generator seeded by (seed, rank, s, micro batch), and
the data stream resumes at its saved position, so rerunning the command after a crash continues
the exact loss sequence. The EMA model is exported as a `DiT.from_pretrained` directory whose
config.json carries the sampler of the sample grids (`dit.sampler`, its shift defaulting to the
training shift): the defaults of `unimodal sample`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch

from unimodal.config import Config, ConfigError, load_config
from unimodal.data.dataset import DataConfig, build_image_dataset
from unimodal.data.latent_cache import LatentCacheDataset
from unimodal.dit.config import DiTConfig
from unimodal.dit.flow import check_shift, flow_matching_loss, resolve_shift, sample_drop, sample_time
from unimodal.dit.model import DiT
from unimodal.dit.sampling import SamplerConfig, noise_from_seeds, sample
from unimodal.rae.autoencoder import RAE
from unimodal.train.checkpoint import resume_run, save_checkpoint
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import all_reduce_mean, cleanup
from unimodal.train.ema import EMA, gathered
from unimodal.train.engine import TrainEngine
from unimodal.train.logging import Throughput, check_finite
from unimodal.train.loop import derive_seed, infinite_loader
from unimodal.train.run import start_run
from unimodal.utils.weights import save_pretrained_dir


@dataclasses.dataclass
class DiTStageConfig(Config):
    renamed = {"time_shift": "shift"}  # the key in configs written before the shift had one name
    dit: DiTConfig = dataclasses.field(default_factory=DiTConfig)
    rae: str | None = None            # RAE directory: encodes images on the fly, decodes sample grids
    latent_cache: str | None = None   # `unimodal cache-latents` output; replaces on-the-fly encoding
    data: DataConfig = dataclasses.field(default_factory=DataConfig)  # used when latent_cache is null
    time_dist: Literal["logit_normal", "uniform"] = "logit_normal"
    shift: float | None = None        # None: sqrt(N * C / 4096), the dimension shift (RAE paper section 4.2)
    sample_classes: list[int] | None = None  # grid labels; None: classes 0, 1, ... (one per image)
    sample_images: int = 8
    device: Literal["cpu", "cuda"] | None = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.dit.cond_mode == "tokens":
            raise ConfigError("stage 'dit' trains class-conditional or unconditional DiTs; token conditioning is trained with the LLM bridge")
        if self.latent_cache is None and self.rae is None:
            raise ConfigError("set latent_cache (from `unimodal cache-latents`) or rae (to encode images on the fly)")
        if self.train.sample_every and self.rae is None:
            raise ConfigError("sample grids are decoded with the RAE: set rae, or train.sample_every=0")
        check_shift(self.shift, "shift", "dimension shift")
        sampler = self.dit.sampler or SamplerConfig()
        if sampler.guidance_scale != 1.0 and (self.dit.cond_mode == "none" or sampler.guidance == "autoguidance"):
            raise ConfigError("sample grids support CFG on class-conditional models only; "
                              "set dit.sampler.guidance_scale=1")
        if self.sample_images < 1:
            raise ConfigError(f"sample_images must be >= 1, got {self.sample_images}")
        if self.sample_classes is not None and self.dit.cond_mode == "class":
            bad = [c for c in self.sample_classes if not 0 <= c < self.dit.num_classes]
            if bad:
                raise ConfigError(f"sample_classes {bad} are outside [0, dit.num_classes={self.dit.num_classes})")


def _check_latent_shape(cfg: DiTStageConfig, tokens: int, channels: int, where: str) -> None:
    if (tokens, channels) != (cfg.dit.num_tokens, cfg.dit.in_channels):
        raise ConfigError(f"{where} gives latents {tokens} x {channels} but dit expects {cfg.dit.num_tokens} x "
                          f"{cfg.dit.in_channels}; set dit.num_tokens={tokens} and dit.in_channels={channels}")


def build_dataset(cfg: DiTStageConfig, rae: RAE | None, dist, log):
    """The latent cache, or the image dataset (encoded by the RAE in the loop)."""
    if cfg.latent_cache is not None:
        ds = LatentCacheDataset(cfg.latent_cache)
        _check_latent_shape(cfg, ds.num_tokens, ds.channels, f"latent cache {cfg.latent_cache}")
        labels_max = ds.num_classes
    else:
        if cfg.data.image_size != rae.config.image_size:
            raise ConfigError(f"data.image_size={cfg.data.image_size} but the RAE works at {rae.config.image_size} px; "
                              f"set data.image_size={rae.config.image_size}")
        ds = build_image_dataset(cfg.data, "train", dist=dist, log=log)
        labels_max = cfg.data.synthetic_classes if cfg.data.source == "synthetic" else None
    if cfg.dit.cond_mode == "class":
        if not ds.has_labels:
            raise ConfigError("dit.cond_mode='class' needs labelled data (class subfolders, a label column, or synthetic_classes)")
        if labels_max is not None and labels_max > cfg.dit.num_classes:
            raise ConfigError(f"the data has {labels_max} classes but dit.num_classes={cfg.dit.num_classes}")
    return ds


@torch.no_grad()
def sample_grid(model: DiT, rae: RAE, cfg: DiTStageConfig, device: torch.device) -> torch.Tensor:
    """Decoded images [n, 3, S, S] in [0, 1] from fixed seeds 0..n-1 (comparable across steps), with
    the model's own sampler."""
    n, dc = cfg.sample_images, cfg.dit
    noise = noise_from_seeds(range(n), dc.num_tokens, dc.in_channels, device)
    labels = None
    if dc.cond_mode == "class":
        classes = cfg.sample_classes or list(range(min(n, dc.num_classes)))
        labels = torch.tensor([classes[i % len(classes)] for i in range(n)], device=device)
    latents = sample(model, noise, labels, model.config.sampler)
    return rae.decode(latents)


def export_dit(model: DiT, ema: EMA | None, directory: Path) -> None:
    """Save the EMA weights (live weights without EMA) in float32 as a DiT.from_pretrained directory."""
    state = ema.export_state_dict(model) if ema is not None else model.state_dict()
    save_pretrained_dir(directory, model.config, {k: v.detach().float().cpu() for k, v in state.items()})


def train(config_path: str | None, overrides: list[str] = (), deepspeed_config: str | None = None) -> Path:
    cfg = load_config(DiTStageConfig, config_path, overrides)
    tc, dc = cfg.train, cfg.dit
    dist, logger = start_run(cfg, tc, cfg.device)
    device = dist.device

    # ---- frozen RAE, data, model ----------------------------------------------------------------
    rae = RAE.from_pretrained(cfg.rae, map_location=device).eval() if cfg.rae is not None else None
    if rae is not None:
        _check_latent_shape(cfg, rae.config.encoder.num_tokens, rae.config.encoder.channels, f"RAE {cfg.rae}")
    dataset = build_dataset(cfg, rae, dist, logger.info)
    shift = resolve_shift(cfg.shift, dc.num_tokens, dc.in_channels)
    sampler = dc.sampler or SamplerConfig()
    # The grids sample at the training shift unless dit.sampler names another; the export keeps
    # this sampler in its config.json.
    model = DiT(dc.replace(sampler=sampler if sampler.shift is not None else sampler.replace(shift=shift)))
    engine = TrainEngine(model, tc, deepspeed_config=deepspeed_config, dist=dist)
    ema = EMA(engine.module, tc.ema_decay) if tc.ema_decay is not None else None
    logger.info(f"dit stage: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params "
                f"({'DiT^DH' if dc.is_dh else 'LightningDiT'}), latents {dc.num_tokens} x {dc.in_channels} from "
                f"{'cache ' + cfg.latent_cache if cfg.latent_cache else 'RAE on the fly'}, {len(dataset)} items, "
                f"t ~ {cfg.time_dist} shifted by {shift:.3f}, world_size={dist.world_size}, "
                f"deepspeed={deepspeed_config is not None}, bf16={engine.bf16}")

    # ---- resume -----------------------------------------------------------------------------------
    step, position, _ = resume_run(tc.run_dir, {"dit": engine}, ema, logger)

    loader = infinite_loader(dataset, tc.batch_size, seed=tc.seed, start_position=position, dist=dist,
                             num_workers=tc.num_workers)
    batches = iter(loader)

    # ---- loop -------------------------------------------------------------------------------------
    bar = logger.progress(tc.total_steps, initial=step, desc="dit")
    speed = Throughput()
    engine.train()
    while step < tc.total_steps:
        lr = engine.set_lr(step)[0]
        losses = []
        for micro in range(tc.grad_accum):
            batch = next(batches)
            if cfg.latent_cache is not None:
                x = batch["latents"].to(device, non_blocking=True)                   # [B, N, C]
            else:
                x = rae.encode(batch["pixels"].to(device, non_blocking=True)).float()  # [B, N, C], no grad
            B = x.shape[0]
            y = batch["label"].to(device) if dc.cond_mode == "class" else None   # [B]
            # All randomness of this micro batch from one generator: identical after a resume.
            g = torch.Generator(device=device).manual_seed(derive_seed(tc.seed, dist.rank, step, micro))
            t = sample_time(B, dist=cfg.time_dist, shift=shift, generator=g, device=device)
            noise = torch.randn(x.shape, generator=g, device=device)
            drop = sample_drop(B, dc.cond_dropout, generator=g, device=device) if y is not None else None
            with engine.autocast():
                loss = flow_matching_loss(engine, x, y, t, noise, drop=drop)
            check_finite(loss, step)
            engine.backward(loss)
            out = engine.step()
            losses.append(loss.detach().float())
            speed.update(B * dist.world_size)
        if ema is not None and out.stepped:
            ema.update(engine.module)
        step += 1
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.total_steps:
            loss_mean = all_reduce_mean(torch.stack(losses).mean()).item()
            logger.metrics(step, loss=loss_mean, lr=lr, grad_norm=out.grad_norm, latents_per_s=speed.rate())
        if tc.sample_every and (step % tc.sample_every == 0 or step == tc.total_steps):
            # Every rank samples (ZeRO-3 needs all ranks in each forward); rank 0 writes the grid.
            module = engine.module
            module.eval()
            with ema.swapped(module) if ema is not None else torch.no_grad(), engine.autocast():
                images = sample_grid(module, rae, cfg, device)
            module.train()
            if dist.is_main:
                from torchvision.utils import save_image

                path = Path(tc.run_dir) / "samples" / f"step_{step:08d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_image(images.float().cpu(), str(path), nrow=min(8, images.shape[0]), padding=2)
        if step % tc.ckpt_every == 0 or step == tc.total_steps:
            extra = {"step": step, "data_position": loader.position, "config": cfg.to_dict(),
                     "ema": ema.state_dict() if ema is not None else None}
            save_checkpoint(tc.run_dir, step, {"dit": engine}, extra, keep=tc.keep_checkpoints)
    bar.close()

    export = Path(tc.run_dir) / "export"
    # On every rank: gathering ZeRO-3 partitioned weights is a collective.
    with gathered(list(engine.module.parameters()), modify=False):
        if dist.is_main:
            export_dit(engine.module, ema, export)
    if dist.is_main:
        logger.info(f"exported the {'EMA ' if ema is not None else ''}DiT to {export} (DiT.from_pretrained)")
    logger.close()
    engine.close()
    cleanup()
    return export
