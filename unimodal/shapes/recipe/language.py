"""Tiny Qwen-2.5-architecture language model pretrained on Shapes captions (plain and ChatML).

The model is transformers' own `Qwen2ForCausalLM` built from a tiny `Qwen2Config` with the
Qwen-2.5 design choices kept: grouped-query attention (2 KV heads for 4 query heads), SwiGLU MLP,
RMSNorm, RoPE, qkv bias, tied input/output embeddings (as Qwen2.5-0.5B/1.5B). Later stages load it
with `AutoModelForCausalLM.from_pretrained(dir)` exactly like a real Qwen2.5 checkpoint, and the
same directory holds the tokenizer.

Pretraining data: documents built from Shapes scenes (see `recipe.data.lm_documents`) joined with
`<|endoftext|>` and packed into fixed-length blocks (GPT-2 / Qwen pretraining style: no padding,
attention runs across document boundaries, the separator teaches the model to stop). Loss: plain
next-token cross entropy over every position.
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
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import init_distributed
from unimodal.train.engine import TrainEngine
from unimodal.train.loop import ResumableBatchSampler


@dataclasses.dataclass
class LanguageRecipeConfig(Config):
    tokenizer: str = "runs/shapes/tokenizer"   # directory written by the tokenizer stage
    # Architecture (Qwen2Config fields).
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 688
    max_position_embeddings: int = 512        # text + IMAGE_START + num_latent_tokens pads + answer
    rope_theta: float = 1_000_000.0           # Qwen2.5's value
    # Data.
    seq_len: int = 128                        # packed block length for pretraining
    num_scenes: int = 8000                    # training scenes (~90 tokens of documents each)
    eval_scenes: int = 500                    # held-out scenes (split "val")
    chatml_fraction: float = 0.5              # share of documents written as ChatML conversations
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)
    eval_every: int = 0                       # 0 = only at the end
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        run_dir="runs/shapes/lm", total_steps=300, batch_size=16, lr=2e-3, min_lr=2e-4,
        warmup_steps=30, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0, log_every=50))

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads ({self.num_key_value_heads})")
        if not 2 <= self.seq_len <= self.max_position_embeddings:
            raise ConfigError(f"seq_len must be in [2, max_position_embeddings={self.max_position_embeddings}], got {self.seq_len}")
        if not 0.0 <= self.chatml_fraction <= 1.0:
            raise ConfigError(f"chatml_fraction must be in [0, 1], got {self.chatml_fraction}")
        if self.num_scenes < 1 or self.eval_scenes < 1:
            raise ConfigError("num_scenes and eval_scenes must be >= 1")


# Presets: "full" fits the recipe's CPU budget (~6 min on 2 busy cores), "quick" is for tests/CI.
LANGUAGE_PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=172, seq_len=64, num_scenes=200, eval_scenes=30,
                  train=dict(run_dir="runs/shapes-quick/lm", total_steps=40, batch_size=8, lr=3e-3,
                             min_lr=3e-4, warmup_steps=4, weight_decay=0.1, log_every=10)),
}


def language_preset(name: str, overrides: dict[str, Any] | None = None) -> LanguageRecipeConfig:
    return preset_config(LanguageRecipeConfig, LANGUAGE_PRESETS, name, overrides)


def qwen2_config(cfg: LanguageRecipeConfig, tokenizer):
    """The tiny Qwen2Config: Qwen-2.5 choices, our vocabulary and special-token ids."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False, hidden_act="silu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )


def pack_documents(tokenizer, documents: list[str], seq_len: int) -> torch.Tensor:
    """Tokenise, join with the pad/end-of-text token and cut into [num_blocks, seq_len] (tail dropped)."""
    sep = tokenizer.pad_token_id
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(sep)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"only {len(stream)} tokens: not one block of seq_len={seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def evaluate_lm(model, blocks: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean next-token CE over held-out blocks (every block has the same length, so means combine)."""
    was_training = model.training
    model.eval()
    losses = [float(model(input_ids=b, labels=b).loss) for b in blocks.split(batch_size)]
    weights = [len(b) for b in blocks.split(batch_size)]
    model.train(was_training)
    loss = sum(l * w for l, w in zip(losses, weights)) / sum(weights)
    return {"eval_loss": loss, "eval_ppl": math.exp(loss)}


@dataclasses.dataclass
class LanguageResult:
    model_dir: Path
    metrics: dict[str, float]


def train_language(cfg: LanguageRecipeConfig, progress: bool = True) -> LanguageResult:
    """Pretrain the tiny Qwen2 LM; writes `<run_dir>/model` (model + tokenizer) and metrics.json."""
    from transformers import Qwen2ForCausalLM

    from unimodal.shapes.recipe.data import EVAL_SPLIT, TRAIN_SPLIT, lm_documents

    run_dir = Path(cfg.train.run_dir)
    logger, tokenizer = open_stage(cfg, "lm")
    t0, cpu0 = time.time(), time.process_time()
    train_blocks = pack_documents(tokenizer, lm_documents(cfg.shapes, TRAIN_SPLIT, cfg.num_scenes, cfg.chatml_fraction),
                                  cfg.seq_len)
    eval_blocks = pack_documents(tokenizer, lm_documents(cfg.shapes, EVAL_SPLIT, cfg.eval_scenes, cfg.chatml_fraction),
                                 cfg.seq_len)
    logger.info(f"lm data: {len(train_blocks)} train / {len(eval_blocks)} eval blocks of {cfg.seq_len} tokens "
                f"({time.time() - t0:.1f} s)")

    torch.manual_seed(cfg.train.seed)
    model = Qwen2ForCausalLM(qwen2_config(cfg, tokenizer))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"lm: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")
    # CUDA when available (init_distributed's rule); the model returns to the CPU for evaluation and export
    dist = init_distributed()
    device = dist.device
    engine = TrainEngine(model, cfg.train, dist=dist)
    batches = iter(ResumableBatchSampler(len(train_blocks), cfg.train.batch_size, seed=cfg.train.seed))
    log = StepLog(logger, cfg.train.total_steps, cfg.train.log_every, "lm", progress,
                  cfg.train.batch_size * cfg.seq_len, "tokens")
    eval_on_device = eval_blocks.to(device)     # moved once, for the evaluations during training
    for step in range(cfg.train.total_steps):
        batch = train_blocks[next(batches)].to(device)                        # [B, seq_len]
        with engine.autocast():
            loss = engine(input_ids=batch, labels=batch).loss                 # HF shifts the labels
        engine.backward(loss)
        out = engine.step()
        engine.set_lr(step + 1)
        extra = evaluate_lm(model, eval_on_device) if cfg.eval_every and (step + 1) % cfg.eval_every == 0 else {}
        log.update(step, loss, out.grad_norm, engine.lrs()[0], **extra)
    train_seconds = log.close()
    model.cpu()
    metrics = {"first_loss": log.first, "final_train_loss": log.smooth, **evaluate_lm(model, eval_blocks),
               "params": n_params, "tokens_seen": cfg.train.total_steps * cfg.train.batch_size * cfg.seq_len,
               "train_seconds": train_seconds, "total_seconds": time.time() - t0,
               "total_cpu_seconds": time.process_time() - cpu0}

    model_dir = run_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)  # one directory loads both, like a hub checkpoint
    finish_stage(logger, "lm", run_dir, metrics)
    return LanguageResult(model_dir=model_dir, metrics=metrics)
