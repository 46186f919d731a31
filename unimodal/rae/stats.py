"""Exact per-element latent statistics over a dataset (RAE's optional latent normalisation).

RAE (ImageNet) normalises each latent element (token, channel) with its dataset
mean and variance: z' = (z - mean) / sqrt(var + 1e-5). The reference implementation estimated
them with a momentum average, so the last few batches dominate. Here the statistics
are exact: per-process float64 (count, mean, M2) updated batch by batch with Chan et al.'s
parallel formula, then combined across processes with two all-reduces.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

STATS_EPS = 1e-5


class LatentStatsAccumulator:
    """Streaming exact mean / population variance of latents [B, *shape] over the batch axis."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None   # float64, shape = one latent
        self.m2: torch.Tensor | None = None     # sum of squared deviations from the mean

    def update(self, latents: torch.Tensor) -> None:
        x = latents.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        self._merge(n, mean_b, m2_b)

    def _merge(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"latent shape {tuple(mean_b.shape)} differs from earlier batches {tuple(self.mean.shape)}")
        n_a, total = self.count, self.count + n_b
        delta = mean_b.to(self.mean.device) - self.mean
        # Chan, Golub & LeVeque (1979): merge two (count, mean, M2) summaries exactly.
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b.to(self.m2.device) + delta ** 2 * (n_a * n_b / total)
        self.count = total

    def merge(self, other: "LatentStatsAccumulator") -> None:
        if other.mean is not None:
            self._merge(other.count, other.mean, other.m2)

    def all_reduce(self) -> None:
        """Combine the summaries of every process (no-op when not distributed); all ranks get the result."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        if self.mean is None:
            raise RuntimeError("LatentStatsAccumulator.all_reduce: this rank saw no latents")
        device = self.mean.device
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        n = torch.tensor([float(self.count)], dtype=torch.float64, device=device)
        total = n.clone()
        dist.all_reduce(total)
        mean_i = self.mean.to(device)
        mean = mean_i * (n / total)
        dist.all_reduce(mean)
        # Total M2 = sum_i [M2_i + n_i (mean_i - mean)^2]: exact, independent of the rank order.
        m2 = self.m2.to(device) + n * (mean_i - mean) ** 2
        dist.all_reduce(m2)
        self.count, self.mean, self.m2 = int(total.item()), mean.to(self.mean.device), m2.to(self.m2.device)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, population variance) as float32."""
        if self.mean is None:
            raise RuntimeError("LatentStatsAccumulator: no latents were accumulated")
        return self.mean.float(), (self.m2 / self.count).float()


def save_latent_stats(path: str | os.PathLike, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({"mean": mean.contiguous().cpu(), "var": var.contiguous().cpu()}, tmp, metadata={"count": str(count)})
    os.replace(tmp, path)


def load_latent_stats(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"latent statistics file not found: {path}")
    tensors = load_file(str(path))
    if set(tensors) != {"mean", "var"}:
        raise ValueError(f"{path}: expected tensors 'mean' and 'var', found {sorted(tensors)}")
    if tensors["mean"].shape != tensors["var"].shape:
        raise ValueError(f"{path}: mean {tuple(tensors['mean'].shape)} and var {tuple(tensors['var'].shape)} differ in shape")
    return tensors["mean"], tensors["var"]


def normalize_latents(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (z - mean) / torch.sqrt(var + STATS_EPS)


def denormalize_latents(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return z * torch.sqrt(var + STATS_EPS) + mean


def _images_of(batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        for key in ("pixels", "image"):   # unimodal.data items use "pixels"
            if key in batch:
                return batch[key]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"cannot find images in a batch of type {type(batch).__name__}; yield tensors, (images, ...) or {{'pixels': ...}}")


@torch.no_grad()
def compute_latent_stats(encoder: torch.nn.Module, batches: Iterable, limit: int | None = None,
                         device: torch.device | str = "cpu", progress=None) -> LatentStatsAccumulator:
    """Encode images (float [0, 1], [B, 3, H, W]) and accumulate exact per-element statistics.

    `limit` caps the number of images *per process*; the returned accumulator is already reduced
    across processes. `progress(n_images)` is called after each batch when given.
    """
    acc = LatentStatsAccumulator()
    seen = 0
    for batch in batches:
        images = _images_of(batch)
        if limit is not None:
            images = images[: limit - seen]
        if images.shape[0] == 0:
            break
        acc.update(encoder(images.to(device)))
        seen += images.shape[0]
        if progress is not None:
            progress(images.shape[0])
        if limit is not None and seen >= limit:
            break
    acc.all_reduce()
    return acc
