"""Shapes world: determinism, layout validity, captions, hold-out, datasets."""
import numpy as np
import pytest
import torch

from unimodal.config import ConfigError
from unimodal.shapes import (ShapesConfig, Scene, ShapeObject, caption_violations, holdout_of, render_scene,
                             scene_captions, scene_violations, training_scene)
from unimodal.shapes.captions import (prompt_color_attr, prompt_colors, prompt_counting, prompt_position,
                                      prompt_single_object, prompt_two_object)
from unimodal.shapes.draw import SHAPE_NAMES, shape_alpha, shape_moments
from unimodal.shapes.scene import boxes_apart

CFG = ShapesConfig()


def test_config_round_trip_and_checks():
    assert ShapesConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ConfigError, match="background"):
        ShapesConfig(background=(240, 240, 240))  # white would vanish
    with pytest.raises(ConfigError, match="shapes"):
        ShapesConfig(shapes=("circle", "blob", "square"))
    with pytest.raises(ConfigError, match="min_size"):
        ShapesConfig(image_size=16)  # 0.375 * 16 px is too small to tell shapes apart
    with pytest.raises(ConfigError, match="snap"):
        ShapesConfig(snap=2)         # no whole cell of a 2 x 2 grid is 0.375 of the side
    with pytest.raises(ConfigError, match="edge_margin"):
        # a one-cell box of a 4 x 4 grid has no whole cell left inside a 0.3 margin (it used to pass
        # the checks and fail at the first layout)
        ShapesConfig(snap=4, min_size=0.25, max_size=0.25, edge_margin=0.3, max_objects=1)


def test_scenes_are_deterministic_and_split_dependent():
    a = training_scene(CFG, "train", 7)
    assert training_scene(CFG, "train", 7) == a
    assert np.array_equal(np.asarray(render_scene(a, CFG)), np.asarray(render_scene(training_scene(CFG, "train", 7), CFG)))
    assert training_scene(CFG, "val", 7) != a
    assert training_scene(CFG.replace(seed=1), "train", 7) != a
    assert Scene.from_json(a.to_json()) == a


def test_layouts_are_valid():
    counts = set()
    for i in range(150):
        s = training_scene(CFG, "train", i)
        counts.add(len(s.objects))
        for j, o in enumerate(s.objects):
            assert CFG.min_size <= o.size <= CFG.max_size
            assert min(o.bbox) >= CFG.edge_margin - 1e-9 and max(o.bbox) <= 1 - CFG.edge_margin + 1e-9
            assert o.color in CFG.colors and o.shape in CFG.shapes
            cells = np.array(o.bbox) * CFG.snap       # every box edge on the layout grid (the token grid)
            assert np.allclose(cells, np.round(cells))
            for p in s.objects[j + 1:]:
                assert boxes_apart(o, p, CFG.min_gap)
    assert counts == set(range(CFG.min_objects, CFG.max_objects + 1))


def test_render_is_antialiased_and_sized():
    s = Scene((ShapeObject("circle", "red", 0.5, 0.5, 0.3),))
    img = np.asarray(render_scene(s, CFG))
    assert img.shape == (64, 64, 3)
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(colours) > 3  # edge pixels mix background and red
    assert np.asarray(render_scene(s, CFG, image_size=128)).shape == (128, 128, 3)


def test_shape_templates_fill_their_box():
    for name in SHAPE_NAMES:
        a = shape_alpha(name, (2.0, 2.0, 18.0, 18.0), 20, 20, ss=4)
        rows, cols = np.nonzero(a > 0)
        assert rows.min() == 2 and rows.max() == 17 and cols.min() == 2 and cols.max() == 17, name
        fill = shape_moments(name)[0]
        assert abs(a.sum() / 256 - fill) < 0.03, name


def test_geneval_templates_match_official_phrasing():
    assert prompt_single_object("circle") == "a photo of a circle"
    assert prompt_two_object("star", "heart") == "a photo of a star and a heart"
    assert prompt_counting(3, "cross") == "a photo of three crosses"
    assert prompt_counting(2, "star") == "a photo of two stars"
    assert prompt_colors("orange", "square") == "a photo of an orange square"
    assert prompt_position("star", "right of", "circle") == "a photo of a star right of a circle"
    assert prompt_color_attr("red", "star", "orange", "heart") == "a photo of a red star and an orange heart"


def test_scene_captions_are_exact():
    one = Scene((ShapeObject("star", "blue", 0.3, 0.3, 0.2),))
    caps = scene_captions(one, CFG)
    assert caps["single_object"] == ["a photo of a star"] and caps["colors"] == ["a photo of a blue star"]
    three = Scene(tuple(ShapeObject("cross", "red", x, 0.5, 0.2) for x in (0.15, 0.5, 0.85)))
    assert scene_captions(three, CFG)["counting"] == ["a photo of three crosses"]
    pair = Scene((ShapeObject("circle", "red", 0.2, 0.5, 0.2), ShapeObject("square", "blue", 0.8, 0.5, 0.2)))
    caps = scene_captions(pair, CFG)
    assert set(caps["position"]) == {"a photo of a circle left of a square", "a photo of a square right of a circle"}
    assert "a photo of a red circle and a blue square" in caps["color_attr"]
    assert "the red circle is left of the blue square" in caps["long"][0]
    mixed = Scene((*pair.objects, ShapeObject("star", "red", 0.5, 0.15, 0.2)))
    assert set(scene_captions(mixed, CFG)) == {"long"}  # no GenEval template fits exactly


def test_holdout_never_in_training():
    h = holdout_of(CFG)
    assert len(h.color_shape) == len(CFG.shapes) * CFG.holdout_colors_per_shape and len(h.relations) >= 3
    for i in range(300):
        s = training_scene(CFG, "train", i)
        assert not scene_violations(s.objects, h)
        for caps in scene_captions(s, CFG).values():
            for c in caps:
                assert not caption_violations(c, h, CFG.colors), c


def test_holdout_checks_can_fail():
    h = holdout_of(CFG)
    color, shape = sorted(h.color_shape)[0]
    assert scene_violations([ShapeObject(shape, color, 0.5, 0.5, 0.2)], h)
    assert caption_violations(f"a photo of a {color} {shape}", h, CFG.colors)
    a, rel, b = sorted(h.relations)[0]  # canonical: "left of" or "above"
    oa, ob = (0.2, 0.5), (0.8, 0.5)
    if rel == "above":
        oa, ob = (0.5, 0.2), (0.5, 0.8)
    objs = [ShapeObject(a, "red", *oa, 0.2), ShapeObject(b, "red", *ob, 0.2)]
    assert scene_violations(objs, h)
    assert caption_violations(f"the red {a} is {rel} the red {b}", h, CFG.colors)
    opposite = {"left of": "right of", "above": "below"}[rel]
    assert caption_violations(f"a photo of a {b} {opposite} a {a}", h, CFG.colors)


def test_torch_dataset_items():
    from unimodal.shapes.dataset import ShapesDataset

    ds = ShapesDataset(CFG, "train", length=6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert len(batch["caption"]) == 3 and all(isinstance(c, str) and c for c in batch["caption"])
    again = ds[1]
    assert torch.equal(again["image"], batch["image"][1]) and again["caption"] == batch["caption"][1]
    assert Scene.from_json(again["scene"]) == training_scene(CFG, "train", 1)
    with pytest.raises(IndexError):
        ds[6]


def test_hf_dataset_materialises(tmp_path):
    import datasets

    from unimodal.shapes.dataset import make_item, save_hf_dataset

    save_hf_dataset(CFG, "val", 4, tmp_path / "ds", cache_dir=tmp_path / "cache")
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds.num_rows == 4 and set(ds.column_names) == {"image", "caption", "captions", "scene", "index"}
    ref = make_item(CFG, "val", 2)
    assert ds[2]["caption"] == ref["caption"] and ds[2]["scene"] == ref["scene"]
    assert np.array_equal(np.asarray(ds[2]["image"]), np.asarray(ref["image"]))
    assert ShapesConfig.load_json(tmp_path / "ds" / "shapes_config.json") == CFG
