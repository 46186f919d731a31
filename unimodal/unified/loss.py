"""The joint training objective (Scale-RAE section 3), as a function.

loss = CE(next token, labelled text only) + fm_weight * flow-matching MSE at the query spans.

The flow term: the LLM's hidden states at the queries -> connector -> token conditioning of the
DiT, which predicts the velocity of the target latent noised at a logit-normal time moved by the
shift (default the dimension shift); with probability `dit.cond_dropout` (10 %) a sample's whole
conditioning is swapped for the DiT's learned null vector, which is what classifier-free guidance
needs later. Time, noise and dropout come from `generator` (the global RNG when None), in that order.
With `fm_repeats` = k > 1 each target is noised at k independent (time, noise) draws under the
same conditioning (MAR's diffusion batch multiplier, Li et al. 2024): the DiT gets k times the
samples per LLM pass, which is the cheap half of a step.

`JointLoss(compile=True)` runs the LLM's decoder stack and the DiT of the training forward through
torch.compile (dynamic shapes: the batch's sequence length and its number of query spans vary from
step to step); evaluation, sampling and export keep calling the eager modules, which hold the same
weights. On the Shapes recipe's sizes, bf16 on 2 CPU cores, that made a pretraining step 1.5-1.7x
and an all-DiT `draw` step 1.6-2.0x faster after about a minute of compiling (scripts/bench_unified.py,
in-process A/B runs and the stages' own loops).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.dit.flow import flow_matching_loss, resolve_shift, sample_drop, sample_time
from unimodal.unified.chat import IGNORE, ChatBatch


@dataclasses.dataclass
class LossOutput:
    loss: torch.Tensor        # scalar to backpropagate
    ce: torch.Tensor          # detached parts, for logging
    fm: torch.Tensor
    num_text_tokens: int
    num_images: int


def _touch(*modules: nn.Module) -> torch.Tensor:
    """0 * sum of the trainable parameters: keeps modules a batch does not use in the graph, so
    every rank reduces the same gradient set (DDP / ZeRO) and the optimiser sees zeros, not None."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return sum(p.sum() for p in params) * 0.0


def joint_loss(model, batch: ChatBatch, latents: torch.Tensor | None, *, fm_weight: float = 2.0,
               time_dist: str = "logit_normal", shift: float | None = None, fm_repeats: int = 1,
               generator: torch.Generator | None = None, llm_body: nn.Module | None = None,
               dit: nn.Module | None = None) -> LossOutput:
    """`latents` [M, N, C] hold every image of the batch; `batch.read_refs` / `batch.write_refs`
    pick the ones read (understanding inputs) and written (generation targets). `llm_body` and
    `dit` replace `model.llm.model` and `model.dit` in this pass (compiled views, `JointLoss`)."""
    dit = model.dit if dit is None else dit
    out = model(batch, latents, llm_body=llm_body)
    device = out.hidden.device
    extra = torch.zeros((), device=device)

    # Next-token CE on labelled positions only: the LM head runs on those rows, not on all L.
    targets = batch.labels[:, 1:]
    sel = targets != IGNORE
    n_text = int(sel.sum())
    if n_text:
        logits = model.logits(out.hidden[:, :-1][sel]).float()              # [T, V]
        ce = F.cross_entropy(logits, targets[sel])
    else:
        ce = torch.zeros((), device=device)
    if not bool(batch.read_mask.any()):
        extra = extra + _touch(model.projector).to(device)

    g = 0 if out.query_hidden is None else out.query_hidden.shape[0]
    if g:
        refs = batch.write_refs
        if bool((refs < 0).any()) or latents is None:
            raise ValueError("a query span in a training batch has no target latent (ImageOut ref -1)")
        dt = next(model.dit.parameters()).dtype                              # bf16 under a DeepSpeed bf16 engine
        x0 = latents[refs].to(device, dt)                                    # [G, N, C]
        cond = model.condition(out.query_hidden).to(dt)                      # [G, N, Dc]
        if fm_repeats > 1:
            x0, cond = x0.repeat_interleave(fm_repeats, 0), cond.repeat_interleave(fm_repeats, 0)
        draws = x0.shape[0]                                                  # G x fm_repeats
        t = sample_time(draws, dist=time_dist, shift=resolve_shift(shift, x0.shape[1], x0.shape[2]),
                        generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device).to(dt)
        drop = sample_drop(draws, model.dit.config.cond_dropout, generator=generator, device=device)
        fm = flow_matching_loss(dit, x0, cond, t, noise, drop=drop)
    else:
        fm = torch.zeros((), device=device)
        extra = extra + _touch(model.queries, model.connector, model.dit).to(device)
    loss = ce + fm_weight * fm + extra
    return LossOutput(loss, ce.detach(), fm.detach(), n_text, g)


class JointLoss(nn.Module):
    """The model plus its objective as one module, so a training engine (DDP / DeepSpeed) wraps
    everything trainable and `engine(batch, latents)` returns a :class:`LossOutput`."""

    def __init__(self, model: nn.Module, fm_weight: float = 2.0, shift: float | None = None, fm_repeats: int = 1,
                 compile: bool = False):
        super().__init__()
        if fm_repeats < 1:
            raise ValueError(f"fm_repeats must be >= 1, got {fm_repeats}")
        self.model = model
        self.fm_weight = fm_weight
        self.shift = shift
        self.fm_repeats = fm_repeats
        # A tuple, not attributes: compiled wrappers registered as submodules would add their weights
        # to the state dict a second time. The time/noise draws stay outside them (eager RNG).
        self.compiled = ((torch.compile(model.llm.model, dynamic=True), torch.compile(model.dit, dynamic=True))
                         if compile else (None, None))

    def forward(self, batch: ChatBatch, latents: torch.Tensor | None) -> LossOutput:
        llm_body, dit = self.compiled
        return joint_loss(self.model, batch, latents, fm_weight=self.fm_weight, shift=self.shift,
                          fm_repeats=self.fm_repeats, llm_body=llm_body, dit=dit)
