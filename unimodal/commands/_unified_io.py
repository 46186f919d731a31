"""Shared helpers of the generate / caption / verify commands: loading the model, and writing
outputs under names that never overwrite an existing file (the Scale-RAE sampler's outputs
overwrote each other). Reading images and latents is `unimodal.unified.io`, shared with chat."""
from __future__ import annotations

import re
from pathlib import Path


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
