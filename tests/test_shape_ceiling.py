"""scripts/shape_ceiling.py end to end on a tiny model: one JSON line, a curve per (codec, shift)
with steps, seconds and the shape-given-colour ratio, each codec's reconstruction ceiling (the
pixel control is lossless), sample grids, and bad arguments refused."""
import json

import pytest
import torch
from conftest import load_script

from unimodal.shapes.findings import PixelCodec
from unimodal.unified.testing import tiny_model

script = load_script("shape_ceiling")


def test_pixel_codec_is_lossless_and_row_major():
    codec = PixelCodec(16, 4)
    images = torch.rand(2, 3, 16, 16)
    tokens = codec.encode(images)
    assert tokens.shape == (2, 16, 48)
    assert torch.allclose(codec.decode(tokens), images, atol=1e-6)
    # token 1 is the patch right of token 0 (row-major, like an encoder's grid)
    assert torch.equal(tokens[0, 1].reshape(3, 4, 4), 2 * images[0, :, :4, 4:8] - 1)
    with pytest.raises(ValueError):
        PixelCodec(18, 4)


def test_tiny_run_reports_curves_per_codec_and_the_ceilings(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    report = script.main(["--model", str(model_dir), "--steps", "4", "--checkpoints", "2", "--depth", "1",
                          "--width", "192", "--train-images", "50", "--shift-scales", "1", "3",
                          "--out", str(tmp_path / "grids")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert [(r["codec"], r["shift_scale"]) for r in report["runs"]] == [("tower", 1), ("tower", 3), ("pixel", 1),
                                                                        ("pixel", 3)]
    for run in report["runs"]:
        assert [p["step"] for p in run["curve"]] == [2, 4]
        assert set(run["steps_to"]) == {"0.5", "0.9"}
        for point in run["curve"]:
            assert 0.0 <= point["accuracy"] <= point["color_accuracy"] <= 1.0
            expected = point["accuracy"] / point["color_accuracy"] if point["color_accuracy"] else None
            assert point["shape_given_color"] == expected
            assert point["seconds"] >= 0 and point["cpu_seconds"] >= 0
    assert report["settings"]["dit_depth"] == 1 and report["shape_chance"] == 0.2
    # the lossless control reconstructs exactly: its ceiling is the detector's accuracy on the renders
    assert report["codecs"]["pixel"]["psnr"] > 60
    assert "reconstruction_accuracy" in report["codecs"]["tower"]
    assert set(report["codecs"]["pixel"]["reconstruction_accuracy_by_shape"]) == set(report["world"]["shapes"])
    grids = sorted(p.name for p in (tmp_path / "grids").glob("*.png"))
    assert grids == sorted(f"{c}_shift{s}_step_{n}.png" for c in ("tower", "pixel") for s in (1, 3) for n in (2, 4))
    with pytest.raises(SystemExit):
        script.main(["--steps", "2", "--checkpoints", "3"])
    with pytest.raises(SystemExit):
        script.main(["--shift-scales", "0"])
    with pytest.raises(SystemExit):   # objects bigger than half the image
        script.main(["--model", str(model_dir), "--object-size", "0.3", "0.6", "--steps", "2", "--checkpoints", "1"])
    with pytest.raises(SystemExit):   # the tiny tower's pixel patches have 192 channels
        script.main(["--model", str(model_dir), "--width", "64", "--train-images", "50", "--steps", "2",
                     "--checkpoints", "1"])


def test_world_and_head_choices(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    report = script.main(["--model", str(model_dir), "--codecs", "pixel", "--heads", "none", "dh", "--steps", "2",
                          "--checkpoints", "1", "--depth", "1", "--width", "192", "--train-images", "30",
                          "--object-size", "0.35", "0.45", "--shapes", "circle", "square", "triangle",
                          "--snap", "0", "--from-real", "0.3", "1", "--out", str(tmp_path / "grids")])
    assert report["world"]["shapes"] == ["circle", "square", "triangle"] and report["shape_chance"] == 1 / 3
    assert (report["world"]["min_size"], report["world"]["max_size"], report["world"]["snap"]) == (0.35, 0.45, 0)
    assert [r["head"] for r in report["runs"]] == ["none", "dh"]
    for run in report["runs"]:
        assert set(run["curve"][0]["from_real"]) == {"0.3", "1"}
        assert all(0.0 <= a <= 1.0 for a in run["curve"][0]["from_real"].values())
    assert sorted(p.name for p in (tmp_path / "grids").glob("*.png")) == sorted(
        f"pixel_shift3{h}_step_2{f}.png" for h in ("", "_dh") for f in ("", "_from_0.3", "_from_1"))
    with pytest.raises(SystemExit):
        script.main(["--model", str(model_dir), "--from-real", "0", "--steps", "2", "--checkpoints", "1"])
