"""ShapesEval and test-time scaling: summary arithmetic on hand-made tables, then whole runs with a
stand-in that renders right or wrong scenes (so the analytic scorer's verdicts are known) and a
perfect yes_prob judge next to an uninformative likelihood judge; the scaling plot is written."""
import json
from pathlib import Path

import pytest

from unimodal.evaluation import RunOptions
from unimodal.evaluation.analysis import (judge_agreement, oracle_summary, random_summary, scaling_report, select,
                                          selection_summary)
from unimodal.shapes import ShapesConfig, build_metadata, holdout_of
from unimodal.shapes.benchmark import run_scaling, run_shapes
from unimodal.shapes.testing import ShapesRenderGenerator

CFG = ShapesConfig()


def _prompt(tag, verdicts, yes):
    meta = json.dumps({"tag": tag, "p": verdicts})
    return {"tag": tag, "metadata": meta, "line": None,
            "candidates": [{"index": k, "correct": v, "yes_prob": y, "likelihood": -k}
                           for k, (v, y) in enumerate(zip(verdicts, yes))]}


TABLE = [
    _prompt("single_object", [True, False, False, True], [0.1, 0.2, 0.3, 0.9]),
    _prompt("single_object", [False, False, True, False], [0.5, 0.1, 0.9, 0.2]),
    _prompt("colors", [False, False, False, True], [0.9, 0.1, 0.1, 0.1]),
]


def test_selection_and_summary_arithmetic():
    assert [c["index"] for c in select(TABLE[0]["candidates"], 4, 2, "yes_prob")] == [3, 2]
    assert [c["index"] for c in select(TABLE[0]["candidates"], 2, 1, "yes_prob")] == [1]
    assert [c["index"] for c in select(TABLE[0]["candidates"], 4, 2, None)] == [0, 1]
    assert [c["index"] for c in select(TABLE[0]["candidates"], 4, 1, "likelihood")] == [0]

    single = selection_summary(TABLE, 1, 1, None)             # candidate 0: T, F, F
    assert single["tags"] == {"single_object": 0.5, "colors": 0.0} and single["overall"] == 0.25
    best = selection_summary(TABLE, 4, 1, "yes_prob")         # picks 3 (T), 2 (T), 0 (F)
    assert best["tags"] == {"single_object": 1.0, "colors": 0.0} and best["overall"] == 0.5
    assert best["tag_counts"] == {"single_object": [2, 2], "colors": [0, 1]} and best["total_images"] == 3
    rnd = random_summary(TABLE, 4)                            # 3 of 8 single_object, 1 of 4 colors
    assert rnd["tags"] == {"single_object": 3 / 8, "colors": 0.25} and rnd["overall"] == pytest.approx(0.3125)
    assert oracle_summary(TABLE, 4)["overall"] == 1.0 and oracle_summary(TABLE, 2)["overall"] == 0.25

    a = judge_agreement(TABLE, 4, "yes_prob")
    assert a["top_pick_correct"] == pytest.approx(2 / 3) and a["random_correct"] == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    assert a["any_correct"] == 1.0

    rep = scaling_report(TABLE, [4, 1, 2], 1, ["yes_prob"])
    assert rep["ns"] == [1, 2, 4]
    assert [p["overall"] for p in rep["curves"]["yes_prob"]] == [0.25, 0.0, 0.5]
    with pytest.raises(ValueError, match="saved"):
        select(TABLE[0]["candidates"], 8, 1, "yes_prob")
    with pytest.raises(ValueError, match=">= keep"):
        scaling_report(TABLE, [1, 2], 2, ["yes_prob"])


def _lines(n_per_tag=1):
    lines, seen = [], {}
    for line in build_metadata(CFG, holdout_of(CFG)):
        if seen.get(line["tag"], 0) < n_per_tag:
            seen[line["tag"]] = seen.get(line["tag"], 0) + 1
            lines.append(line)
    return lines


def test_shapes_eval_run(tmp_path):
    from unimodal.shapes import split_by_holdout

    seen, held = split_by_holdout(build_metadata(CFG, holdout_of(CFG)), holdout_of(CFG))
    lines = [seen[0], held[0], seen[-1], held[-1]]
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(l) + "\n" for l in lines))
    out = tmp_path / "shapes"
    gen = ShapesRenderGenerator(lines, CFG, p_correct=0.4)
    for i in range(2):                                   # two shards, then the whole range scored
        assert run_shapes(RunOptions(out=str(out), n=6, shard=i, num_shards=2, progress=False), metadata=str(meta),
                          generator=gen)[1] == 0
    summary, code = run_shapes(RunOptions(out=str(out), n=6, check_only=True, progress=False), metadata=str(meta))
    assert code == 0 and summary["counts"]["ok"]
    scores = summary["scores"]
    single, best = scores["single"], scores["best_of_n"]
    assert single["total_images"] == best["total_images"] == 16 and single["total_prompts"] == 4
    assert set(best) >= {"tags", "overall", "tag_counts", "correct_images", "correct_prompts"}
    assert best["overall"] == pytest.approx(sum(best["tags"].values()) / len(best["tags"]))
    # the stand-in's yes_prob is a perfect judge: its top pick is right whenever any candidate is
    agree = scores["judge_agreement"]
    assert agree["top_pick_correct"] == agree["any_correct"] and agree["n"] == 6
    assert best["correct_images"] >= single["correct_images"]
    assert set(scores["splits"]) == {"seen", "held_out"}
    assert scores["splits"]["held_out"]["single"]["total_prompts"] == 2
    results = [json.loads(t) for t in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 16 and all("/samples/" in r["filename"] for r in results)
    assert sum(r["correct"] for r in results) == round(best["correct_images"] * 16)
    # Every judge re-ranks the same candidates; the ranking judge's curve ends at best_of_n.
    curves = summary["scaling"]["curves"]
    assert summary["scaling"]["ns"] == [4, 6] and set(curves) == {"yes_prob", "likelihood", "random", "oracle"}
    assert curves["yes_prob"][-1]["overall"] == pytest.approx(best["overall"])
    assert curves["yes_prob"][0]["overall"] == pytest.approx(single["overall"])
    assert Path(summary["plot"]).is_file()


def test_scaling_run_writes_json_and_plot(tmp_path):
    lines = _lines(1)
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(l) + "\n" for l in lines))
    out = tmp_path / "scaling"
    gen = ShapesRenderGenerator(lines, CFG, p_correct=0.3)
    summary, code = run_scaling(RunOptions(out=str(out), keep=1, n=8, progress=False), ns=[1, 2, 4, 8],
                                metadata=str(meta), generator=gen)
    assert code == 0
    png, js = out / "scaling.png", out / "scaling.json"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and js.is_file()
    rep = json.loads(js.read_text())["scaling"]
    assert rep["ns"] == [1, 2, 4, 8] and set(rep["curves"]) == {"yes_prob", "likelihood", "random", "oracle"}
    yes = [p["overall"] for p in rep["curves"]["yes_prob"]]
    oracle = [p["overall"] for p in rep["curves"]["oracle"]]
    assert yes == oracle                                   # a perfect judge reaches the oracle at every N
    assert yes == sorted(yes) and yes[-1] > rep["curves"]["random"][-1]["overall"]
    last = rep["judge_agreement"]["yes_prob"][-1]
    assert last["n"] == 8 and last["top_pick_correct"] >= last["random_correct"]
    assert summary["generation"]["n"] == 8 and summary["args"]["ns"] == [1, 2, 4, 8]


def test_runs_that_cannot_score_everything_are_refused(tmp_path):
    from unimodal.config import ConfigError

    with pytest.raises(ConfigError, match="n = max"):
        run_scaling(RunOptions(out=str(tmp_path), keep=1, n=4, progress=False), ns=[1, 2, 8])
    with pytest.raises(ConfigError, match="no-rejected"):
        run_shapes(RunOptions(out=str(tmp_path), n=8, save_rejected=False, progress=False))
