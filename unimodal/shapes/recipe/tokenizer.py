"""Recipe stage (a): the byte-level BPE tokenizer trained on Shapes captions and ChatML documents."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from unimodal.config import Config, ConfigError, atomic_write_text
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.recipe.common import preset_config


@dataclasses.dataclass
class TokenizerRecipeConfig(Config):
    out_dir: str = "runs/shapes/tokenizer"
    num_scenes: int = 3000          # training scenes whose captions + ChatML documents train it
    vocab_size: int = 1024          # upper bound; the Shapes corpus runs out of merges near ~450
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)

    def __post_init__(self) -> None:
        if self.num_scenes < 1:
            raise ConfigError(f"num_scenes must be >= 1, got {self.num_scenes}")


TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {"full": {}, "quick": dict(num_scenes=300, out_dir="runs/shapes-quick/tokenizer")}


def tokenizer_preset(name: str, overrides: dict[str, Any] | None = None) -> TokenizerRecipeConfig:
    return preset_config(TokenizerRecipeConfig, TOKENIZER_PRESETS, name, overrides)


def train_shapes_tokenizer(cfg: TokenizerRecipeConfig):
    """Train and save the tokenizer into `cfg.out_dir`; returns it."""
    from unimodal.shapes.recipe.data import tokenizer_corpus
    from unimodal.text.tokenizer import train_tokenizer

    out = Path(cfg.out_dir)
    t0 = time.time()
    corpus = tokenizer_corpus(cfg.shapes, cfg.num_scenes)
    tokenizer = train_tokenizer(corpus, cfg.vocab_size, out)
    cfg.save_json(out / "recipe_config.json")
    stats = {"vocab": len(tokenizer), "texts": len(corpus), "seconds": round(time.time() - t0, 2)}
    atomic_write_text(out / "recipe_stats.json", json.dumps(stats) + "\n")
    return tokenizer
