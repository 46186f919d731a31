"""Shared helpers of the generate / caption / verify commands: loading the model, and writing
outputs under names that never overwrite an existing file (the Scale-RAE sampler's outputs
overwrote each other). Reading images and latents is `unimodal.unified.io`, shared with chat."""
from __future__ import annotations

import re
from pathlib import Path

from unimodal.commands._args import add_dtype_arg


def add_model_args(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="unified model directory (default: $UNIMODAL_MODEL, else the shipped Shapes model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_dtype_arg(parser)


def add_backend_args(parser) -> None:
    """--backend and the vLLM worker's settings (`unimodal.unified.backends`)."""
    from unimodal.commands._args import fraction

    parser.add_argument("--backend", choices=["torch", "vllm"], default="torch",
                        help="engine of the LLM's understanding side (captions, judging, conditioning): torch in "
                             "this process, or vLLM over the exported LLM (see the README's 'vLLM backend')")
    parser.add_argument("--vllm-python", default=None, metavar="PYTHON",
                        help="the interpreter that has vLLM (default: $UNIMODAL_VLLM_PYTHON, else this one)")
    parser.add_argument("--vllm-memory", type=fraction, default=0.1, metavar="F",
                        help="fraction of GPU memory (on a CPU: of host memory) each vLLM engine reserves (0.1)")


def vllm_settings(args):
    """The `VllmSettings` of the flags; with --backend vllm, checks first that vLLM can be reached,
    so a missing setup is one line before any model loads."""
    from unimodal.unified.vllm_backend import VllmSettings, vllm_python

    settings = VllmSettings(python=args.vllm_python, memory=args.vllm_memory)
    if args.backend == "vllm":
        vllm_python(settings)
    return settings


def load_model(args):
    import torch

    from unimodal.shipped import resolve_model_dir
    from unimodal.unified.model import UnifiedModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.model = str(resolve_model_dir(args.model))
    return UnifiedModel.from_pretrained(args.model, map_location=device, dtype=args.dtype).eval()


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
