"""Text-to-image with best-of-N self-verification, captioning and verification on latents.

Self-verification (Scale-RAE section 5) reads the *latent*, never pixels:
- yes-prob: P(yes) = softmax over the (yes, no) logits of the first answer token after
  "Does this image align with the prompt: {p}?";
- likelihood: the mean log-prob of the prompt's tokens, teacher forced as the answer to
  "Describe this image." (higher = better match; the paper reports it as a lower CE).
Every candidate's noise comes from `sample_seed(seed, prompt, index)`, so a kept image can be
regenerated alone from those three values.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch

from unimodal.config import InputError
from unimodal.unified.chat import CAPTION_QUESTION, IGNORE, ImageIn, Message, collate
from unimodal.unified.decoding import decode_text, sample_latents, sample_seed

Judge = Literal["yes_prob", "likelihood"]
JUDGE_LABELS = {"yes_prob": "P(yes)", "likelihood": "likelihood"}   # how reports name each judge


@dataclasses.dataclass
class Candidate:
    prompt: str
    index: int                       # candidate number under (seed, prompt)
    seed: int                        # the noise seed: sample_seed(run seed, prompt, index)
    latent: torch.Tensor             # [N, C]
    image: torch.Tensor | None       # [3, S, S] in [0, 1]; decoded for kept candidates only
    yes_prob: float | None = None
    likelihood: float | None = None
    kept: bool = True


@dataclasses.dataclass
class GenerateOutput:
    prompts: list[str]
    candidates: list[list[Candidate]]  # per prompt, best first by `judge` (index order without one)
    judge: str | None
    p_image_start: list[float]         # the model's own P(<|vision_start|>) after each request

    def kept(self, i: int) -> list[Candidate]:
        return [c for c in self.candidates[i] if c.kept]


@dataclasses.dataclass
class CaptionOutput:
    texts: list[str]
    token_ids: list[list[int]]


@dataclasses.dataclass
class VerifyOutput:
    yes_prob: torch.Tensor      # [B]
    likelihood: torch.Tensor    # [B] mean token log-prob of the prompt


# ---------------------------------------------------------------------- prompt length
def max_prompt_tokens(model) -> int:
    """The longest prompt, in tokens, that the generate, judge and likelihood conversations all fit
    into the LLM's positions (the same room `unimodal finetune` leaves a caption)."""
    return model.chat.text_room(model.llm.config.max_position_embeddings)


def check_prompts(model, prompts: Sequence[str]) -> None:
    """Raise InputError for a prompt that is empty or longer than `max_prompt_tokens`."""
    limit = max_prompt_tokens(model)
    for p in prompts:
        if not p.strip():
            raise InputError("the prompt is empty; say what to draw")
        n = len(model.chat.text(p))
        if n > limit:
            shown = p if len(p) <= 40 else p[:40] + "..."
            raise InputError(f"the prompt {shown!r} is {n} tokens; this model takes at most {limit} "
                             f"(its LLM has {model.llm.config.max_position_embeddings} positions); shorten it")


# ---------------------------------------------------------------------- conditioning
@torch.no_grad()
def query_condition(model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One LLM pass over "Generate an image: {p}" + an assistant image span of queries.
    Returns the DiT conditioning [P, N, Dc] and P(<|vision_start|>) at the turn's start [P]."""
    chat = model.chat
    batch = collate([chat.encode(chat.generate_chat(p, target=-1)) for p in prompts], chat.pad_id, "left")
    batch = batch.to(model.device)
    out = model(batch)
    # The row's first query sits right after its assistant <|vision_start|>; the logits that
    # predict that token are two positions before the first query.
    first = batch.write_mask.int().argmax(dim=1)                              # [P]
    rows = torch.arange(len(prompts), device=model.device)
    logits = model.logits(out.hidden[rows, first - 2]).float()
    p_start = torch.softmax(logits, -1)[:, chat.image_start]
    return model.condition(out.query_hidden), p_start


# ---------------------------------------------------------------------- verification
@torch.no_grad()
def judge_yes_prob(model, latents: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """P(yes) against "no" for each (latent, prompt) pair; latents [B, N, C]."""
    chat = model.chat
    encoded = [chat.encode(chat.judge_chat(i, p), add_generation_prompt=True) for i, p in enumerate(prompts)]
    batch = collate(encoded, chat.pad_id, "left").to(model.device)
    hidden = model(batch, latents.to(model.device)).hidden
    logits = model.logits(hidden[:, -1]).float()
    pair = logits[:, [chat.yes_id, chat.no_id]]
    return torch.softmax(pair, -1)[:, 0].cpu()


@torch.no_grad()
def prompt_likelihood(model, latents: torch.Tensor, prompts: Sequence[str],
                      question: str = CAPTION_QUESTION) -> torch.Tensor:
    """Mean log-prob of the prompt's tokens as the answer to `question` about each latent."""
    chat = model.chat
    encoded = [chat.encode(chat.caption_chat(i, p, question)) for i, p in enumerate(prompts)]
    batch = collate(encoded, chat.pad_id, "right").to(model.device)
    hidden = model(batch, latents.to(model.device)).hidden
    targets = batch.labels[:, 1:]
    sel = (targets != IGNORE) & (targets != chat.im_end)                       # the prompt tokens only
    # The LM head on those rows only: over every position, [B, L, V] fp32 log-probs at Qwen's
    # 151,936 words were ~7 GB for a batch of 16 with its 256 image tokens.
    logp = torch.log_softmax(model.logits(hidden[:, :-1][sel]).float(), -1)   # [T, V]
    tok = logp.gather(-1, targets[sel][:, None]).squeeze(-1)                   # [T]
    rows = sel.nonzero()[:, 0]
    total = torch.zeros(sel.shape[0], device=tok.device).index_add_(0, rows, tok)
    return (total / sel.sum(1).clamp(min=1)).cpu()


def verify(model, latents: torch.Tensor, prompts: Sequence[str], batch_size: int = 16) -> VerifyOutput:
    check_prompts(model, prompts)
    ys, ls = [], []
    for i in range(0, len(prompts), batch_size):
        ys.append(judge_yes_prob(model, latents[i:i + batch_size], prompts[i:i + batch_size]))
        ls.append(prompt_likelihood(model, latents[i:i + batch_size], prompts[i:i + batch_size]))
    return VerifyOutput(torch.cat(ys), torch.cat(ls))


@torch.no_grad()
def reencode(model, latents: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(the encoder's latents of the decoded images of `latents`, those images): a generated
    latent projected back onto the encoder's manifold, so a reader sees what the decoder draws."""
    images = torch.cat([model.decode_latents(latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)])
    return torch.cat([model.encode_images(images[i:i + batch_size].clamp(0, 1))
                      for i in range(0, len(images), batch_size)]), images


# ---------------------------------------------------------------------- generation
@torch.no_grad()
def generate_images(model, prompts: Sequence[str] | str, *, n: int = 1, keep: int | None = None,
                    judge: Judge | Literal["default"] | None = "default", seed: int = 0,
                    num_inference_steps: int | None = None, guidance_scale: float | None = None,
                    decode: bool | Literal["all"] = True, batch_size: int = 16, reader=None,
                    verify_on: str | None = None) -> GenerateOutput:
    """`n` candidates per prompt, scored by both judges unless `judge` is None, the best `keep`
    (default all) by `judge` ("default": the model's `judge`) decoded to images (`decode="all"`:
    the rejected ones too; False: none). The LLM runs once per prompt; only the DiT noise differs.
    `reader` (`unified.backends.open_reader`) runs the LLM's conditioning and judging pass
    elsewhere, on vLLM; None runs them here. `verify_on` (default the model's) is what the judges
    read: "latent" (the candidate itself) or "decoded" (the encoder's latent of its decoded image)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    keep = n if keep is None else keep
    judge = model.config.judge if judge == "default" else judge
    if n < 1 or not 1 <= keep <= n:
        raise ValueError(f"need n >= 1 and 1 <= keep <= n, got n={n} keep={keep}")
    if judge is None and keep < n:
        raise ValueError("keeping fewer than n candidates needs a judge ('yes_prob' or 'likelihood')")
    if judge not in (None, "yes_prob", "likelihood"):
        raise ValueError(f"judge must be 'default', 'yes_prob', 'likelihood' or None, got {judge!r}")
    verify_on = model.config.verify_on if verify_on is None else verify_on
    if verify_on not in ("latent", "decoded"):
        raise ValueError(f"verify_on must be 'latent' or 'decoded', got {verify_on!r}")
    check_prompts(model, prompts)
    model.eval()
    conds, p_start = [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        c, p = query_condition(model, chunk) if reader is None else reader.query_condition(chunk)
        conds.append(c)
        p_start.append(p.cpu())
    cond = torch.cat(conds).repeat_interleave(n, dim=0)                        # [P * n, N, Dc]
    flat_prompts = [p for p in prompts for _ in range(n)]
    seeds = [sample_seed(seed, p, k) for p in prompts for k in range(n)]
    latents = sample_latents(model, cond, seeds, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, batch_size=batch_size)
    scores, decoded = None, None
    if judge is not None:
        read = latents
        if verify_on == "decoded":
            read, decoded = reencode(model, latents, batch_size)     # the kept ones' images too
        scores = (verify(model, read, flat_prompts, batch_size) if reader is None
                  else reader.verify(read, flat_prompts, batch_size))

    out: list[list[Candidate]] = []
    for pi, prompt in enumerate(prompts):
        cands = []
        for k in range(n):
            j = pi * n + k
            cands.append(Candidate(prompt, k, seeds[j], latents[j].cpu(), None,
                                   None if scores is None else float(scores.yes_prob[j]),
                                   None if scores is None else float(scores.likelihood[j])))
        if judge is not None:
            cands.sort(key=lambda c: -getattr(c, judge))                       # stable: ties keep index order
        for r, c in enumerate(cands):
            c.kept = r < keep
        if decode:
            chosen = cands if decode == "all" else [c for c in cands if c.kept]
            for i in range(0, len(chosen), batch_size):
                chunk = chosen[i:i + batch_size]
                images = (model.decode_latents(torch.stack([c.latent for c in chunk])) if decoded is None
                          else decoded[[pi * n + c.index for c in chunk]]).cpu()
                for c, im in zip(chunk, images):
                    c.image = im
        out.append(cands)
    return GenerateOutput(prompts, out, judge, [float(p) for p in torch.cat(p_start)])


@torch.no_grad()
def caption(model, images: torch.Tensor | None = None, latents: torch.Tensor | None = None, *,
            question: str = CAPTION_QUESTION, max_new_tokens: int = 64, temperature: float = 0.0,
            top_p: float = 1.0, seed: int = 0, use_cache: bool = True) -> CaptionOutput:
    """Answer `question` about each image ([B, 3, H, W] in [0, 1]) or latent ([B, N, C])."""
    if (images is None) == (latents is None):
        raise ValueError("caption takes images or latents (exactly one)")
    model.eval()
    if latents is None:
        latents = model.encode_images(images)
    chat = model.chat
    encoded = [chat.encode([Message("user", [ImageIn(i), question])], add_generation_prompt=True)
               for i in range(latents.shape[0])]
    batch = collate(encoded, chat.pad_id, "left")
    gen = torch.Generator().manual_seed(int(seed))
    ids = decode_text(model, batch, latents.to(model.device), max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, generator=gen, use_cache=use_cache)
    return CaptionOutput([chat.decode(t) for t in ids], ids)

