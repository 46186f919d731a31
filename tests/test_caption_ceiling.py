"""scripts/caption_ceiling.py end to end on a tiny model: one JSON line, a caption curve per codec
with steps, seconds and per-attribute scores, the untouched model's own scores, bad arguments refused."""
import json

import pytest
from conftest import load_script

from unimodal.unified.testing import tiny_model

script = load_script("caption_ceiling")


def test_tiny_run_reports_a_caption_curve_per_codec(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    report = script.main(["--model", str(model_dir), "--steps", "4", "--checkpoints", "2", "--batch-size", "4",
                          "--train-scenes", "12", "--eval-scenes", "3"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    keys = {"correct", "shapes", "count", "parsed"}
    assert set(report["shipped"]) == keys
    for codec in ("tower", "pixel"):
        assert [p["step"] for p in report[codec]] == [2, 4]
        for point in report[codec]:
            assert all(0.0 <= point[k] <= 1.0 for k in keys) and point["correct"] <= point["shapes"]
            assert point["seconds"] >= 0 and point["loss"] > 0
    report = script.main(["--model", str(model_dir), "--codecs", "tower", "--init", "shipped", "--steps", "1",
                          "--checkpoints", "1", "--batch-size", "2", "--train-scenes", "4", "--eval-scenes", "2"])
    assert "pixel" not in report and report["init"] == "shipped"
    for bad in (["--steps", "2", "--checkpoints", "3"], ["--batch-size", "0"], ["--codecs", "vae"]):
        with pytest.raises(SystemExit):
            script.main(bad)
