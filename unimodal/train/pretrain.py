"""Stage "pretrain": train the unified model on image + caption pairs (Scale-RAE stage 1).

    unimodal train pretrain --config configs/unified_tiny.yaml [--deepspeed configs/deepspeed/zero1.json] [key=value ...]

One optimiser step = `train.grad_accum` micro batches, each:
  1. latents = frozen SigLIP-2 encoder(images)                        [B, N, C], no grad
  2. one conversation per image: text-to-image / caption / judge (`mix`)
  3. loss = CE(answers) + fm_weight * flow matching at the query spans (`unimodal.unified.loss`)
Two AdamW groups: LLM + projector + queries (llm_lr, llm_betas) and DiT + connector (dit_lr,
dit_betas), each on the warm-up + cosine schedule of `train`, scaled to its own peak. The LLM
trains fully, frozen (MetaQuery) or through LoRA (`llm_mode`). Rerunning the command resumes from
the newest checkpoint of `train.run_dir` with the exact data order, task draws and RNG state.
Every `train.sample_every` steps a grid of generated images is written with the model's own
critique (P(yes) and its caption of the latent) under each. The final (EMA) model is exported
as a `UnifiedModel.from_pretrained` directory, `run_dir/export`.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Literal

import torch

from unimodal.config import Config, ConfigError, load_config
from unimodal.data.dataset import DataConfig, build_image_dataset
from unimodal.dit.flow import check_shift, resolve_shift
from unimodal.train.checkpoint import resume_run, save_checkpoint
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import all_reduce_mean, cleanup
from unimodal.train.ema import EMA, gathered
from unimodal.train.engine import TrainEngine
from unimodal.train.logging import RunLogger, Throughput, check_finite
from unimodal.train.loop import derive_seed, infinite_loader
from unimodal.train.run import start_run
from unimodal.unified.config import UnifiedConfig
from unimodal.unified.data import TaskMix, make_batch
from unimodal.unified.loss import JointLoss
from unimodal.unified.model import UnifiedModel
from unimodal.unified.trainable import LLMMode, LoraSettings, configure_trainable, param_groups
from unimodal.utils.compiling import CompileSetting, check_compile_setting, use_compile

DEFAULT_SAMPLE_PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow star"]


@dataclasses.dataclass
class UnifiedStageConfig(Config):
    renamed = {"sample_steps": "sample_num_inference_steps"}  # the key in configs written before diffusers' names
    model: UnifiedConfig = dataclasses.field(default_factory=UnifiedConfig)
    init_from: str | None = None          # a unified model directory; None = build from `model`
    llm_mode: LLMMode = "full"
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    unfreeze: list[str] = dataclasses.field(default_factory=list)   # LLM parameter name substrings
    mix: TaskMix = dataclasses.field(default_factory=TaskMix)
    fm_weight: float = 2.0                # lambda of CE + lambda * flow matching (Scale-RAE: 2.0)
    fm_repeats: int = 1                   # (time, noise) draws per generation target (unimodal.unified.loss)
    compile: CompileSetting = False       # torch.compile the LLM and DiT of the training forward (JointLoss);
                                          # "auto": where TorchInductor has a code generator (unimodal.utils.compiling)
    shift: float | None = None            # training times' shift; None = the model's `shift`, the sampler's
    llm_lr: float = 5.65e-5
    llm_betas: tuple[float, float] = (0.9, 0.999)
    dit_lr: float = 5.65e-4
    dit_betas: tuple[float, float] = (0.9, 0.95)
    dataset: Literal["images", "toy"] = "images"   # images: `data` (captions required); toy: unified.testing
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(captions=True))
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sample_prompts: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_SAMPLE_PROMPTS))
    sample_num_inference_steps: int = 25  # DiT steps for the sample grids
    device: Literal["cpu", "cuda"] | None = None

    def __post_init__(self) -> None:
        if self.fm_weight < 0:
            raise ConfigError(f"fm_weight must be >= 0, got {self.fm_weight}")
        if self.fm_repeats < 1:
            raise ConfigError(f"fm_repeats must be >= 1, got {self.fm_repeats}")
        check_shift(self.shift, "shift", "the model's shift")
        check_compile_setting(self.compile)
        if self.llm_lr <= 0 or self.dit_lr <= 0:
            raise ConfigError(f"llm_lr and dit_lr must be > 0, got {self.llm_lr} / {self.dit_lr}")
        if self.dataset == "images" and not self.data.captions:
            raise ConfigError("the unified stages need captions: set data.captions=true")
        if self.sample_num_inference_steps < 1:
            raise ConfigError(f"sample_num_inference_steps must be >= 1, got {self.sample_num_inference_steps}")
        if self.train.sample_every and not self.sample_prompts:
            raise ConfigError("train.sample_every > 0 needs sample_prompts")


class ToyDataset(torch.utils.data.Dataset):
    """The toy colour world of `unimodal.unified.testing` as {"pixels", "caption"} items."""

    def __init__(self, image_size: int):
        from unimodal.unified.testing import toy_caption, toy_image, toy_pairs

        self.items = [(toy_image(f, b, image_size), toy_caption(f, b)) for f, b in toy_pairs()]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        pixels, cap = self.items[i]
        return {"pixels": pixels, "caption": cap}


@dataclasses.dataclass
class StepInfo:
    """What `StageHooks.after_step` sees after each optimiser step."""
    step: int                   # optimiser steps done
    loss: float                 # this rank's mean loss over the step's micro batches
    grad_norm: float            # global gradient norm before clipping (nan: the update was skipped)
    model: UnifiedModel
    engine: TrainEngine
    ema: EMA | None
    logger: RunLogger


class StageHooks:
    """Extension points of `run_stage`, each called on every rank; the defaults change nothing.
    `unimodal.finetune` uses them for its data sources, validation and divergence rollback."""

    def configure(self, model: UnifiedModel) -> None:
        """After `configure_trainable`, before the optimiser groups are built (e.g. freeze the DiT)."""

    def build_dataset(self, cfg: UnifiedStageConfig, dist, log) -> torch.utils.data.Dataset | None:
        """The training dataset, or None for the one `cfg.dataset` / `cfg.data` describe."""
        return None

    def after_step(self, info: StepInfo) -> None:
        """After each optimiser step and its log row, before its samples and checkpoint; may raise."""

    def state_dict(self) -> dict:
        """Stored in every checkpoint (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """The stored `state_dict()`, on resume."""


def collate_items(items: list[dict]) -> dict:
    return {"pixels": torch.stack([it["pixels"] for it in items]), "caption": [it["caption"] for it in items],
            "negative": [it.get("negative") for it in items]}


def build_model(cfg: UnifiedStageConfig) -> UnifiedModel:
    if cfg.init_from is not None:
        return UnifiedModel.from_pretrained(cfg.init_from)
    tokenizer = None
    if cfg.dataset == "toy" and cfg.model.tokenizer_path is None and cfg.model.init_llm_from is None:
        from unimodal.unified.testing import tiny_tokenizer

        tokenizer = tiny_tokenizer()   # the toy world's own tokenizer, trained on the fly
    return UnifiedModel.from_config(cfg.model, tokenizer=tokenizer)


def train(config_path: str | None, overrides: list[str] = (), deepspeed_config: str | None = None,
          hooks: StageHooks | None = None) -> Path:
    cfg = load_config(UnifiedStageConfig, config_path, overrides)
    return run_stage(cfg, deepspeed_config, stage="pretrain", hooks=hooks)


def run_stage(cfg: UnifiedStageConfig, deepspeed_config: str | None, stage: str,
              hooks: StageHooks | None = None) -> Path:
    tc = cfg.train
    hooks = hooks or StageHooks()
    if deepspeed_config is not None and cfg.compile is True:
        raise ConfigError("compile=true is for the plain engine (one process or DDP); DeepSpeed stages run eager")
    dist, logger = start_run(cfg, tc, cfg.device)
    device = dist.device

    # ---- model, trainable set, optimiser groups -------------------------------------------------
    model = build_model(cfg)
    configure_trainable(model, cfg.llm_mode, cfg.lora, cfg.unfreeze)
    hooks.configure(model)
    groups = param_groups(model, llm_lr=cfg.llm_lr, llm_betas=cfg.llm_betas, dit_lr=cfg.dit_lr, dit_betas=cfg.dit_betas,
                          weight_decay=tc.weight_decay)
    # Training times: the stage's own shift, else the built model's (not cfg.model's: with init_from
    # the saved config is the one that samples).
    shift = model.config.shift if cfg.shift is None else cfg.shift
    compiled = deepspeed_config is None and use_compile(cfg.compile, device)
    engine = TrainEngine(JointLoss(model, cfg.fm_weight, shift, cfg.fm_repeats, compile=compiled), tc, groups,
                         deepspeed_config=deepspeed_config, dist=dist)
    model = engine.module.model
    ema = EMA(model, tc.ema_decay) if tc.ema_decay is not None else None
    numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731  (ZeRO-3 partitions show numel 0)
    n_train = sum(numel(p) for g in groups for p in g["params"])
    logger.info(f"{stage}: {n_train / 1e6:.2f}M trainable of {sum(numel(p) for p in model.parameters()) / 1e6:.2f}M, "
                f"llm_mode={cfg.llm_mode}, latent {model.config.num_latent_tokens} x {model.config.latent_dim}, "
                f"t shifted by {resolve_shift(shift, model.config.num_latent_tokens, model.config.latent_dim):.3f}, "
                f"world_size={dist.world_size}, deepspeed={deepspeed_config is not None}, bf16={engine.bf16}, "
                f"compile={compiled}")

    # ---- resume -------------------------------------------------------------------------------
    step, position, extra = resume_run(tc.run_dir, {"model": engine}, ema, logger)
    hooks.load_state_dict(extra.get("hooks") or {})

    # ---- data ---------------------------------------------------------------------------------
    dataset = hooks.build_dataset(cfg, dist, logger.info)
    if dataset is None and cfg.dataset == "toy":
        dataset = ToyDataset(cfg.model.rae.encoder.image_size)
    elif dataset is None:
        dataset = build_image_dataset(cfg.data, "train", dist=dist, log=logger.info)
    loader = infinite_loader(dataset, tc.batch_size, seed=tc.seed, start_position=position, dist=dist,
                             num_workers=tc.num_workers, collate_fn=collate_items)
    batches = iter(loader)

    # ---- loop ---------------------------------------------------------------------------------
    bar = logger.progress(tc.total_steps, initial=step, desc=stage)
    speed = Throughput()
    engine.train()
    while step < tc.total_steps:
        lrs = engine.set_lr(step)
        logs: dict[str, list[float]] = {}
        for micro in range(tc.grad_accum):
            items = next(batches)
            latents = model.encode_images(items["pixels"])                       # [B, N, C], frozen
            # Task draws depend only on (seed, rank, step, micro): a resumed run draws the same.
            rng = random.Random(derive_seed(tc.seed, dist.rank, step, micro))
            batch = make_batch(model.chat, items["caption"], cfg.mix, rng, negatives=items["negative"]).to(device)
            with engine.autocast():
                out = engine(batch, latents)
            check_finite(out.loss, step)
            engine.backward(out.loss)
            res = engine.step()
            for k, v in (("loss", out.loss.detach()), ("ce", out.ce), ("fm", out.fm)):
                logs.setdefault(k, []).append(float(v))
            speed.update(len(items["caption"]) * dist.world_size)
        if ema is not None and res.stepped:
            ema.update(model)
        step += 1
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.total_steps:
            means = all_reduce_mean(torch.tensor([sum(v) / len(v) for v in logs.values()], device=device))
            row = dict(zip(logs, means.tolist()))
            row.update({f"lr_{g['name']}": lr for g, lr in zip(groups, lrs)})
            row.update(grad_norm=res.grad_norm, imgs_per_s=speed.rate())
            logger.metrics(step, **row)
        hooks.after_step(StepInfo(step, sum(logs["loss"]) / len(logs["loss"]), res.grad_norm, model, engine, ema, logger))
        if tc.sample_every and (step % tc.sample_every == 0 or step == tc.total_steps):
            with engine.autocast():   # bf16 engine weights take float inputs under autocast
                _sample(model, ema, cfg, Path(tc.run_dir) / "samples" / f"step_{step:08d}.png", dist.is_main)
            engine.train()
        if step % tc.ckpt_every == 0 or step == tc.total_steps:
            extra = {"step": step, "data_position": loader.position, "config": cfg.to_dict(),
                     "ema": ema.state_dict() if ema is not None else None, "hooks": hooks.state_dict()}
            save_checkpoint(tc.run_dir, step, {"model": engine}, extra, keep=tc.keep_checkpoints)
    bar.close()

    export = Path(tc.run_dir) / "export"
    # On every rank: under ZeRO-3 the EMA swap and gathering the partitioned weights are collectives.
    with ema.swapped(model) if ema is not None else torch.no_grad(), gathered(list(model.parameters()), modify=False):
        if dist.is_main:
            model.save_pretrained(export)
    if dist.is_main:
        logger.info(f"exported the {'EMA ' if ema is not None else ''}model to {export} (UnifiedModel.from_pretrained)")
    logger.close()
    engine.close()
    cleanup()
    return export


def _sample(model: UnifiedModel, ema: EMA | None, cfg: UnifiedStageConfig, path: Path, is_main: bool) -> None:
    """Every rank samples (ZeRO-3 gathers need all of them); rank 0 writes the grid."""
    from unimodal.unified.visualize import critique_grid

    with ema.swapped(model) if ema is not None else torch.no_grad():
        critique_grid(model, cfg.sample_prompts, path if is_main else None, seed=cfg.train.seed,
                      num_inference_steps=cfg.sample_num_inference_steps)
