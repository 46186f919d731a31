"""A multi-turn conversation in which the model decides when to draw.

The session keeps one KV cache. While the assistant speaks, a sampled ``<|vision_start|>`` opens an
image span: the N queries are run through the LLM, their hidden states condition the DiT, and the
resulting latent then *replaces* the queries in the cache (the cache is cropped back to the
``<|vision_start|>`` and the projected latent + ``<|vision_end|>`` are appended). From then on the
history holds the image exactly as an image the model reads, so the same session can caption or
critique what it drew, or draw again.
"""
from __future__ import annotations

import dataclasses

import torch
from transformers import DynamicCache

from unimodal.unified.chat import ImageIn, Message
from unimodal.unified.decoding import next_token, sample_latents, sample_seed


@dataclasses.dataclass
class Turn:
    text: str                        # the assistant's words, image spans left out
    token_ids: list[int]
    latents: list[torch.Tensor]      # [N, C] per image drawn in this turn
    seeds: list[int]


class Session:
    def __init__(self, model, *, seed: int = 0, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None):
        self.model = model
        self.seed = seed
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.cache = DynamicCache(config=model.llm.config)
        self.length = 0                       # tokens in the cache (positions 0 .. length-1)
        self.images_drawn = 0
        self._logits: torch.Tensor | None = None
        self._last_user_text = ""
        model.eval()

    # ------------------------------------------------------------------ feeding the cache
    @torch.no_grad()
    def _feed(self, embeds: torch.Tensor) -> torch.Tensor:
        """Append embeddings [1, T, H] to the cache; returns the final hidden states [1, T, H]."""
        t = embeds.shape[1]
        pos = torch.arange(self.length, self.length + t, device=embeds.device)[None]
        mask = torch.ones(1, self.length + t, dtype=torch.long, device=embeds.device)
        hidden = self.model.run_llm(embeds, mask, pos, self.cache, True).last_hidden_state
        self.length += t
        self._logits = self.model.logits(hidden[:, -1]).float()[0]
        return hidden

    def _feed_ids(self, ids: list[int]) -> None:
        self._feed(self.model.llm.get_input_embeddings()(torch.tensor([ids], device=self.model.device)))

    # ------------------------------------------------------------------ turns
    @torch.no_grad()
    def user(self, text: str, latent: torch.Tensor | None = None, image: torch.Tensor | None = None) -> None:
        """Add a user turn; an image ([3, H, W] in [0, 1]) or latent ([N, C]) goes before the text."""
        if latent is None and image is not None:
            latent = self.model.encode_images(image[None])[0]
        parts = ([ImageIn(0)] if latent is not None else []) + [text]
        enc = self.model.chat.encode([Message("user", parts)], add_system=self.length == 0)
        ids = torch.tensor([enc.input_ids], device=self.model.device)
        read_mask = torch.zeros_like(ids, dtype=torch.bool)
        for start, _ in enc.read_spans:
            read_mask[0, start:start + enc.image_len] = True
        lat = None if latent is None else latent[None].to(self.model.device)
        self._feed(self.model.embed(ids, read_mask, lat))
        self._last_user_text = text

    @torch.no_grad()
    def assistant(self, *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                  allow_images: bool = True, max_images: int = 4, generator: torch.Generator | None = None) -> Turn:
        """Let the model answer; it may draw (up to `max_images`) by emitting <|vision_start|>."""
        chat = self.model.chat
        self._feed_ids([chat.im_start] + chat.text("assistant\n"))
        ids: list[int] = []
        latents, seeds = [], []
        for _ in range(max_new_tokens):
            logits = self._logits.clone()
            logits[[chat.image_end, chat.image_pad]] = float("-inf")
            if not allow_images or len(latents) >= max_images:
                logits[chat.image_start] = float("-inf")
            tok = int(next_token(logits[None], temperature, top_p, generator)[0])
            if tok == chat.im_end:
                break
            if tok == chat.image_start:
                latent, s = self._draw()
                latents.append(latent)
                seeds.append(s)
                continue
            ids.append(tok)
            self._feed_ids([tok])
        self._feed_ids([chat.im_end] + chat.text("\n"))
        return Turn(chat.decode(ids), ids, latents, seeds)

    def _draw(self) -> tuple[torch.Tensor, int]:
        model = self.model
        self._feed_ids([model.chat.image_start])
        before = self.length
        hidden = self._feed(model.queries(1))                                   # [1, N, H]
        s = sample_seed(self.seed, self._last_user_text, self.images_drawn)
        self.images_drawn += 1
        latent = sample_latents(model, model.condition(hidden), [s], num_inference_steps=self.num_inference_steps,
                                guidance_scale=self.guidance_scale)[0]
        # Swap the queries for the drawn latent: the history now reads it like any input image.
        self.cache.crop(before - self.length)        # transformers 5: a negative count removes tokens
        self.length = before
        self._feed(torch.cat([model.projector(latent[None]),
                              model.llm.get_input_embeddings()(torch.tensor([[model.chat.image_end]], device=model.device))], 1))
        return latent.cpu(), s
