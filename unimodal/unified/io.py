"""Reading the unified model's inputs from files: an image as pixels, a latent as `unimodal generate`
and chat sessions write it, and either one as the latent the model reads. Shared by the commands and
chat, so both refuse the same bad files with the same one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from unimodal.config import InputError
from unimodal.data.images import load_rgb
from unimodal.utils.weights import read_safetensors

LATENT_KEY = "latent"


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> [3, H, W] float in [0, 1]; BadImageError (one line naming the file) for
    one that cannot be used."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such image: {path}")
    img = load_rgb(str(path))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def load_latent(path: str | os.PathLike) -> torch.Tensor:
    tensors = read_safetensors(path)
    if LATENT_KEY not in tensors:
        raise InputError(f"{path}: no '{LATENT_KEY}' tensor (keys: {sorted(tensors)}); pass a latent `unimodal generate` wrote")
    latent = tensors[LATENT_KEY]
    if latent.dim() != 2:
        raise InputError(f"{path}: '{LATENT_KEY}' is {tuple(latent.shape)}, not [tokens, channels]")
    return latent


def read_inputs(paths) -> list[torch.Tensor]:
    """Each path as a latent [N, C] (a .safetensors file) or an image [3, H, W]: all read before
    the model loads, so a bad file is refused at once."""
    return [load_latent(p) if str(p).endswith(".safetensors") else load_image(p) for p in paths]


def latents_of(model, inputs) -> torch.Tensor:
    """`read_inputs`' tensors -> latents [B, N, C] (images through the model's encoder)."""
    return torch.stack([x.to(model.device) if x.dim() == 2 else model.encode_images(x[None])[0] for x in inputs])
