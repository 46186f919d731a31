"""Shared helpers of the generate / caption / verify commands: loading the model and inputs, and
writing outputs under names that never overwrite an existing file (the Scale-RAE sampler's
outputs overwrote each other)."""
from __future__ import annotations

import os
import re
from pathlib import Path

LATENT_KEY = "latent"


def add_model_args(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="unified model directory (default: $UNIMODAL_MODEL, else the shipped Shapes model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def load_model(args):
    import torch

    from unimodal.unified.model import UnifiedModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from unimodal.shipped import resolve_model_dir

    args.model = str(resolve_model_dir(args.model))
    return UnifiedModel.from_pretrained(args.model, map_location=device).eval()


def load_image(path: str | os.PathLike) -> "torch.Tensor":
    """An image file -> [3, H, W] float in [0, 1]; BadImageError (one line naming the file) for
    one that cannot be used."""
    import numpy as np
    import torch

    from unimodal.data.images import load_rgb

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such image: {path}")
    img = load_rgb(str(path))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def load_latent(path: str | os.PathLike) -> "torch.Tensor":
    from unimodal.config import InputError
    from unimodal.utils.weights import read_safetensors

    tensors = read_safetensors(path)
    if LATENT_KEY not in tensors:
        raise InputError(f"{path}: no '{LATENT_KEY}' tensor (keys: {sorted(tensors)}); pass a latent `unimodal generate` wrote")
    latent = tensors[LATENT_KEY]
    if latent.dim() != 2:
        raise InputError(f"{path}: '{LATENT_KEY}' is {tuple(latent.shape)}, not [tokens, channels]")
    return latent


def read_inputs(paths) -> list["torch.Tensor"]:
    """Each path as a latent [N, C] (a .safetensors file) or an image [3, H, W]: all read before
    the model loads, so a bad file is refused at once."""
    return [load_latent(p) if str(p).endswith(".safetensors") else load_image(p) for p in paths]


def latents_of(model, inputs) -> "torch.Tensor":
    """`read_inputs`' tensors -> latents [B, N, C] (images through the model's encoder)."""
    import torch

    return torch.stack([x.to(model.device) if x.dim() == 2 else model.encode_images(x[None])[0] for x in inputs])


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "prompt"


def claim(directory: Path, stem: str, suffix: str) -> Path:
    """Create and return `directory/stem{-k}{suffix}` for the first k that does not exist yet
    (atomic exclusive create, so two runs writing to one folder cannot take the same name)."""
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(100000):
        path = directory / (f"{stem}{suffix}" if k == 0 else f"{stem}-{k}{suffix}")
        try:
            with open(path, "xb"):
                return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free file name for {stem}{suffix} in {directory}")
