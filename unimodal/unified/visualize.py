"""Sample grids with the model's own critique written under each image."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Sequence

import torch

from unimodal.unified.generate import caption, generate_images


def _to_pil(image: torch.Tensor, size: int):
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr).resize((size, size), Image.NEAREST)


def critique_grid(model, prompts: Sequence[str], path: str | Path | None, *, seed: int = 0,
                  num_inference_steps: int | None = None, cell: int = 160, max_caption_tokens: int = 24) -> list[dict]:
    """Generate one image per prompt, caption it from its latent and judge it; write a PNG grid
    (prompt, image, P(yes) and the model's caption per cell) and a JSON file beside it. With
    `path=None` nothing is written (the other ranks of a ZeRO-3 run, which must join the gathers)."""
    from PIL import Image, ImageDraw

    out = generate_images(model, list(prompts), n=1, judge="yes_prob", seed=seed,
                          num_inference_steps=num_inference_steps)
    best = [cands[0] for cands in out.candidates]
    caps = caption(model, latents=torch.stack([c.latent for c in best]), max_new_tokens=max_caption_tokens)
    rows = [{"prompt": c.prompt, "seed": c.seed, "yes_prob": c.yes_prob, "likelihood": c.likelihood,
             "caption": said, "p_image_start": out.p_image_start[i]} for i, (c, said) in enumerate(zip(best, caps.texts))]
    if path is None:
        return rows
    text_h = 64
    grid = Image.new("RGB", (cell * len(best), cell + text_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (c, said) in enumerate(zip(best, caps.texts)):
        grid.paste(_to_pil(c.image, cell), (i * cell, 0))
        lines = textwrap.wrap(f"> {c.prompt}", 26)[:2] + [f"P(yes)={c.yes_prob:.2f}"] + textwrap.wrap(f"< {said}", 26)[:2]
        draw.multiline_text((i * cell + 3, cell + 2), "\n".join(lines), fill="black", spacing=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
