"""The conversation format: ChatML turns with image spans, tokenised segment by segment.

A turn is ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` (Qwen-2.5's ChatML). An image inside a turn
is ``<|vision_start|>`` + ``<|image_pad|>`` x N + ``<|vision_end|>``; the N pad positions carry

- :class:`ImageIn`: a latent the model *reads* (a SigLIP-2 encoding or a generated latent) after the
  understanding projector, or
- :class:`ImageOut`: the learnable queries whose final hidden states condition the DiT (generation).

Every text segment is tokenised on its own and the special ids are inserted directly, so training
and inference produce identical ids whatever the tokenizer does with special-token text. Only the
assistant's answer tokens, an assistant ``<|vision_start|>`` (the model *asks* for an image) and the
closing ``<|im_end|>`` carry labels; the pads and ``<|vision_end|>`` are forced, never predicted.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence, Union

import torch

from unimodal.text.special_tokens import IM_END, IM_START, IMAGE_END, IMAGE_PAD, IMAGE_START, PAD, SPECIAL_TOKENS

IGNORE = -100

# Task templates (Scale-RAE section 5 for the judge and likelihood questions).
GENERATE_TEMPLATE = "Generate an image: {prompt}"
CAPTION_QUESTION = "Describe this image."
JUDGE_TEMPLATE = "Does this image align with the prompt: {prompt}?"
# A prompt or caption is tokenised inside its template, not alone: tokens can merge across its two edges.
EDGE_TOKENS = 4
YES, NO = "yes", "no"


@dataclasses.dataclass(frozen=True)
class ImageIn:
    """An image the model reads; `ref` indexes the batch's latents [M, N, C]."""
    ref: int


@dataclasses.dataclass(frozen=True)
class ImageOut:
    """An image the model writes (query span); `ref` indexes the target latents (training) or is -1."""
    ref: int = -1


Part = Union[str, ImageIn, ImageOut]


@dataclasses.dataclass
class Message:
    role: Literal["system", "user", "assistant"]
    content: list[Part]

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"message role must be system/user/assistant, got {self.role!r}")
        if isinstance(self.content, (str, ImageIn, ImageOut)):
            self.content = [self.content]


@dataclasses.dataclass
class EncodedChat:
    """One tokenised conversation. Spans are (position of the first pad, ref), in order."""
    input_ids: list[int]
    labels: list[int]
    read_spans: list[tuple[int, int]]
    write_spans: list[tuple[int, int]]
    image_len: int                 # N pads per image span


@dataclasses.dataclass
class ChatBatch:
    """Padded tensors for the LLM. Masks mark pad positions, filled in row-major order, so the
    k-th image span of the batch (sorted by row, then position) takes `*_refs[k]`."""
    input_ids: torch.Tensor        # [B, L] long
    labels: torch.Tensor           # [B, L] long, IGNORE where no loss
    attention_mask: torch.Tensor   # [B, L] long, 0 at padding
    position_ids: torch.Tensor     # [B, L] long, counts only real tokens (left padding safe)
    read_mask: torch.Tensor        # [B, L] bool, positions of projected latents
    read_refs: torch.Tensor        # [M] long
    write_mask: torch.Tensor       # [B, L] bool, positions of the queries
    write_refs: torch.Tensor       # [G] long (-1 = no target)

    def to(self, device: torch.device | str) -> "ChatBatch":
        return ChatBatch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


class ChatFormat:
    """Turns messages into ids for one tokenizer and one latent length N."""

    def __init__(self, tokenizer, num_image_tokens: int, system_prompt: str | None = None,
                 generate_template: str = GENERATE_TEMPLATE):
        missing = [t for t in SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; call unimodal.unified.model.add_special_tokens first")
        self.tokenizer = tokenizer
        self.num_image_tokens = int(num_image_tokens)
        self.system_prompt = system_prompt
        self.generate_template = generate_template
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.im_start, self.im_end = ids[IM_START], ids[IM_END]
        self.image_start, self.image_end, self.image_pad = ids[IMAGE_START], ids[IMAGE_END], ids[IMAGE_PAD]
        self.pad_id = ids[PAD]
        self._cache: dict[str, list[int]] = {}
        self.yes_id = self._answer_token(YES)
        self.no_id = self._answer_token(NO)

    def text(self, s: str) -> list[int]:
        if s not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            # verbose=False: no warning against the tokenizer's model_max_length; lengths are
            # checked against the LLM's positions (generate.max_prompt_tokens, the chat engine).
            self._cache[s] = list(self.tokenizer.encode(s, add_special_tokens=False, verbose=False))
        return self._cache[s]

    def _answer_token(self, word: str) -> int:
        ids = self.text(word)
        if not ids:
            raise ValueError(f"tokenizer encodes the judge answer {word!r} to nothing")
        return ids[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ encoding
    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = False,
               add_system: bool = True) -> EncodedChat:
        """Tokenise a conversation. With `add_generation_prompt` it ends in an open assistant turn;
        `add_system=False` skips the default system turn (a later turn of a running session)."""
        ids: list[int] = []
        labels: list[int] = []
        reads: list[tuple[int, int]] = []
        writes: list[tuple[int, int]] = []

        def put(tokens: Sequence[int], learn: bool) -> None:
            ids.extend(tokens)
            labels.extend(tokens if learn else [IGNORE] * len(tokens))

        msgs = list(messages)
        if add_system and self.system_prompt is not None and not (msgs and msgs[0].role == "system"):
            msgs.insert(0, Message("system", [self.system_prompt]))
        for m in msgs:
            learn = m.role == "assistant"
            put([self.im_start], False)
            put(self.text(f"{m.role}\n"), False)
            for part in m.content:
                if isinstance(part, str):
                    put(self.text(part), learn)
                    continue
                if isinstance(part, ImageOut) and m.role != "assistant":
                    raise ValueError("ImageOut (a generated image) belongs in an assistant turn")
                # An assistant <|vision_start|> is the model's decision to draw: it is learned.
                put([self.image_start], learn and isinstance(part, ImageOut))
                (writes if isinstance(part, ImageOut) else reads).append((len(ids), part.ref))
                put([self.image_pad] * self.num_image_tokens, False)
                put([self.image_end], False)
            put([self.im_end], learn)
            put(self.text("\n"), False)
        if add_generation_prompt:
            put([self.im_start], False)
            put(self.text("assistant\n"), False)
        return EncodedChat(ids, labels, reads, writes, self.num_image_tokens)

    # ------------------------------------------------------------------ task conversations
    def generate_chat(self, prompt: str, target: int | None = None) -> list[Message]:
        """Text-to-image: the user asks, the assistant answers with an image (queries)."""
        msgs = [Message("user", [self.generate_template.format(prompt=prompt)])]
        if target is not None:
            msgs.append(Message("assistant", [ImageOut(target)]))
        return msgs

    def caption_chat(self, image: int, caption: str | None = None, question: str = CAPTION_QUESTION) -> list[Message]:
        msgs = [Message("user", [ImageIn(image), question])]
        if caption is not None:
            msgs.append(Message("assistant", [caption]))
        return msgs

    def judge_chat(self, image: int, prompt: str, answer: bool | None = None) -> list[Message]:
        msgs = [Message("user", [ImageIn(image), JUDGE_TEMPLATE.format(prompt=prompt)])]
        if answer is not None:
            msgs.append(Message("assistant", [YES if answer else NO]))
        return msgs

    def text_room(self, positions: int) -> int:
        """The most tokens of prompt or caption that every task conversation (text-to-image with its
        queries, caption, judge with either answer) fits into `positions`."""
        tasks = [self.generate_chat("", target=0), self.caption_chat(0, ""), self.judge_chat(0, "", answer=True),
                 self.judge_chat(0, "", answer=False)]
        return positions - max(len(self.encode(t).input_ids) for t in tasks) - EDGE_TOKENS


def collate(chats: Sequence[EncodedChat], pad_id: int, padding_side: Literal["left", "right"] = "right") -> ChatBatch:
    """Pad to the longest conversation. Training pads right; batched generation pads left so every
    row's next token sits in the last column. Position ids count real tokens only, so a row's
    positions are the same padded or alone."""
    if not chats:
        raise ValueError("collate needs at least one conversation")
    length = max(len(c.input_ids) for c in chats)
    b = len(chats)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE, dtype=torch.long)
    attn = torch.zeros((b, length), dtype=torch.long)
    read_mask = torch.zeros((b, length), dtype=torch.bool)
    write_mask = torch.zeros((b, length), dtype=torch.bool)
    read_refs: list[int] = []
    write_refs: list[int] = []
    for i, c in enumerate(chats):
        n = len(c.input_ids)
        off = length - n if padding_side == "left" else 0
        input_ids[i, off:off + n] = torch.tensor(c.input_ids, dtype=torch.long)
        labels[i, off:off + n] = torch.tensor(c.labels, dtype=torch.long)
        attn[i, off:off + n] = 1
        for spans, mask, refs in ((c.read_spans, read_mask, read_refs), (c.write_spans, write_mask, write_refs)):
            for start, ref in spans:
                mask[i, off + start: off + start + c.image_len] = True
                refs.append(ref)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return ChatBatch(input_ids, labels, attn, position_ids, read_mask, torch.tensor(read_refs, dtype=torch.long),
                     write_mask, torch.tensor(write_refs, dtype=torch.long))

