"""scripts/shape_ceiling.py end to end on a tiny model: one JSON line, a curve point per checkpoint
with the shape-given-colour ratio, the reconstruction ceiling, and bad arguments refused."""
import json

import pytest
from conftest import load_script

from unimodal.unified.testing import tiny_model

script = load_script("shape_ceiling")


def test_tiny_run_reports_a_curve_and_the_ceiling(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    report = script.main(["--model", str(model_dir), "--steps", "4", "--checkpoints", "2", "--depth", "1",
                          "--train-images", "50", "--out", str(tmp_path / "grids")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert [p["step"] for p in report["curve"]] == [2, 4]
    for point in report["curve"]:
        assert 0.0 <= point["accuracy"] <= point["color_accuracy"] <= 1.0
        expected = point["accuracy"] / point["color_accuracy"] if point["color_accuracy"] else None
        assert point["shape_given_color"] == expected
    assert report["settings"]["dit_depth"] == 1 and report["shape_chance"] == 0.2
    assert "reconstruction_accuracy" in report and report["psnr"] > 0
    assert sorted(p.name for p in (tmp_path / "grids").glob("*.png")) == ["step_2.png", "step_4.png"]
    with pytest.raises(SystemExit):
        script.main(["--steps", "2", "--checkpoints", "3"])
