"""`DataConfig` and `build_image_dataset`: a prescanned, augmented torch Dataset of image dicts.

Items are ``{"pixels": float [3, S, S] in [0, 1], "index": int, "label": int, "caption": str}``
(label / caption only when the source has them; "negative", a caption known to be wrong for the image,
only on records that carry one). The dataset accepts `(index, sample_seed)` keys
from `unimodal.train.loop.infinite_loader`, so the random crop of every sample replays exactly
after a resume.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unimodal.config import Config, ConfigError, atomic_write_text
from unimodal.data.images import load_rgb
from unimodal.data.sources import DatasetsSource, ImageFolderSource, ScanReport, SyntheticImageSource, scan_source
from unimodal.utils.distributed import barrier, broadcast_object

_log = logging.getLogger(__name__)

FILE_SOURCES = ("folder", "datasets")
# Sources that draw their records instead of reading files (no path, no prescan; the eval split is
# other draws), name -> factory(cfg, split) -> source. "synthetic" is built in; a world package adds
# itself with `register_generated_source` when imported (the Shapes world adds "shapes"; the CLI
# imports it), so data/ imports none of them.
GENERATED_SOURCES: dict[str, Callable[["DataConfig", Literal["train", "eval"]], Any]] = {}


@dataclasses.dataclass
class DataConfig(Config):
    source: str = "synthetic"         # one of FILE_SOURCES or GENERATED_SOURCES
    path: str = ""                    # folder root | save_to_disk folder | data file / glob | hub id
    eval_path: str = ""               # a separate eval folder / dataset; else see eval_holdout
    eval_holdout: int = 0             # hold this many usable records of `path` out for evaluation
    train_split: str = "train"        # `datasets` split names
    eval_split: str = "validation"
    image_column: str = "image"
    caption_column: str | None = None  # None: "text", else "caption"
    label_column: str | None = None
    class_subfolders: bool = False    # ImageNet-style folders -> integer labels (sorted names)
    captions: bool = False            # require a non-empty caption per image
    image_size: int = 256
    hflip: bool = False               # off by default: flips mirror text and swap left/right in captions
    min_size: int = 1                 # shorter side below this -> skipped as too_small
    dedupe: bool = True               # skip files whose bytes repeat an earlier file
    max_bad_fraction: float = 0.05    # stop before training if more records than this are unusable
    max_images: int = 0               # use only the first N records (0 = all)
    scan_workers: int = 0             # processes for the prescan (0 / 1: in this process)
    scan_cache: str = ""              # JSON file reusing the prescan while data and settings are unchanged
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited onto this
    synthetic_images: int = 256       # records of a generated source (synthetic or shapes)
    # Settings of the registered "shapes" source (unimodal.shapes.dataset), kept here so existing
    # YAML files and the run configs saved in checkpoints still load.
    shapes_config: str = ""           # ShapesConfig JSON for source=shapes ("" = defaults at image_size)
    shapes_captions: Literal["mixed", "long", "geneval"] = "mixed"
    synthetic_classes: int = 0
    seed: int = 0                     # synthetic content

    def __post_init__(self) -> None:
        if self.source in FILE_SOURCES and not self.path:
            raise ConfigError(f"data.path is required for data.source={self.source}")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {self.image_size}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        for name in ("eval_holdout", "max_images", "min_size", "synthetic_classes", "scan_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if self.synthetic_images < 1:
            raise ConfigError(f"data.synthetic_images must be >= 1, got {self.synthetic_images}")
        if self.eval_path and self.eval_holdout:
            raise ConfigError("set either data.eval_path or data.eval_holdout, not both")
        if not all(0 <= c <= 255 for c in self.background):
            raise ConfigError(f"data.background must be three values in 0..255, got {list(self.background)}")


# --------------------------------------------------------------------------------------------------
# The RAE augmentation: resize the shorter side to `size`, then crop a size x size square
# (random position in training, centre in evaluation).

def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img if new == (w, h) else img.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)


def crop_box(width: int, height: int, size: int, generator: torch.Generator | None, random_crop: bool) -> tuple:
    if random_crop:
        x = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        y = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    else:
        x, y = (width - size) // 2, (height - size) // 2
    return x, y, x + size, y + size


def augment(img: Image.Image, size: int, *, train: bool, hflip: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, size, size] in [0, 1]."""
    img = resize_shorter(img, size)
    img = img.crop(crop_box(img.width, img.height, size, generator, random_crop=train))
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    if train and hflip and bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    return x


class ImageDataset(Dataset):
    accepts_sample_seed = True  # see unimodal.train.loop

    def __init__(self, source: Any, indices: list[int], *, image_size: int, train: bool, hflip: bool = False,
                 min_size: int = 1, background: tuple[int, int, int] = (255, 255, 255),
                 report: ScanReport | None = None):
        self.source, self.indices = source, list(indices)
        self.image_size, self.train, self.hflip = image_size, train, hflip
        self.min_size, self.background = min_size, tuple(background)
        self.report = report
        self.has_labels = bool(getattr(source, "has_labels", False))
        self.has_captions = bool(getattr(source, "has_captions", False))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        rec = self.source.record(self.indices[i])
        # A file that changed after the prescan raises BadImageError here: a loud stop, not a substitute.
        img = load_rgb(rec.image, min_size=self.min_size, background=self.background, name=rec.key)
        item: dict[str, Any] = {"pixels": augment(img, self.image_size, train=self.train, hflip=self.hflip,
                                                  generator=gen), "index": i}
        if self.has_labels:
            item["label"] = int(rec.label)
        if self.has_captions:
            item["caption"] = str(rec.caption)
        if rec.negative is not None:
            item["negative"] = rec.negative
        return item


def register_generated_source(name: str, factory: Callable[[DataConfig, Literal["train", "eval"]], Any]) -> None:
    """Make `data.source=name` build `factory(cfg, split)` (see GENERATED_SOURCES)."""
    if name in FILE_SOURCES:
        raise ValueError(f"{name!r} is a file source's name")
    GENERATED_SOURCES[name] = factory


def _synthetic_source(cfg: DataConfig, split: Literal["train", "eval"]) -> SyntheticImageSource:
    return SyntheticImageSource(cfg.synthetic_images, image_size=max(cfg.image_size, 8),
                                seed=cfg.seed + (1_000_003 if split == "eval" else 0),  # other images than train
                                num_classes=cfg.synthetic_classes, captions=cfg.captions)


register_generated_source("synthetic", _synthetic_source)


def _make_source(cfg: DataConfig, path: str, split_name: str, generated_split: Literal["train", "eval"]) -> Any:
    if cfg.source in GENERATED_SOURCES:
        return GENERATED_SOURCES[cfg.source](cfg, generated_split)
    if cfg.source not in FILE_SOURCES:
        raise ConfigError(f"data.source={cfg.source!r} is not one of {[*FILE_SOURCES, *GENERATED_SOURCES]} "
                          "(a world package adds its source when imported: `import unimodal.shapes` for 'shapes')")
    if cfg.source == "folder":
        return ImageFolderSource(path, class_subfolders=cfg.class_subfolders, captions=cfg.captions,
                                 caption_column=cfg.caption_column)
    return DatasetsSource(path, split=split_name, image_column=cfg.image_column, caption_column=cfg.caption_column,
                          label_column=cfg.label_column, captions=cfg.captions)


def _cached_scan(cfg: DataConfig, source: Any, n: int, log: Callable[[str], None]) -> ScanReport:
    settings = dict(min_size=cfg.min_size, require_captions=cfg.captions, dedupe=cfg.dedupe)
    key = None
    if cfg.scan_cache:
        key = hashlib.sha1(json.dumps([source.fingerprint(), n, settings], sort_keys=True).encode()).hexdigest()
        cache = Path(cfg.scan_cache)
        if cache.is_file():
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                report = ScanReport(**stored["report"])
                log(f"image prescan reused from {cache}: {report.summary()}")
                return report
    report = scan_source(source, indices=range(n), workers=cfg.scan_workers, log=log, **settings)
    if key is not None:
        atomic_write_text(cfg.scan_cache, json.dumps({"key": key, "report": report.to_dict()}))
    return report


def build_image_dataset(cfg: DataConfig, split: Literal["train", "eval"] = "train", *, dist: Any = None,
                        log: Callable[[str], None] | None = None) -> ImageDataset:
    """Build the source, prescan it (rank 0; the result is broadcast), enforce max_bad_fraction,
    and wrap it with the train (random crop) or eval (centre crop) transform."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    log = log or _log.info
    holdout = bool(cfg.eval_holdout)       # split `path` into train / eval by a stable hash
    path, split_name, generated_split = cfg.path, cfg.train_split, "train"
    if split == "eval":
        if cfg.eval_path:
            path, split_name, holdout = cfg.eval_path, cfg.eval_split, False
        elif cfg.eval_holdout:
            pass
        elif cfg.source in GENERATED_SOURCES:
            generated_split = "eval"         # different draws than the train split
        elif cfg.source == "datasets":
            split_name = cfg.eval_split      # the dataset's own validation split
        else:
            raise ConfigError("no evaluation data: set data.eval_path or data.eval_holdout")
    source = _make_source(cfg, path, split_name, generated_split)
    n = len(source) if not cfg.max_images else min(cfg.max_images, len(source))

    if cfg.source in GENERATED_SOURCES:
        report = ScanReport(total=n, kept=list(range(n)), counts={}, examples={})
    else:
        is_main = dist is None or dist.is_main
        report = _cached_scan(cfg, source, n, log) if is_main else None
        report = broadcast_object(report)
        barrier()
        if getattr(source, "other_files", 0):
            log(f"{path}: ignored {source.other_files} file(s) without an image extension")
    report.check(cfg.max_bad_fraction)

    kept = report.kept
    if holdout:
        if cfg.eval_holdout >= len(kept):
            raise ConfigError(f"data.eval_holdout={cfg.eval_holdout} leaves no training images ({len(kept)} usable)")
        # Hold out by a hash of the record key: stable when files are added or removed elsewhere.
        ranked = sorted(kept, key=lambda i: hashlib.sha1(source.record(i).key.encode()).hexdigest())
        held = set(ranked[:cfg.eval_holdout])
        kept = [i for i in kept if (i in held) == (split == "eval")]
    if not kept:
        raise ConfigError(f"no usable images for split {split!r} ({report.summary()})")
    return ImageDataset(source, kept, image_size=cfg.image_size, train=split == "train", hflip=cfg.hflip,
                        min_size=cfg.min_size, background=cfg.background, report=report)
