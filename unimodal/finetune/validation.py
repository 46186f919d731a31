"""Validation loss of the joint objective on a held-out split, identical every time it is computed.

Every batch is scored once per task (text-to-image, caption, judge) with fixed draws: the judge's
matching / mismatching prompts (Random(derive_seed(seed, b, k))), the flow-matching times and noise
(a generator seeded the same way) and the conditioning dropout (the global RNG, reseeded inside and
restored afterwards), so the number moves only when the weights do, and computing it
leaves the training run's random stream untouched (a resumed run stays exact). Every rank
evaluates every batch: the split is small, and ZeRO-3 needs all ranks in each forward anyway.
"""
from __future__ import annotations

import contextlib
import random

import torch

from unimodal.train.checkpoint import capture_rng_state, restore_rng_state
from unimodal.train.loop import derive_seed
from unimodal.unified.data import TASKS, TaskMix, make_batch
from unimodal.unified.loss import joint_loss


@torch.no_grad()
def validation_loss(model, dataset, *, mix: TaskMix, fm_weight: float, shift: float | None, batch_size: int,
                    max_batches: int = 0, seed: int = 0, autocast=None) -> dict[str, float]:
    """Every batch of `dataset` (items with "pixels" and "caption") once per task of `mix` with a
    positive weight. Returns "loss" (the task losses weighted as `mix` draws them), "fm" (flow
    matching of text-to-image) and "<task>_ce" (next-token CE of each task)."""
    starts = list(range(0, len(dataset), batch_size))
    if max_batches:
        starts = starts[:max_batches]
    if not starts:
        raise ValueError("the validation split is empty")
    tasks = [(t, w) for t, w in zip(TASKS, mix.weights) if w > 0]
    device = model.device
    was_training = model.training
    rng_state = capture_rng_state()
    model.eval()
    sums: dict[str, float] = {}
    try:
        for b, start in enumerate(starts):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            latents = model.encode_images(torch.stack([it["pixels"] for it in items]))   # [B, N, C]
            captions = [it["caption"] for it in items]
            for k, (task, _) in enumerate(tasks):
                batch = make_batch(model.chat, captions, mix, random.Random(derive_seed(seed, b, k)),
                                   tasks=[task] * len(items)).to(device)
                torch.manual_seed(derive_seed(seed, b, k, 1))                    # conditioning dropout
                gen = torch.Generator(device=device).manual_seed(derive_seed(seed, b, k, 2))
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = joint_loss(model, batch, latents, fm_weight=fm_weight, shift=shift, generator=gen)
                for name, v in ((f"{task}_loss", out.loss), (f"{task}_ce", out.ce), ("fm", out.fm)):
                    if name != "fm" or task == "t2i":
                        sums[name] = sums.get(name, 0.0) + float(v)
    finally:
        restore_rng_state(rng_state)
        model.train(was_training)
    means = {k: v / len(starts) for k, v in sums.items()}
    total = sum(w for _, w in tasks)
    out = {"loss": sum(w * means.pop(f"{t}_loss") for t, w in tasks) / total}
    out.update(means)
    return out
