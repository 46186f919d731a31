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


def test_shapes_items_carry_a_hard_negative_one_shape_word_off():
    from collections import Counter

    from unimodal.shapes import ShapesConfig
    from unimodal.shapes.dataset import make_item
    from unimodal.shapes.recipe.evaluate import caption_matches, parse_caption
    from unimodal.shapes.scene import Scene

    world = ShapesConfig()
    for i in range(60):
        item = make_item(world, "train", i)
        scene = Scene.from_json(item["scene"])
        assert caption_matches(item["caption"], scene, world)
        assert item["negative"] is not None and not caption_matches(item["negative"], scene, world)
        truth, wrong = Counter(o.shape for o in scene.objects), Counter(s for _, s in parse_caption(item["negative"], world))
        assert sum((truth - wrong).values()) == 1 and sum(wrong.values()) == sum(truth.values())
    train = build_image_dataset(DataConfig(source="shapes", image_size=64, synthetic_images=3), "train")
    assert train[0]["negative"] == make_item(world, "train", 0)["negative"]
