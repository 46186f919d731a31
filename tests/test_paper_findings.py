"""scripts/paper_findings.py and unimodal/shapes/findings.py: the pure helpers, then every finding
end to end with --quick on a tiny random model (32 px, 4x4 x 32 latents)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script

from unimodal.config import ConfigError
from unimodal.shapes.detect import Detection
from unimodal.shapes.findings import (FINDINGS, Experiment, FindingSettings, ToyVAE, class_names, compare, describe,
                                      finding_settings, generation_scores, is_correct, render_class_images,
                                      run_finding, single_object_world, steps_to_reach)
from unimodal.unified.testing import tiny_model


def _script():
    return load_script("paper_findings")


def _det(color: str, shape: str | None) -> Detection:
    return Detection(shape, color, (0.0, 0.0, 1.0, 1.0), 0.9, 10.0)


# --------------------------------------------------------------------------------- pure functions

def test_compare_needs_two_standard_errors():
    assert compare(0.5, 0.5, 100) == 0
    assert compare(0.6, 0.3, 100) == 1 and compare(0.3, 0.6, 100) == -1
    assert compare(0.55, 0.5, 100) == 0                 # 0.05 < 2 * sqrt(2 * .525 * .475 / 100) ~ 0.14
    assert compare(0.01, 0.0, 100) == 0                 # one lucky sample is never "clear"
    assert compare(0.1, 0.0, 100) == 1
    assert compare(1.0, 0.0, 1) == 0
    with pytest.raises(ValueError):
        compare(0.5, 0.5, 0)


def test_describe_names_the_winner_or_a_tie():
    assert "A (0.600) beats B (0.300)" in describe("A", 0.6, "B", 0.3, 100)
    assert "B (0.600) beats A (0.300)" in describe("A", 0.3, "B", 0.6, 100)
    assert "tie" in describe("A", 0.5, "B", 0.5, 100)


def test_steps_to_reach():
    curve = [[20, 0.0, 0.1], [40, 0.2, 0.3], [60, 0.1, 0.3]]
    assert steps_to_reach(curve, 0.15) == 40
    assert steps_to_reach(curve, 0.0) == 20
    assert steps_to_reach(curve, 0.5) is None
    assert steps_to_reach([], 0.1) is None


def test_is_correct_needs_exactly_one_object_of_the_class():
    assert is_correct([_det("red", "circle")], "red", "circle")
    assert not is_correct([_det("red", "square")], "red", "circle")
    assert not is_correct([_det("blue", "circle")], "red", "circle")
    assert not is_correct([_det("red", "circle"), _det("red", "circle")], "red", "circle")
    assert not is_correct([], "red", "circle")
    assert is_correct([_det("red", None)], "red")             # colour only
    assert not is_correct([_det("red", None)], "red", "circle")


@pytest.mark.parametrize("size", [32, 64])
def test_world_and_renders_score_perfectly(size):
    world = single_object_world(size)
    assert world.image_size == size and world.max_objects == 1
    classes = class_names(world)
    assert len(classes) == len(world.shapes) * len(world.colors) == 50
    assert classes[0] == (world.colors[0], world.shapes[0]) and classes[1] == (world.colors[1], world.shapes[0])
    images, labels = render_class_images(world, 60, "t", seed=3)
    assert images.shape == (60, 3, size, size) and 0 <= images.min() and images.max() <= 1
    assert labels.tolist() == [i % 50 for i in range(60)]
    again, _ = render_class_images(world, 60, "t", seed=3)
    assert torch.equal(images, again)
    assert not torch.equal(images, render_class_images(world, 60, "t", seed=4)[0])
    scores = generation_scores(images, labels, world)
    if size == 64:   # the detector's home resolution: every real render scores
        assert scores == {"accuracy": 1.0, "color_accuracy": 1.0}
    assert scores["color_accuracy"] == 1.0
    wrong = generation_scores(images, (labels + 1) % 50, world)   # the next class: the colour differs
    assert wrong["color_accuracy"] == 0.0 and wrong["accuracy"] == 0.0


def test_settings():
    assert finding_settings().steps == 400
    quick = finding_settings(True, steps=12, seed=5)
    assert quick.steps == 12 and quick.seed == 5 and quick.train_images < FindingSettings().train_images
    assert finding_settings(True, steps=None).steps == finding_settings(True).steps
    with pytest.raises(ConfigError, match="checkpoints"):
        FindingSettings(steps=3, checkpoints=5)
    with pytest.raises(ConfigError, match="noise_tau"):
        FindingSettings(noise_tau=0.0)


def test_toy_vae_shapes_and_errors(monkeypatch):
    torch.manual_seed(0)
    vae = ToyVAE(32, 4, 8).eval()
    x = torch.rand(2, 3, 32, 32)
    z = vae.encode(x)
    assert z.shape == (2, 16, 8)
    y = vae.decode(z)
    assert y.shape == (2, 3, 32, 32) and 0 <= y.min() and y.max() <= 1
    with pytest.raises(ValueError, match="grid"):
        ToyVAE(48, 4, 8)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match="pip install diffusers"):
        ToyVAE(32, 4, 8)


# ------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model().save_pretrained(path)
    return path


def test_training_and_sampling_are_deterministic():
    rae = tiny_model().rae
    settings = finding_settings(True, train_images=50, eval_images=4, steps=4, checkpoints=1)
    runs = []
    for _ in range(2):
        exp = Experiment.build(rae, settings, log=lambda m: None)
        model, loss = exp.train_dit(exp.train_latents, 1.0, "dit")
        runs.append((exp.train_latents, loss, exp.sample(model, 1.0)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1] and torch.equal(runs[0][2], runs[1][2])


@pytest.mark.parametrize("init", ["model", "scratch"])
def test_rae_decoder_training_copies_and_starts_where_told(init):
    rae = tiny_model().rae
    before = {k: v.clone() for k, v in rae.state_dict().items()}
    settings = finding_settings(True, train_images=20, eval_images=2, decoder_steps=1, decoder_init=init)
    exp = Experiment.build(rae, settings, log=lambda m: None)
    trained = exp.train_rae_decoder(0.5)
    assert all(torch.equal(v, rae.state_dict()[k]) for k, v in before.items())          # the model is untouched
    assert trained.config.decoder.noise_tau == trained.decoder.config.noise_tau == 0.5
    assert not trained.training and rae.config.decoder.noise_tau == 0.0
    old, new = rae.decoder.to_pixels.weight, trained.decoder.to_pixels.weight
    moved = (new - old).abs().max().item()
    assert (moved < 0.01) if init == "model" else (moved > 0.01)                        # one step vs a fresh init
    assert torch.equal(trained.encoder.pixel_mean, rae.encoder.pixel_mean)


def test_world_size_must_match_the_rae():
    with pytest.raises(ValueError, match="image_size=32"):
        Experiment.build(tiny_model().rae, finding_settings(True), world=single_object_world(64), log=lambda m: None)


def _check_accuracy(run: dict) -> None:
    assert 0.0 <= run["accuracy"] <= run["color_accuracy"] <= 1.0


def _check_conclusion(result: dict, a: float, b: float) -> None:
    verdict = compare(a, b, result["samples"])
    assert result["verdict"] == verdict
    assert ("tie" in result["conclusion"]) == (verdict == 0)
    assert ("beats" in result["conclusion"]) == (verdict != 0)
    if verdict:
        winner = max(a, b)
        assert f"({winner:.3f}) beats" in result["conclusion"]


@pytest.mark.parametrize("finding", FINDINGS)
def test_finding_quick_on_a_tiny_model(finding, tiny_dir, tmp_path, capsys):
    result = _script().main([finding, "--quick", "--model", str(tiny_dir), "--out", str(tmp_path)])
    out = capsys.readouterr()
    printed = json.loads(out.out.strip().splitlines()[-1])
    assert printed == result == json.loads((tmp_path / f"{finding}.json").read_text())
    assert result["finding"] == finding and result["model"] == str(tiny_dir)
    assert result["settings"] == finding_settings(True).to_dict()
    assert 0 < result["wall_seconds"] < 60
    assert result["samples"] == 50 * result["settings"]["samples_per_class"]
    assert isinstance(result["conclusion"], str) and result["conclusion"]
    assert "finding " + finding in out.err                  # progress goes to stderr
    assert list(tmp_path.glob("*.png"))                     # sample grids
    if finding == "shift":
        assert result["latent_shape"] == [16, 32]
        assert math.isclose(result["alpha"], math.sqrt(16 * 32 / 4096), rel_tol=1e-3)
        assert result["unshifted"]["alpha"] == 1.0 and result["shifted"]["alpha"] == result["alpha"]
        assert math.isclose(result["strong"]["alpha"], result["alpha"] * result["settings"]["shift_scale"],
                            rel_tol=1e-3)
        assert "alpha" in result["alpha_note"]
        for run in (result["shifted"], result["unshifted"], result["strong"]):
            _check_accuracy(run)
            assert math.isfinite(run["final_loss"]) and run["final_loss"] > 0
        assert math.isfinite(result["psnr"]) and 0 <= result["reconstruction_accuracy"] <= 1
        assert result["strong_verdict"] == compare(result["strong"]["color_accuracy"],
                                                   result["unshifted"]["color_accuracy"], result["samples"])
        assert result["verdict"] == compare(result["shifted"]["accuracy"], result["unshifted"]["accuracy"],
                                            result["samples"])
        # One sentence per (shifted run, measure), each a tie or a win.
        assert result["conclusion"].count(" tie ") + result["conclusion"].count(" beats ") == 4
    elif finding == "dh":
        dit, dh = result["dit"], result["dit_dh"]
        assert dh["params"] > dit["params"] > 0
        assert len(dh["widths"]) == 2 and dh["widths"][1] > dh["widths"][0] and dh["widths"][0] == dit["widths"][0]
        _check_accuracy(dit)
        _check_accuracy(dh)
        _check_conclusion(result, dh["accuracy"], dit["accuracy"])
        assert f"{dh['params'] / dit['params']:.2f}x the parameters" in result["conclusion"]
    elif finding == "noise":
        noisy, clean = result["noisy"], result["clean"]
        assert noisy["noise_tau"] == result["settings"]["noise_tau"] > 0 and clean["noise_tau"] == 0
        for run in (noisy, clean):
            _check_accuracy(run)
            assert math.isfinite(run["psnr"]) and run["psnr"] > 0
        assert math.isclose(result["psnr_change_db"], noisy["psnr"] - clean["psnr"], abs_tol=2e-3)
        assert ("costs" in result["conclusion"]) == (result["psnr_change_db"] < 0)
        _check_conclusion(result, noisy["accuracy"], clean["accuracy"])
    else:
        steps, every = result["settings"]["steps"], result["settings"]["steps"] // result["settings"]["checkpoints"]
        assert result["rae"]["latent_shape"] == [16, 32]
        assert result["vae"]["latent_shape"] == [16, result["settings"]["vae_channels"]]
        for name in ("rae", "vae"):
            curve = result[name]["curve"]
            assert [p[0] for p in curve] == list(range(every, steps + 1, every))
            assert all(0 <= p[1] <= p[2] <= 1 for p in curve)
        assert result["target_accuracy"] == result["vae"]["curve"][-1][1]
        for name, reached in result["steps_to_reach_vae_final"].items():
            assert reached == steps_to_reach(result[name]["curve"], result["target_accuracy"])
        assert result["steps_to_reach_vae_final"]["vae"] is not None    # the VAE reaches its own final value
        _check_conclusion(result, result["rae"]["curve"][-1][1], result["target_accuracy"])


def test_bad_finding_gives_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _script().main(["nonsense", "--quick"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in err and all(f in err for f in FINDINGS)
    with pytest.raises(ValueError, match="unknown finding 'nonsense'; choose one of: shift, dh, noise, vae"):
        run_finding("nonsense", tiny_model().rae, finding_settings(True))
