"""Training conversations from image + caption pairs: text-to-image, captioning and judging.

Each item of a batch becomes one conversation about its own latent (index i of the batch's
latents), its task drawn from `TaskMix`:
- ``t2i``: "Generate an image: {caption}" -> assistant image span (CE on <|vision_start|> and the
  closing <|im_end|>, flow matching at the queries);
- ``caption``: image + "Describe this image." -> the caption (CE);
- ``judge``: image + "Does this image align with the prompt: {p}?" -> "yes" for its own caption,
  "no" for another caption of the batch, half and half; this is what gives self-verification signal.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from unimodal.config import Config, ConfigError
from unimodal.unified.chat import ChatBatch, ChatFormat, EncodedChat, collate

TASKS = ("t2i", "caption", "judge")


@dataclasses.dataclass
class TaskMix(Config):
    t2i: float = 0.5
    caption: float = 0.3
    judge: float = 0.2

    def __post_init__(self) -> None:
        weights = [self.t2i, self.caption, self.judge]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"task mix weights must be >= 0 with a positive sum, got t2i={self.t2i} "
                              f"caption={self.caption} judge={self.judge}")

    @property
    def weights(self) -> list[float]:
        return [self.t2i, self.caption, self.judge]


def make_chats(chat: ChatFormat, captions: Sequence[str], mix: TaskMix, rng: random.Random,
               tasks: Sequence[str] | None = None) -> tuple[list[EncodedChat], list[str]]:
    """One conversation per caption (about latent i); returns the chats and the task of each."""
    if tasks is None:
        tasks = rng.choices(TASKS, weights=mix.weights, k=len(captions))
    chats = []
    for i, (cap, task) in enumerate(zip(captions, tasks)):
        if task == "t2i":
            chats.append(chat.encode(chat.generate_chat(cap, target=i)))
        elif task == "caption":
            chats.append(chat.encode(chat.caption_chat(i, cap)))
        elif task == "judge":
            others = sorted({c for c in captions if c != cap})
            match = not others or rng.random() < 0.5
            chats.append(chat.encode(chat.judge_chat(i, cap if match else rng.choice(others), answer=match)))
        else:
            raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    return chats, list(tasks)


def make_batch(chat: ChatFormat, captions: Sequence[str], mix: TaskMix, rng: random.Random,
               tasks: Sequence[str] | None = None) -> ChatBatch:
    chats, _ = make_chats(chat, captions, mix, rng, tasks)
    return collate(chats, chat.pad_id, "right")
