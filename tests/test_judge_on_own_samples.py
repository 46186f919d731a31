"""scripts/judge_on_own_samples.py: its scoring functions on hand-made cases, then a small run on the
shipped model."""
import json

import pytest
from conftest import load_script

from unimodal.shipped import SHIPPED_MODEL_DIR

script = load_script("judge_on_own_samples")


def test_roc_auc_counts_ordered_pairs_and_ties():
    assert script.roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert script.roc_auc([0.1, 0.9], [True, False]) == 0.0
    assert script.roc_auc([0.5, 0.5, 0.2], [True, False, False]) == 0.75
    assert script.roc_auc([0.3, 0.4], [True, True]) is None


def test_within_prompt_auc_skips_prompts_without_both_outcomes():
    correct = [[True, False], [False, False], [False, True, False]]
    yes = [[0.9, 0.1], [0.3, 0.2], [0.8, 0.5, 0.1]]
    assert script.within_prompt_auc(correct, yes) == pytest.approx((1.0 + 0.5) / 2)
    assert script.within_prompt_auc([[True]], [[0.4]]) is None


def test_asked_shapes_counts_every_include():
    assert script.asked_shapes({"include": [{"class": "circle", "count": 3}]}) == {"circle": 3}
    assert script.asked_shapes({"include": [{"class": "star", "count": 1, "color": "red"},
                                            {"class": "square", "count": 1}]}) == {"star": 1, "square": 1}


def test_selection_scores_average_tags_and_break_ties_by_index():
    lines = [{"tag": "colors"}, {"tag": "colors"}, {"tag": "counting"}]
    correct = [[False, True], [False, False], [True, False]]
    yes = [[0.2, 0.9], [0.5, 0.5], [0.7, 0.7]]          # tie on the last line: candidate 0 wins
    got = script.selection_scores(lines, correct, yes)
    assert got["top_pick"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["random"] == pytest.approx((0.25 + 0.5) / 2)
    assert got["oracle"] == pytest.approx((0.5 + 1.0) / 2)


@pytest.mark.skipif(not (SHIPPED_MODEL_DIR / "model.safetensors").is_file(), reason="no shipped model in models/shapes")
def test_small_run_on_the_shipped_model_trains_the_judge_and_saves_it(tmp_path, capsys):
    report = script.main(["--per-tag", "2", "--n", "2", "--eval-per-tag", "1", "--steps", "3", "--batch-size", "4",
                          "--out", str(tmp_path / "tuned")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert report["train_prompts"] == 12 and report["eval_prompts"] == 6
    assert report["train_examples"]["yes"] >= 12 and report["train_examples"]["no"] >= 1
    assert report["before"]["mean_p_yes"] != report["after"]["mean_p_yes"]   # the judge moved
    assert (tmp_path / "tuned" / "model.safetensors").is_file()
    for reading in ("latent", "reencoded"):
        got = report["readings"][reading]
        assert {"auc", "within_prompt_auc", "top_pick", "random", "oracle", "captions_name_asked_shapes"} <= set(got)
        assert all(v is None or 0.0 <= v <= 1.0 for v in got["captions_name_asked_shapes"].values())
    with pytest.raises(SystemExit):
        script.main(["--n", "1"])
