"""Shapes training data: an on-the-fly torch Dataset and a materialised Hugging Face `datasets.Dataset`.

Item `i` of split `s` is a pure function of (cfg, s, i): the scene comes from
`world.training_scene` and the caption choice from its own random stream of the same item, so a
DataLoader with any number of workers, or a resumed run, sees identical data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from unimodal.data.dataset import DataConfig, register_generated_source
from unimodal.data.sources import Record
from unimodal.shapes.captions import scene_captions
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.scene import Scene, image_to_tensor, render_scene
from unimodal.shapes.world import item_rng, shape_twin, training_scene

CAPTION_MODES = ("mixed", "long", "geneval")


def choose_caption(captions: dict[str, list[str]], mode: str, long_prob: float, rng: np.random.Generator) -> str:
    """"long": the long caption; "geneval": a GenEval-style one (the long one if the scene has
    none); "mixed": the long one with probability `long_prob`, otherwise as "geneval"."""
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode {mode!r} is not one of {list(CAPTION_MODES)}")
    short = [c for tag, caps in sorted(captions.items()) if tag != "long" for c in caps]
    if mode == "long" or not short or (mode == "mixed" and rng.random() < long_prob):
        return captions["long"][0]
    return short[int(rng.integers(len(short)))]


def twin_caption(caption: str, captions: dict[str, list[str]], twin: Scene | None, cfg: ShapesConfig) -> str | None:
    """The caption of `twin` (the scene with one shape changed) phrased like `caption`: the same tag
    and position in its list when the twin has one, else its long description; None without a twin."""
    if twin is None:
        return None
    twin_caps = scene_captions(twin, cfg)
    for tag, caps in captions.items():
        if caption in caps and len(twin_caps.get(tag, [])) > caps.index(caption):
            return twin_caps[tag][caps.index(caption)]
    return twin_caps["long"][0]


def make_item(cfg: ShapesConfig, split: str, index: int, mode: str = "mixed") -> dict[str, Any]:
    """{"image": PIL image, "caption": str, "captions": all exact captions, "negative": the caption
    of its shape twin (a hard negative: one shape word wrong) or None, "scene": JSON, "index"}."""
    scene = training_scene(cfg, split, index)
    caps = scene_captions(scene, cfg)
    caption = choose_caption(caps, mode, cfg.long_caption_prob, item_rng(cfg.seed, split, index, stream=1))
    negative = twin_caption(caption, caps, shape_twin(scene, cfg, item_rng(cfg.seed, split, index, stream=12)), cfg)
    return {"image": render_scene(scene, cfg), "caption": caption, "negative": negative,
            "captions": [c for tag in sorted(caps) for c in caps[tag]], "scene": scene.to_json(), "index": index}


class ShapesDataset(torch.utils.data.Dataset):
    """Rendered on the fly. Items: image (3, S, S) float32 in [0, 1], caption, scene JSON, index
    (all collate with the default collate function)."""

    def __init__(self, cfg: ShapesConfig, split: str = "train", length: int = 100_000, caption: str = "mixed"):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if caption not in CAPTION_MODES:
            raise ValueError(f"caption mode {caption!r} is not one of {list(CAPTION_MODES)}")
        self.cfg, self.split, self.length, self.caption = cfg, split, length, caption

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a Shapes split of {self.length}")
        item = make_item(self.cfg, self.split, index, self.caption)
        return {"image": image_to_tensor(item["image"]), "caption": item["caption"],
                "scene": item["scene"], "index": index}


class ShapesImageSource:
    """The Shapes world as a `data.source=shapes` image source: record i is scene i of `split`,
    rendered at the world's image size, with its caption (see ShapesDataset for the caption mix)."""

    def __init__(self, cfg: ShapesConfig, num_images: int, *, split: str = "train", caption_mode: str = "mixed"):
        if num_images < 1:
            raise ValueError(f"shapes source needs num_images >= 1, got {num_images}")
        self.cfg, self.n, self.split, self.caption_mode = cfg, num_images, split, caption_mode
        self.has_labels, self.has_captions = False, True

    def __len__(self) -> int:
        return self.n

    def record(self, i: int) -> Record:
        if not 0 <= i < self.n:
            raise IndexError(i)
        item = make_item(self.cfg, self.split, i, self.caption_mode)
        return Record(item["image"], None, item["caption"], key=f"shapes[{self.split}:{i}]", negative=item["negative"])


def _data_source(cfg: DataConfig, split: str) -> ShapesImageSource:
    world = ShapesConfig.load_json(cfg.shapes_config) if cfg.shapes_config else ShapesConfig(image_size=cfg.image_size)
    return ShapesImageSource(world, cfg.synthetic_images, split=split, caption_mode=cfg.shapes_captions)


# The Shapes world is the project's embedded default data, not a part of data/: it adds itself.
register_generated_source("shapes", _data_source)


def features():
    """The columns of a materialised Shapes dataset (`datasets` is imported only here and below:
    training renders on the fly and needs none of it)."""
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "scene": datasets.Value("string"),
        "index": datasets.Value("int64"),
    })


def _generate(cfg_dict: dict, split: str, start: int, stop: int, mode: str) -> Iterator[dict[str, Any]]:
    cfg = ShapesConfig.from_dict(cfg_dict)
    for i in range(start, stop):
        yield make_item(cfg, split, i, mode)


def build_hf_dataset(cfg: ShapesConfig, split: str, length: int, caption: str = "mixed",
                     start: int = 0, cache_dir: str | os.PathLike | None = None) -> "datasets.Dataset":
    """Items start..start+length-1 of `split` as a `datasets.Dataset` (image column + caption +
    all captions + scene JSON + index). Arrow files go to `cache_dir` (default: the HF cache)."""
    import datasets

    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    return datasets.Dataset.from_generator(
        _generate, features=features(), cache_dir=None if cache_dir is None else str(cache_dir),
        gen_kwargs={"cfg_dict": cfg.to_dict(), "split": split, "start": start, "stop": start + length, "mode": caption})


def save_hf_dataset(cfg: ShapesConfig, split: str, length: int, path: str | os.PathLike,
                    caption: str = "mixed", cache_dir: str | os.PathLike | None = None) -> "datasets.Dataset":
    """Materialise and `save_to_disk(path)`, with the world's config in `path/shapes_config.json`."""
    ds = build_hf_dataset(cfg, split, length, caption, cache_dir=cache_dir)
    ds.save_to_disk(str(path))
    cfg.save_json(Path(path) / "shapes_config.json")
    return ds
