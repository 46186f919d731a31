"""Tiny unified models and a toy colour world, for tests, benchmarks and smoke runs (no weights).

The toy world: solid-colour images with a centred square of a second colour, captioned
"a {fg} square on {bg}". Different colours give clearly different latents even through a random
tiny SigLIP, which is all a test of captioning / judging needs.
"""
from __future__ import annotations

import functools
import itertools
import tempfile

import torch

from unimodal.unified.chat import CAPTION_QUESTION, GENERATE_TEMPLATE, JUDGE_TEMPLATE, NO, YES
from unimodal.unified.config import tiny_unified_config

TOY_COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9), "yellow": (0.95, 0.9, 0.1)}


def toy_pairs() -> list[tuple[str, str]]:
    """(foreground, background) colour pairs, each a distinct toy image."""
    return [(f, b) for f, b in itertools.permutations(TOY_COLORS, 2)]


def toy_caption(fg: str, bg: str) -> str:
    return f"a {fg} square on {bg}"


def toy_image(fg: str, bg: str, size: int = 32) -> torch.Tensor:
    """[3, size, size] in [0, 1]."""
    img = torch.tensor(TOY_COLORS[bg]).view(3, 1, 1).expand(3, size, size).clone()
    q = size // 4
    img[:, q:size - q, q:size - q] = torch.tensor(TOY_COLORS[fg]).view(3, 1, 1)
    return img


def toy_corpus() -> list[str]:
    texts = [toy_caption(f, b) for f, b in toy_pairs()]
    fixed = [GENERATE_TEMPLATE.format(prompt=""), CAPTION_QUESTION, JUDGE_TEMPLATE.format(prompt=""), YES, NO,
             "user\n", "assistant\n", "system\n", "You are a helpful assistant."]
    return (texts + fixed) * 4


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_dir() -> str:
    from unimodal.text.tokenizer import train_tokenizer

    out = tempfile.mkdtemp(prefix="unimodal-tiny-tok-")
    train_tokenizer(toy_corpus(), 320, out)
    return out


def tiny_tokenizer():
    """A byte-level BPE tokenizer (Qwen2's pipeline) trained on the toy corpus, once per process."""
    from unimodal.text.tokenizer import load_tokenizer

    tok, _ = load_tokenizer(_tiny_tokenizer_dir())
    return tok


def tiny_model(seed: int = 0, **config_changes):
    """A random tiny UnifiedModel (about 0.4 M parameters) with the toy tokenizer."""
    from unimodal.unified.model import UnifiedModel

    torch.manual_seed(seed)
    return UnifiedModel.from_config(tiny_unified_config(**config_changes), tokenizer=tiny_tokenizer())
