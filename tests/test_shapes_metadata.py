"""ShapesEval prompts: GenEval's metadata format, deterministic hold-out split, renders per line."""
import json

import pytest

from unimodal.evaluation.geneval import GENEVAL_TAGS, check_metadata_line, read_metadata_jsonl, write_metadata_jsonl
from unimodal.shapes import (WRONG_KINDS, ShapesConfig, build_metadata, holdout_of, metadata_scene, metadata_violations,
                             split_by_holdout)
from unimodal.shapes.captions import prompt_counting, prompt_position
from unimodal.shapes.holdout import canonical
from unimodal.shapes.relations import relative_position

CFG = ShapesConfig()
LINES = build_metadata(CFG, holdout_of(CFG))


def _shape_of(line):
    """Keys per tag and per clause: the format skeleton to compare with GenEval's file."""
    return line["tag"], tuple(line), tuple(tuple(c) for c in line["include"]), tuple(tuple(c) for c in line.get("exclude", []))


def test_all_six_tags_and_valid_lines():
    assert [t for t in GENEVAL_TAGS if any(l["tag"] == t for l in LINES)] == list(GENEVAL_TAGS)
    for line in LINES:
        check_metadata_line(line, CFG.shapes)
        for c in line["include"]:
            assert c.get("color", CFG.colors[0]) in CFG.colors
    assert len({l["prompt"] for l in LINES}) == len(LINES)  # no duplicate prompts


def test_counting_and_position_semantics():
    for line in LINES:
        if line["tag"] == "counting":
            (inc,), (exc,) = line["include"], line["exclude"]
            assert exc == {"class": inc["class"], "count": inc["count"] + 1}
            assert line["prompt"] == prompt_counting(inc["count"], inc["class"])
        if line["tag"] == "position":
            ref, moving = line["include"]
            rel, idx = moving["position"]
            assert idx == 0 and "position" not in ref and ref["class"] != moving["class"]
            assert line["prompt"] == prompt_position(moving["class"], rel, ref["class"])


def test_same_format_as_official_geneval(geneval_metadata_path):
    official = [json.loads(t) for t in geneval_metadata_path.read_text().splitlines() if t.strip()]
    for line in official:
        check_metadata_line(line)  # the checker accepts every official line
    assert {_shape_of(l) for l in LINES} == {_shape_of(l) for l in official}
    assert all(json.loads(json.dumps(l)) == l for l in LINES)  # plain JSON types only


def test_checker_rejects_malformed_lines():
    good = next(l for l in LINES if l["tag"] == "counting")
    with pytest.raises(ValueError, match="exclude"):
        check_metadata_line({**good, "exclude": [{"class": good["include"][0]["class"], "count": 9}]})
    with pytest.raises(ValueError, match="keys"):
        check_metadata_line({"prompt": good["prompt"], "tag": "counting", "include": good["include"]})
    with pytest.raises(ValueError, match="tag"):
        check_metadata_line({"tag": "shapes", "include": good["include"], "prompt": "x"})
    pos = next(l for l in LINES if l["tag"] == "position")
    with pytest.raises(ValueError, match="position"):
        check_metadata_line({**pos, "include": [pos["include"][1], pos["include"][0]]})


def test_metadata_is_deterministic_and_round_trips(tmp_path):
    assert build_metadata(CFG, holdout_of(CFG)) == LINES
    write_metadata_jsonl(LINES, tmp_path / "m.jsonl")
    assert read_metadata_jsonl(tmp_path / "m.jsonl") == LINES
    assert all(text.startswith('{"tag": ') for text in (tmp_path / "m.jsonl").read_text().splitlines())
    other = build_metadata(CFG.replace(holdout_seed=1), holdout_of(CFG.replace(holdout_seed=1)))
    assert other != LINES


def test_holdout_split_covers_held_out_combinations():
    h = holdout_of(CFG)
    seen, held = split_by_holdout(LINES, h)
    assert seen and held and len(seen) + len(held) == len(LINES)
    asked_pairs = {(c["color"], c["class"]) for l in held for c in l["include"] if "color" in c}
    assert h.color_shape <= asked_pairs  # every held-out pair is asked for
    asked_triples = {canonical(l["include"][1]["class"], l["include"][1]["position"][0], l["include"][0]["class"])
                     for l in held if l["tag"] == "position"}
    assert h.relations <= asked_triples
    for line in seen:
        assert not metadata_violations(line, h)


def test_ground_truth_and_wrong_scenes_follow_the_line():
    by_tag = {}
    for line in LINES:
        by_tag.setdefault(line["tag"], line)
    for tag, line in by_tag.items():
        gt = metadata_scene(line, CFG, sample=3)
        assert gt == metadata_scene(line, CFG, sample=3)  # deterministic
        for clause in line["include"]:
            mine = [o for o in gt.objects if o.shape == clause["class"]]
            assert len(mine) == clause["count"]
            assert all(o.color == clause.get("color", o.color) for o in mine)
        if tag == "position":
            ref, moving = gt.objects
            assert line["include"][1]["position"][0] in relative_position(moving.bbox, ref.bbox, CFG.relation_margin)
        for kind in WRONG_KINDS:
            wrong = metadata_scene(line, CFG, sample=3, wrong=kind)
            applies = {"color": "color" in line["include"][0], "relation": tag == "position"}.get(kind, True)
            assert (wrong is not None) == applies, (tag, kind)
            if wrong is not None:
                assert wrong != gt
