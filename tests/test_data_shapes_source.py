import pytest
import torch

import unimodal.shapes  # noqa: F401  (adds data.source=shapes)
from unimodal.config import ConfigError
from unimodal.data.dataset import DataConfig, build_image_dataset


def test_shapes_source_gives_captioned_images_and_distinct_eval_split():
    cfg = DataConfig(source="shapes", image_size=64, synthetic_images=6)
    train = build_image_dataset(cfg, "train")
    evals = build_image_dataset(cfg, "eval")
    item = train[0]
    assert item["pixels"].shape == (3, 64, 64) and 0 <= item["pixels"].min() and item["pixels"].max() <= 1
    assert isinstance(item["caption"], str) and item["caption"]
    assert torch.equal(train[0]["pixels"], build_image_dataset(cfg, "train")[0]["pixels"])  # deterministic
    assert not torch.equal(train[0]["pixels"], evals[0]["pixels"])


def test_an_unknown_source_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"'nope' is not one of \['folder', 'datasets', 'synthetic', 'shapes'\]"):
        build_image_dataset(DataConfig(source="nope"))
