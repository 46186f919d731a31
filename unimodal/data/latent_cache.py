"""Latent cache: encode a dataset once with the frozen RAE encoder, then train the DiT from shards.

The encoder is frozen (RAE paper section 3), so its latents for a fixed crop never change; encoding
ImageNet once instead of every epoch removes the encoder from the DiT's training step. Augmentation
is therefore limited to what is cached: the centre crop and, with `hflip`, its mirror image
(ADM / DiT's ImageNet pipeline: centre crop + random horizontal flip).

Layout of a cache directory::

    manifest.json                   shapes, dtype, counts, labels flag, the RAE config, shard list
    rank000-00000.safetensors       latents [n, N, C] (+ latents_hflip), labels [n], indices [n]
    ...

Shards are written by every rank into a temporary sibling folder; rank 0 writes the manifest and
renames the folder into place, so a crashed run never leaves a cache that looks complete.
`LatentCacheDataset` reads single latents lazily through safetensors' memory map, so a cache
larger than RAM (ImageNet at 256 x 768 in bf16 is ~500 GB) trains fine.
"""
from __future__ import annotations

import bisect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset

from unimodal.config import atomic_write_text

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _shard_name(rank: int, k: int) -> str:
    return f"rank{rank:03d}-{k:05d}.safetensors"


@torch.no_grad()
def write_latent_cache(rae: Any, dataset: Any, out_dir: str | os.PathLike, *, batch_size: int = 64,
                       shard_size: int = 4096, hflip: bool = False, dtype: str = "bfloat16", dist: Any = None,
                       num_workers: int = 0, progress: Callable[[int], None] | None = None) -> Path:
    """Encode every item of `dataset` (dicts with "pixels" [3, S, S] in [0, 1], optional "label")
    with `rae.encode` and write a cache at `out_dir`; every rank calls it and takes every
    world_size-th item. Pass an evaluation-mode dataset (centre crops): a random crop would be
    frozen into the cache. Returns the cache directory."""
    from unimodal.utils.distributed import DistInfo, barrier
    from unimodal.utils.weights import replace_directory

    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    dist = dist or DistInfo()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if dist.is_main:
        if tmp.exists():  # left by an earlier crash
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()

    has_labels = bool(getattr(dataset, "has_labels", False))
    mine = list(range(dist.rank, len(dataset), dist.world_size))
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=num_workers)
    buffers: dict[str, list[torch.Tensor]] = {}
    pending, shard = 0, 0

    def flush() -> None:
        nonlocal pending, shard
        if pending:
            tensors = {k: torch.cat(v).contiguous() for k, v in buffers.items()}
            save_file(tensors, str(tmp / _shard_name(dist.rank, shard)))
            buffers.clear()
            pending, shard = 0, shard + 1

    for batch in loader:
        x = batch["pixels"].to(dist.device)                                  # [B, 3, S, S]
        buffers.setdefault("latents", []).append(rae.encode(x).to(DTYPES[dtype]).cpu())  # [B, N, C]
        if hflip:
            buffers.setdefault("latents_hflip", []).append(rae.encode(x.flip(-1)).to(DTYPES[dtype]).cpu())
        buffers.setdefault("indices", []).append(batch["index"].long())
        if has_labels:
            buffers.setdefault("labels", []).append(batch["label"].long())
        pending += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
        if pending >= shard_size:
            flush()
    flush()
    barrier()
    if dist.is_main:
        shards, count = [], 0
        for path in sorted(tmp.glob("rank*.safetensors")):
            with safe_open(str(path), "pt") as f:
                n = f.get_slice("latents").get_shape()[0]
            shards.append({"file": path.name, "count": n})
            count += n
        if count != len(dataset):
            raise RuntimeError(f"latent cache holds {count} latents but the dataset has {len(dataset)} items")
        enc = rae.config.encoder
        manifest = {"format": FORMAT_VERSION, "count": count, "num_tokens": enc.num_tokens, "channels": enc.channels,
                    "dtype": dtype, "hflip": hflip, "has_labels": has_labels, "image_size": rae.config.image_size,
                    "rae_config": rae.saved_config().to_dict(), "shards": shards}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        replace_directory(tmp, out_dir)
    barrier()
    return out_dir


class LatentCacheDataset(Dataset):
    """Items ``{"latents": float32 [N, C], "index": int, "label": int}`` (label when cached).

    Accepts `(index, sample_seed)` keys from `unimodal.train.loop.infinite_loader`: with an hflip
    cache the seed picks the original or the mirrored latent, so the choice replays on resume.
    """

    accepts_sample_seed = True

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory} is not a latent cache (no {MANIFEST}); write one with `unimodal cache-latents`")
        m = json.loads(path.read_text())
        if m.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: cache format {m.get('format')} is not {FORMAT_VERSION}; rebuild the cache")
        self.manifest = m
        self.num_tokens, self.channels = int(m["num_tokens"]), int(m["channels"])
        self.hflip, self.has_labels = bool(m["hflip"]), bool(m["has_labels"])
        self.files = [self.directory / s["file"] for s in m["shards"]]
        for f in self.files:
            if not f.is_file():
                raise FileNotFoundError(f"latent cache shard missing: {f}")
        counts = [int(s["count"]) for s in m["shards"]]
        self.starts = [sum(counts[:k]) for k in range(len(counts))]
        self.count = sum(counts)
        if self.count != m["count"] or self.count == 0:
            raise ValueError(f"{path}: shard counts add up to {self.count}, manifest says {m['count']}")
        self.labels: torch.Tensor | None = None
        if self.has_labels:
            parts = []
            for f in self.files:
                with safe_open(str(f), "pt") as h:
                    parts.append(h.get_tensor("labels"))
            self.labels = torch.cat(parts)                                    # [count]
        self._handles: dict[int, Any] = {}

    @property
    def num_classes(self) -> int:
        """1 + the largest cached label (0 without labels)."""
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        # Open safetensors handles cannot be pickled into DataLoader workers; each worker reopens.
        return {**self.__dict__, "_handles": {}}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= i < self.count:
            raise IndexError(f"latent index {i} out of range [0, {self.count})")
        k = bisect.bisect_right(self.starts, i) - 1
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.files[k]), "pt")
        name = "latents"
        if self.hflip and seed is not None and torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:
            name = "latents_hflip"
        item: dict[str, Any] = {"latents": self._handles[k].get_slice(name)[i - self.starts[k]].float(), "index": i}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item
