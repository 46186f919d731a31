"""The shipped Shapes model, and how every `--model` option falls back to it.

`models/shapes/` beside the package (an editable install or a checkout) holds the model the Shapes
recipe trained (`unimodal recipe shapes --publish models/shapes`; MANIFEST.json says how).
"""
from __future__ import annotations

import os
from pathlib import Path

SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "shapes"
MODEL_ENV = "UNIMODAL_MODEL"  # a site-wide default that overrides the shipped model


def resolve_model_dir(arg: str | os.PathLike | None) -> Path:
    """--model, else $UNIMODAL_MODEL, else the shipped Shapes model; one line naming the fix when
    the chosen directory holds no model."""
    path = Path(arg or os.environ.get(MODEL_ENV) or SHIPPED_MODEL_DIR)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path}: pass --model DIR (a unified model directory), set ${MODEL_ENV}, "
                                "or build one with `unimodal recipe shapes --publish models/shapes`")
    return path
