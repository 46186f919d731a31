"""Settings of a chat session and the limits a server puts on what a client may ask for.

Without `--model`, `unimodal chat` / `serve` load the shipped model (`unimodal.shipped`).
"""
from __future__ import annotations

import dataclasses
import math

from unimodal.config import Config, ConfigError
from unimodal.limits import MAX_CANDIDATES, MAX_STEPS


@dataclasses.dataclass
class ChatSettings(Config):
    """What a turn runs with; recorded with every turn so a session replays exactly."""
    # The keys of session.json files saved before the diffusers names.
    renamed = {"steps": "num_inference_steps", "cfg": "guidance_scale"}
    seed: int = 0                    # run seed: candidate k of prompt p uses sample_seed(seed, p, k)
    num_inference_steps: int | None = None  # DiT sampling steps; None = the model's default
    guidance_scale: float | None = None     # classifier-free guidance; None = the model's default (1 = off)
    n: int = 1                       # candidates per /image (the best one by P(yes) is kept)
    tokens: int = 64                 # most new tokens in an answer or caption
    auto_critique: bool = False      # caption every new image (the web UI's gallery shows it)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        steps, scale = self.num_inference_steps, self.guidance_scale
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise ConfigError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"guidance must be > 0 (1 = off), got {scale}")
        if not 1 <= self.n <= MAX_CANDIDATES:
            raise ConfigError(f"n must be in [1, {MAX_CANDIDATES}], got {self.n}")
        if self.tokens < 1:
            raise ConfigError(f"tokens must be >= 1, got {self.tokens}")


@dataclasses.dataclass
class ServeLimits(Config):
    """Server-side bounds on a request (`unimodal serve`); a request beyond them gets a message."""
    # The `--limit` keys of earlier releases, before the diffusers names.
    renamed = {"max_steps": "max_num_inference_steps", "max_cfg": "max_guidance_scale"}
    max_prompt_chars: int = 500
    max_n: int = 8
    max_num_inference_steps: int = 100
    max_guidance_scale: float = 20.0
    max_tokens: int = 128
    max_seed: int = 2**31 - 1
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_conversations: int = 32      # oldest conversation's memory is dropped beyond this
    max_queue: int = 64              # waiting requests beyond this are refused by the queue

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"ServeLimits.{f.name} must be >= 1, got {getattr(self, f.name)}")

    def check(self, settings: ChatSettings) -> None:
        """Raise ValueError naming the first setting beyond these limits."""
        if settings.n > self.max_n:
            raise ValueError(f"N is {settings.n}; this server allows at most {self.max_n} candidates")
        steps, scale = settings.num_inference_steps, settings.guidance_scale
        if steps is not None and steps > self.max_num_inference_steps:
            raise ValueError(f"steps is {steps}; this server allows at most {self.max_num_inference_steps}")
        if scale is not None and scale > self.max_guidance_scale:
            raise ValueError(f"guidance is {scale}; this server allows at most {self.max_guidance_scale}")
        if settings.tokens > self.max_tokens:
            raise ValueError(f"tokens is {settings.tokens}; this server allows at most {self.max_tokens}")
        if settings.seed > self.max_seed:
            raise ValueError(f"seed is {settings.seed}; this server allows at most {self.max_seed}")
