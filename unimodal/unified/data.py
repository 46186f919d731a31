"""Training conversations from image + caption pairs: text-to-image, captioning and judging.

Each item of a batch becomes one conversation about its own latent (index i of the batch's
latents), its task drawn from `TaskMix`:
- ``t2i``: "Generate an image: {caption}" -> assistant image span (CE on <|vision_start|> and the
  closing <|im_end|>, flow matching at the queries);
- ``caption``: image + "Describe this image." -> the caption (CE);
- ``judge``: image + "Does this image align with the prompt: {p}?" -> "yes" for its own caption,
  "no" for a wrong one, half and half; this is what gives self-verification signal. A wrong prompt is
  the item's hard negative when it has one (a caption that differs from the truth in one detail, e.g.
  one shape word), with probability `TaskMix.hard_negative`, else another caption of the batch. Best-of-N
  ranks candidates of one prompt, which mostly differ in such details, so the judge needs to have
  been asked about them: negatives of other scenes differ in colours and layout too.
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
    hard_negative: float = 0.0    # P(a judge's "no" asks about the item's hard negative, when it has one)

    def __post_init__(self) -> None:
        weights = [self.t2i, self.caption, self.judge]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"task mix weights must be >= 0 with a positive sum, got t2i={self.t2i} "
                              f"caption={self.caption} judge={self.judge}")
        if not 0.0 <= self.hard_negative <= 1.0:
            raise ConfigError(f"mix.hard_negative must be in [0, 1], got {self.hard_negative}")

    @property
    def weights(self) -> list[float]:
        return [self.t2i, self.caption, self.judge]


def make_chats(chat: ChatFormat, captions: Sequence[str], mix: TaskMix, rng: random.Random,
               tasks: Sequence[str] | None = None,
               negatives: Sequence[str | None] | None = None) -> tuple[list[EncodedChat], list[str]]:
    """One conversation per caption (about latent i); returns the chats and the task of each.
    `negatives[i]`, when given and not None, is a caption known to be wrong for image i."""
    if tasks is None:
        tasks = rng.choices(TASKS, weights=mix.weights, k=len(captions))
    if negatives is not None and len(negatives) != len(captions):
        raise ValueError(f"{len(negatives)} negatives for {len(captions)} captions")
    chats = []
    for i, (cap, task) in enumerate(zip(captions, tasks)):
        if task == "t2i":
            chats.append(chat.encode(chat.generate_chat(cap, target=i)))
        elif task == "caption":
            chats.append(chat.encode(chat.caption_chat(i, cap)))
        elif task == "judge":
            hard = negatives[i] if negatives is not None and negatives[i] not in (None, cap) else None
            others = sorted({c for c in captions if c != cap})
            match = not (others or hard) or rng.random() < 0.5
            if match:
                prompt = cap
            elif hard is not None and (not others or rng.random() < mix.hard_negative):
                prompt = hard
            else:
                prompt = rng.choice(others)
            chats.append(chat.encode(chat.judge_chat(i, prompt, answer=match)))
        else:
            raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    return chats, list(tasks)


def make_batch(chat: ChatFormat, captions: Sequence[str], mix: TaskMix, rng: random.Random,
               tasks: Sequence[str] | None = None, negatives: Sequence[str | None] | None = None) -> ChatBatch:
    chats, _ = make_chats(chat, captions, mix, rng, tasks, negatives)
    return collate(chats, chat.pad_id, "right")
