"""Batched text decoding with a KV cache, and the DiT sampling step of image generation.

Batches are left padded (`collate(..., padding_side="left")`): every row's next token is in the
last column, the attention mask hides the padding and position ids count real tokens only, so a
row decodes the same whether it is alone or in a batch.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from transformers import DynamicCache

from unimodal.dit.sampling import SamplerConfig, noise_from_seeds, sample
from unimodal.unified.chat import ChatBatch


def sample_seed(seed: int, prompt: str, index: int) -> int:
    """The noise seed of candidate `index` for `prompt` under run seed `seed`: any image
    is regenerated from (seed, prompt, index) alone, whatever the batch, n or device."""
    digest = hashlib.sha256(f"{int(seed)}\x00{prompt}\x00{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def next_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] -> [B]: greedy at temperature 0, else nucleus sampling (Holtzman et al. 2020)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def decode_text(model, batch: ChatBatch, latents: torch.Tensor | None = None, *, max_new_tokens: int = 64,
                temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                use_cache: bool = True, stop_ids: Sequence[int] | None = None,
                banned_ids: Sequence[int] | None = None) -> list[list[int]]:
    """Continue each left-padded row until a stop token (default `<|im_end|>`) or `max_new_tokens`.
    Returns the new ids per row without the stop token. `use_cache=False` recomputes the whole
    sequence every step (the reference the cached path is tested against)."""
    if batch.write_mask.any():
        raise ValueError("decode_text continues text; image spans to write go through generate_images")
    chat = model.chat
    stop = torch.tensor(list(stop_ids) if stop_ids is not None else [chat.im_end], device=model.device)
    # Text decoding never opens an image span: those tokens are only forced (or sampled by a Session).
    banned = list(banned_ids) if banned_ids is not None else [chat.image_start, chat.image_end, chat.image_pad]
    batch = batch.to(model.device)
    read = latents[batch.read_refs].to(model.device) if batch.read_refs.numel() else None
    embeds = model.embed(batch.input_ids, batch.read_mask, read)
    mask, pos = batch.attention_mask, batch.position_ids
    cache = DynamicCache(config=model.llm.config) if use_cache else None
    hidden = model.run_llm(embeds, mask, pos, cache, use_cache).last_hidden_state
    b = embeds.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=model.device)
    out: list[list[int]] = [[] for _ in range(b)]
    for step in range(max_new_tokens):
        logits = model.logits(hidden[:, -1]).float()
        if banned:
            logits[:, banned] = float("-inf")
        tok = next_token(logits, temperature, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, chat.pad_id), tok)
        finished = torch.isin(tok, stop)
        for i in range(b):
            if not done[i] and not finished[i]:
                out[i].append(int(tok[i]))
        done |= finished
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        new_embed = model.llm.get_input_embeddings()(tok[:, None])          # [B, 1, H]
        new_pos = pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = torch.cat([pos, new_pos], dim=1)
        if use_cache:
            hidden = model.run_llm(new_embed, mask, new_pos, cache, True).last_hidden_state
        else:
            embeds = torch.cat([embeds, new_embed], dim=1)
            hidden = model.run_llm(embeds, mask, pos).last_hidden_state
    return out


@torch.no_grad()
def sample_latents(model, cond: torch.Tensor, seeds: Sequence[int], *, num_inference_steps: int | None = None,
                   guidance_scale: float | None = None, shift: float | None = None, method: str = "euler",
                   batch_size: int = 16) -> torch.Tensor:
    """DiT ODE from seeded noise to latents [B, N, C] under token conditioning [B, N, Dc], guided
    (`guidance_scale` 1 = off) by the model's `guidance`: against the DiT's learned null condition
    (classifier-free) or against its `guide_dit` under the same condition (autoguidance). A
    setting left None is the model config's."""
    config = model.config
    # `is None`, not `or`: 0 steps must be refused by SamplerConfig, not quietly become the default.
    sampler = SamplerConfig(
        method=method, shift=config.shift if shift is None else shift, guidance=config.guidance,
        num_inference_steps=config.num_inference_steps if num_inference_steps is None else num_inference_steps,
        guidance_scale=config.guidance_scale if guidance_scale is None else guidance_scale)
    if cond.shape[0] != len(seeds):
        raise ValueError(f"{cond.shape[0]} conditions but {len(seeds)} seeds")
    dit = model.dit
    dtype = next(dit.parameters()).dtype

    def velocity_of(net):
        def velocity(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
            # The ODE state stays fp32 across steps (bf16 would round it at every step); a bf16 DiT
            # (a `--dtype bfloat16` conversion) takes its inputs in its own dtype.
            return net(x.to(dtype), t, c.to(dtype), drop=drop).float()
        return velocity

    velocity = velocity_of(dit)
    guide = velocity_of(model.guide_dit) if config.guidance == "autoguidance" and sampler.guidance_scale != 1.0 else None
    was_training = dit.training
    dit.eval()
    try:
        chunks = []
        for i in range(0, len(seeds), batch_size):
            noise = noise_from_seeds(seeds[i:i + batch_size], config.num_latent_tokens, config.latent_dim, model.device)
            chunks.append(sample(velocity, noise, cond[i:i + batch_size].float(), sampler, guide_model=guide))
    finally:
        dit.train(was_training)
    return torch.cat(chunks)
