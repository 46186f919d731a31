"""scripts/finetune_shapes_example.py: the new-concept world, folder and prompts, its errors, and
the whole example (data, ShapesEval before, finetune, ShapesEval after) at tiny scale."""
import json
from pathlib import Path

import pytest
from conftest import load_script

from unimodal.finetune.testing import tiny_base_model
from unimodal.shapes import build_holdout, metadata_violations, scene_violations
from unimodal.shapes.config import DEFAULT_SHAPES, ShapesConfig
from unimodal.shapes.scene import Scene, ShapeObject

ex = load_script("finetune_shapes_example")


def _fake_model(path: Path, image_size: int = 64) -> Path:
    """Enough of a model directory for the checks that run before any model is loaded."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"rae": {"encoder": {"image_size": image_size}}}))
    return path


def test_new_shape_world_holdout_folder_and_prompts(tmp_path):
    assert "heart" not in DEFAULT_SHAPES
    base = ex.base_world(64)
    concept = ex.Concept(shape="heart")
    world = concept.extend(base)
    assert world.shapes == (*base.shapes, "heart") and world.colors == base.colors
    hold = ex.concept_holdout(base, world, concept)
    old = build_holdout(base)
    # The base world's hold-outs stay held out; the new shape gets its own (one colour of it here).
    assert old.color_shape <= hold.color_shape and old.relations <= hold.relations
    new_pairs = hold.color_shape - old.color_shape
    assert len(new_pairs) == base.holdout_colors_per_shape and all(s == "heart" for _, s in new_pairs)

    counts = ex.write_folder(world, hold, concept, 40, tmp_path / "data")
    assert counts["with_concept"] == 40 and counts["rehearsal"] > 0 and counts["colors_of_concept"] >= 5
    rows = [json.loads(x) for x in (tmp_path / "data" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == counts["images"] == len(list((tmp_path / "data").glob("*.png")))
    assert sum("heart" in r["text"] for r in rows) >= 30

    p = ex.eval_prompts(world, hold, concept, 20, tmp_path / "prompts.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert p["prompts"] == len(lines) == 20 and p["lines"] == lines
    assert all(any(c["class"] == "heart" for c in x["include"]) for x in lines)
    assert {"single_object", "two_object", "counting", "colors"} <= set(p["per_tag"])
    assert p["held_out"] == sum(bool(metadata_violations(x, hold)) for x in lines)


def test_folder_never_shows_a_combination_the_base_world_held_out(tmp_path):
    base = ex.base_world(64)
    concept = ex.Concept(shape="heart")
    world = concept.extend(base)
    hold = ex.concept_holdout(base, world, concept)
    color, shape = sorted(build_holdout(base).color_shape)[0]
    assert scene_violations(Scene((ShapeObject(shape, color, 0.5, 0.5, 0.25),)).objects, hold)
    ex.write_folder(world, hold, concept, 12, tmp_path / "data")
    for r in (tmp_path / "data" / "metadata.jsonl").read_text().splitlines():
        assert f"{color} {shape}" not in json.loads(r)["text"]


def test_new_color_path_extends_the_colours():
    base = ShapesConfig(colors=("red", "green", "blue", "white"))
    concept = ex.Concept(color="pink")
    world = concept.extend(base)
    assert world.colors[-1] == "pink" and world.shapes == base.shapes
    hold = ex.concept_holdout(base, world, concept)
    assert build_holdout(base).color_shape <= hold.color_shape


def test_exactly_one_new_concept_and_it_must_be_new(tmp_path, capsys):
    model = _fake_model(tmp_path / "model")
    with pytest.raises(SystemExit):
        ex.main(["--model", str(model), "--new-shape", "heart", "--new-color", "pink"])
    assert "exactly one new concept" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="exactly one new concept"):
        ex.Concept()
    with pytest.raises(SystemExit, match="'circle' is already a shape of the base world"):
        ex.main(["--model", str(model), "--new-shape", "circle", "--out", str(tmp_path / "out")])
    world = tmp_path / "world.json"
    ShapesConfig(shapes=(*DEFAULT_SHAPES, "heart")).save_json(world)
    with pytest.raises(SystemExit, match="'heart' is already a shape"):
        ex.main(["--model", str(model), "--base-world", str(world), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="'pink' is already a color"):
        ex.main(["--model", str(model), "--new-color", "pink", "--base-world", str(world),
                 "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()   # nothing is written before the checks pass
    # Neither flag: the new shape is heart (and --model falls back to the shipped model).
    args = ex.parse_args([])
    assert args.new_shape == "heart" and args.new_color is None and args.model is None


@pytest.mark.parametrize("concept", [[], ["--new-color", "pink"]], ids=["default-heart", "pink"])
def test_example_runs_end_to_end(tmp_path, capsys, concept):
    model = tiny_base_model(tmp_path / "base")
    out = tmp_path / "ex"
    summary = ex.main(["--model", str(model), "--out", str(out), "--images", "6", "--eval-prompts", "4",
                       "--images-per-prompt", "1", "--num-inference-steps", "2", "--config", "configs/finetune_tiny.yaml",
                       *concept, "train.total_steps=2", "train.ckpt_every=2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    kind, name = ("color", "pink") if concept else ("shape", "heart")
    assert summary["concept"] == {"kind": kind, "name": name} and summary["steps"] == 2
    assert summary["data"]["with_concept"] == 6 and summary["eval"]["prompts"] == 4
    world = json.loads((out / "world.json").read_text())
    assert world[f"{kind}s"][-1] == name and world[f"{kind}s"].count(name) == 1
    for key in ("before", "after"):
        assert 0.0 <= summary[key]["overall"] <= 1.0
        assert set(summary[key]["tags"]) == set(summary["eval"]["per_tag"])
    assert set(summary["wall"]) == {"data_s", "eval_before_s", "finetune_s", "eval_after_s", "total_s"}
    assert (Path(summary["model"]) / "config.json").is_file()
    cfg = json.loads((out / "run" / "config.json").read_text())
    assert len(cfg["sample_prompts"]) == 2 and all(name in p for p in cfg["sample_prompts"])
