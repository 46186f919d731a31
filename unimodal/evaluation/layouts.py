"""Benchmark inputs and output layouts: GenEval (and ShapesEval, which shares it) and DPG-Bench.

GenEval (github djghosh13/geneval; evaluation/evaluate_images.py reads it):

    <out>/<5-digit index>/metadata.jsonl     exactly that prompt's metadata line (one JSON object)
    <out>/<index>/samples/<5-digit>.png      the images the scorer reads (`\\d+\\.png`), best first
    <out>/<index>/rejected/<5-digit>.png     candidates best-of-N did not keep (the scorer never
                                              looks outside samples/); numbered by rank after samples
    <out>/<index>/candidates.json            prompt seed, each candidate's index, seed, judge scores

DPG-Bench (github TencentQQGYLab/ELLA, dpg_bench/compute_dpg_bench.py): `<out>/<id>.png`, the
four images of prompt `<id>` tiled 2x2 (top-left, top-right, bottom-left, bottom-right = the
scorer's crops 0..3). The scorer treats *every* file in `<out>` as an image, so everything else
(settings, summaries, candidates, rejected images) goes to the sibling folder `<out>_meta/`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image

from unimodal.config import ConfigError, atomic_write_text
from unimodal.evaluation.generator import Candidate
from unimodal.evaluation.geneval import read_metadata_jsonl
from unimodal.evaluation.harness import PromptItem, remove_temporaries, save_png_atomic, tile_grid, write_json

_SAMPLE = re.compile(r"\d+\.png")   # GenEval's evaluate_images.py filter (re.match: a prefix match)


# ---------------------------------------------------------------------- inputs
def read_geneval_items(path: str | os.PathLike) -> list[PromptItem]:
    """Every line of a GenEval metadata jsonl, in file order (all of them: 553 for the official file)."""
    try:
        lines = read_metadata_jsonl(path)
    except ValueError as e:          # a malformed line: bad input, one line (ConfigError is a ValueError)
        raise ConfigError(f"{path}: not GenEval metadata ({e})") from None
    if not lines:
        raise ConfigError(f"{path} holds no metadata lines")
    return [PromptItem(i, f"{i:05d}", line["prompt"], line) for i, line in enumerate(lines)]


def dpg_sort_key(name: str) -> tuple:
    """Numeric ids in numeric order, then the others (COCOval2014...) in text order."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def read_dpg_items(folder: str | os.PathLike) -> list[PromptItem]:
    """Every `<id>.txt` of a DPG-Bench prompts folder (1,065 official), in `dpg_sort_key` order.
    The prompt is the file's text without surrounding whitespace."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DPG-Bench prompts folder not found: {folder}")
    files = sorted((p for p in folder.glob("*.txt") if not p.name.startswith(".")), key=lambda p: dpg_sort_key(p.stem))
    if not files:
        raise FileNotFoundError(f"{folder} holds no <id>.txt prompt files")
    items = []
    for i, p in enumerate(files):
        if "." in p.stem:
            raise ConfigError(f"{p.name}: the scorer keys images by the name before the first '.'; rename it")
        text = p.read_text(encoding="utf-8").strip()
        if not text:
            raise ConfigError(f"{p} is empty")
        items.append(PromptItem(i, p.stem, text))
    return items


def source_digest(path: str | os.PathLike) -> str:
    """sha256 over a metadata file, or over a prompts folder's (name, text) pairs."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.glob("*.txt")):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- layouts
class GenevalLayout:
    def __init__(self, out: str | os.PathLike, images_per_prompt: int = 4, n: int = 4, save_rejected: bool = True):
        self.out = Path(out)
        self.images_per_prompt = images_per_prompt
        self.n = n
        self.save_rejected = save_rejected and n > images_per_prompt
        self.meta_dir = self.out

    def folder(self, item: PromptItem) -> Path:
        return self.out / f"{item.index:05d}"

    def benchmark_files(self, item: PromptItem) -> list[Path]:
        return [self.folder(item) / "samples" / f"{r:05d}.png" for r in range(self.images_per_prompt)]

    def rejected_files(self, item: PromptItem) -> list[Path]:
        if not self.save_rejected:
            return []
        return [self.folder(item) / "rejected" / f"{r:05d}.png" for r in range(self.images_per_prompt, self.n)]

    def expected_files(self, item: PromptItem) -> list[Path]:
        return [self.folder(item) / "metadata.jsonl", self.folder(item) / "candidates.json",
                *self.rejected_files(item), *self.benchmark_files(item)]

    def write(self, item: PromptItem, candidates: list[Candidate], record: dict[str, Any]) -> None:
        if item.metadata is None:
            raise ValueError(f"item {item.name} has no metadata line; GenEval's layout needs one")
        folder = self.folder(item)
        for sub in (folder, folder / "samples", folder / "rejected"):
            remove_temporaries(sub)
        # The scorer json.load()s this file: exactly one object, the source line re-serialised
        # (json.dumps reproduces the official file's lines byte for byte).
        atomic_write_text(folder / "metadata.jsonl", json.dumps(item.metadata) + "\n")
        kept, rejected = self.benchmark_files(item), self.rejected_files(item)
        for r, entry in enumerate(record["candidates"]):
            path = kept[r] if r < len(kept) else (rejected[r - len(kept)] if rejected else None)
            entry["file"] = None if path is None else str(path.relative_to(folder))
        for c, path in zip(candidates[len(kept):], rejected):
            save_png_atomic(_image(c, item), path)
        write_json(folder / "candidates.json", record)
        for c, path in zip(candidates, kept):      # last: their presence marks the prompt finished
            save_png_atomic(_image(c, item), path)

    def scan(self) -> tuple[int, list[str]]:
        """Count images exactly as evaluate_images.py would find them."""
        found, problems = 0, []
        if not self.out.is_dir():
            return 0, [f"{self.out} does not exist"]
        for sub in sorted(self.out.iterdir()):
            if not (sub.is_dir() and sub.name.isdigit()):
                continue
            meta = sub / "metadata.jsonl"
            if not meta.is_file():
                problems.append(f"{sub.name}: no metadata.jsonl")
            samples = sub / "samples"
            if samples.is_dir():
                names = [p.name for p in samples.iterdir() if p.is_file()]
                found += sum(1 for s in names if _SAMPLE.match(s))
                problems += [f"{sub.name}/samples/{s}: leftover temporary" for s in names if s.startswith(".")]
        return found, problems


class DpgLayout:
    GRID = 2  # 2x2 tiles, the scorer's --pic-num 4

    def __init__(self, out: str | os.PathLike, tile_size: int | None = None, n: int = 4, save_rejected: bool = True):
        self.out = Path(out)
        self.meta_dir = self.out.with_name(self.out.name + "_meta")
        self.images_per_prompt = 1          # one grid file per prompt
        self.tiles = self.GRID * self.GRID
        if n < self.tiles:
            raise ConfigError(f"DPG-Bench needs {self.tiles} images per prompt; candidates n={n} is fewer")
        if tile_size is not None and tile_size < 8:
            raise ConfigError(f"tile size {tile_size} is too small")
        self.tile_size = tile_size
        self.n = n
        self.save_rejected = save_rejected and n > self.tiles

    def benchmark_files(self, item: PromptItem) -> list[Path]:
        return [self.out / f"{item.name}.png"]

    def rejected_files(self, item: PromptItem) -> list[Path]:
        if not self.save_rejected:
            return []
        return [self.meta_dir / "rejected" / item.name / f"{r:05d}.png" for r in range(self.tiles, self.n)]

    def expected_files(self, item: PromptItem) -> list[Path]:
        return [self.meta_dir / "candidates" / f"{item.name}.json", *self.rejected_files(item),
                *self.benchmark_files(item)]

    def write(self, item: PromptItem, candidates: list[Candidate], record: dict[str, Any]) -> None:
        remove_temporaries(self.out)
        rejected = self.rejected_files(item)
        for r, entry in enumerate(record["candidates"]):
            entry["file"] = (f"{item.name}.png#tile{r}" if r < self.tiles
                             else (str(rejected[r - self.tiles].relative_to(self.meta_dir)) if rejected else None))
        for c, path in zip(candidates[self.tiles:], rejected):
            save_png_atomic(_image(c, item), path)
        write_json(self.meta_dir / "candidates" / f"{item.name}.json", {**record, "tile_size": self.tile_size})
        grid = tile_grid([_image(c, item) for c in candidates[:self.tiles]], self.GRID, self.tile_size)
        save_png_atomic(grid, self.benchmark_files(item)[0])

    def scan(self) -> tuple[int, list[str]]:
        """Count files exactly as compute_dpg_bench.py lists them (every entry of `<out>`)."""
        if not self.out.is_dir():
            return 0, [f"{self.out} does not exist"]
        names = sorted(p.name for p in self.out.iterdir())
        problems = [f"{s}: not a <id>.png grid (the scorer would try to read it)" for s in names
                    if not s.endswith(".png") or s.startswith(".")]
        sizes = set()
        for s in names:
            if s.endswith(".png") and not s.startswith("."):
                with Image.open(self.out / s) as im:
                    sizes.add(im.size)
        if len(sizes) > 1:
            problems.append(f"grids of different sizes {sorted(sizes)}: the scorer takes one --resolution")
        return len(names), problems

    def observed_tile_size(self) -> int | None:
        """Tile size of the grids on disk (what to pass as the scorer's --resolution)."""
        for p in sorted(self.out.glob("*.png")):
            if not p.name.startswith("."):
                with Image.open(p) as im:
                    return im.width // self.GRID
        return None


def _image(c: Candidate, item: PromptItem):
    if c.image is None:
        raise RuntimeError(f"candidate {c.index} of {item.name!r} was not decoded")
    return c.image
