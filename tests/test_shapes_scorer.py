"""ShapesEval: detection, GenEval's judging rules, summary arithmetic, GenEval folder layout."""
import json

import numpy as np
import pytest

from unimodal.evaluation.geneval import GENEVAL_TAGS, format_summary, summarize
from unimodal.shapes import (WRONG_KINDS, Detection, ShapesConfig, build_metadata, detect_objects, evaluate, holdout_of,
                             render_metadata, render_scene, score_folder, score_image, training_scene,
                             write_geneval_folder)

CFG = ShapesConfig()
LINES = build_metadata(CFG, holdout_of(CFG))


def _spread(n):
    """n metadata lines spread evenly over the six tags (deterministic)."""
    by_tag = {t: [l for l in LINES if l["tag"] == t] for t in GENEVAL_TAGS}
    out, k = [], 0
    while len(out) < n:
        for t in GENEVAL_TAGS:
            if len(out) < n:
                out.append(by_tag[t][(k * 7) % len(by_tag[t])])
        k += 1
    return out


def test_detects_training_scenes_exactly():
    for i in range(40):
        scene = training_scene(CFG, "test", i)
        dets = detect_objects(render_scene(scene, CFG), CFG)
        assert sorted((d.shape, d.color) for d in dets) == sorted((o.shape, o.color) for o in scene.objects)
        for o in scene.objects:  # fitted boxes land on the true ones
            err = min(np.abs(np.array(d.box) - np.array(o.bbox) * CFG.image_size).max() for d in dets)
            assert err < 1.0


def test_ground_truth_renders_pass():
    lines = _spread(120)
    ok = [score_image(render_metadata(l, CFG, sample=s, n_distractors=s % 2), l, CFG)["correct"]
          for s, l in enumerate(lines)]
    assert np.mean(ok) >= 0.98


def test_wrong_renders_fail():
    applicable = {"color": ("colors", "color_attr"), "relation": ("position",)}
    rejected = {}
    for kind in WRONG_KINDS:
        lines = [l for l in _spread(180) if l["tag"] in applicable.get(kind, GENEVAL_TAGS)][:30]
        rejected[kind] = [not score_image(render_metadata(l, CFG, sample=s, wrong=kind, n_distractors=s % 2),
                                          l, CFG)["correct"] for s, l in enumerate(lines)]
        assert len(rejected[kind]) == 30
    assert all(np.mean(v) >= 0.98 for v in rejected.values()), {k: np.mean(v) for k, v in rejected.items()}


def _det(shape, color="red", box=(10, 10, 20, 20), score=0.95):
    return Detection(shape, color, tuple(float(v) for v in box), score, 50.0)


def test_geneval_rules():
    count3 = {"tag": "counting", "include": [{"class": "star", "count": 3}],
              "exclude": [{"class": "star", "count": 4}], "prompt": "a photo of three stars"}
    stars = [_det("star", box=(10 * i, 0, 10 * i + 8, 8)) for i in range(4)]
    assert evaluate(stars[:3], count3, CFG)[0]
    ok, reason = evaluate(stars, count3, CFG)
    assert not ok and reason == "expected star<4, found 4"
    assert evaluate(stars[:2], count3, CFG) == (False, "expected star>=3, found 2")
    assert not evaluate(stars[:2] + [_det(None)], count3, CFG)[0]  # unclassified blobs never count
    # include means "at least": an extra object of the class is fine outside counting
    single = {"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a photo of a star"}
    assert evaluate(stars, single, CFG)[0]
    colors = {"tag": "colors", "include": [{"class": "star", "count": 1, "color": "blue"}], "prompt": "x"}
    assert not evaluate([_det("star", "red")], colors, CFG)[0]
    assert evaluate([_det("star", "red"), _det("star", "blue", (30, 30, 40, 40))], colors, CFG)[0]
    pos = {"tag": "position", "prompt": "a photo of a star left of a circle",
           "include": [{"class": "circle", "count": 1}, {"class": "star", "count": 1, "position": ["left of", 0]}]}
    circle = _det("circle", box=(40, 20, 50, 30))
    assert evaluate([circle, _det("star", box=(10, 20, 20, 30))], pos, CFG)[0]
    assert not evaluate([circle, _det("star", box=(60, 20, 70, 30))], pos, CFG)[0]
    # margin: offset 10 px with boxes of 10 px -> revised 10 - 0.1 * 20 = 8 > 0; diagonal fails
    assert not evaluate([circle, _det("star", box=(30, 5, 40, 15))], pos, CFG)[0]
    ok, reason = evaluate([_det("star", box=(10, 20, 20, 30))], pos, CFG)
    assert not ok and "no target for star" in reason


def test_summary_is_geneval_arithmetic():
    results = []
    for t, tag in enumerate(GENEVAL_TAGS):
        for k in range(4):
            results.append({"tag": tag, "correct": k < t % 5, "metadata": json.dumps({"p": f"{tag}{k // 2}"})})
    s = summarize(results)
    expected = {tag: min(t % 5, 4) / 4 for t, tag in enumerate(GENEVAL_TAGS)}
    assert s["tags"] == pytest.approx(expected)
    assert s["overall"] == pytest.approx(np.mean(list(expected.values())))
    assert s["total_images"] == 24 and s["total_prompts"] == 12
    assert s["correct_images"] == pytest.approx(np.mean([r["correct"] for r in results]))
    assert "Overall score (avg. over tasks)" in format_summary(s)


def test_scores_geneval_folder_layout(tmp_path):
    lines = _spread(6)
    items = [(l, [render_metadata(l, CFG, sample=0), render_metadata(l, CFG, sample=1, wrong="shape")])
             for l in lines]
    write_geneval_folder(tmp_path / "out", items)
    assert (tmp_path / "out" / "00005" / "samples" / "0001.png").is_file()
    results, summary = score_folder(tmp_path / "out", CFG, results_path=tmp_path / "results.jsonl")
    assert len(results) == 12 and [r["correct"] for r in results] == [True, False] * 6
    assert summary["overall"] == pytest.approx(0.5) and summary["total_prompts"] == 6
    saved = [json.loads(t) for t in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert set(saved[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    with pytest.raises(FileNotFoundError):
        score_folder(tmp_path / "missing", CFG)


def test_in_memory_inputs_agree():
    line = LINES[0]
    img = render_metadata(line, CFG)
    arr = np.asarray(img)
    r = [score_image(x, line, CFG)["correct"] for x in (img, arr, arr.astype(np.float32) / 255)]
    assert r == [True, True, True]
