"""The conditioning probe: its two statistics on conditions built to a known answer, and the probe on
the shipped model (script included) on a small slice of the world."""
import json

import pytest
import torch
from conftest import load_script

from unimodal.shapes.conditioning import centroid_accuracy, variance_share
from unimodal.shipped import SHIPPED_MODEL_DIR

COLOURS, SHAPES = 4, 3


def grid():
    colour = torch.arange(COLOURS).repeat_interleave(SHAPES)
    shape = torch.arange(SHAPES).repeat(COLOURS)
    return colour, shape


def test_variance_share_splits_the_spread_between_the_words():
    colour, shape = grid()
    g = torch.Generator().manual_seed(0)
    colour_vecs, shape_vecs = torch.randn(COLOURS, 5, 8, generator=g), torch.randn(SHAPES, 5, 8, generator=g)
    only_colour = 7.0 + colour_vecs[colour]                      # a large constant part changes nothing
    assert variance_share(only_colour, colour) == pytest.approx(1.0)
    assert variance_share(only_colour, shape) == pytest.approx(0.0, abs=1e-6)
    both = colour_vecs[colour] + 2 * shape_vecs[shape]           # additive: the shares sum to 1
    total = variance_share(both, colour) + variance_share(both, shape)
    assert total == pytest.approx(1.0, abs=1e-5)
    assert variance_share(both, shape) > variance_share(both, colour)
    assert variance_share(torch.ones(COLOURS * SHAPES, 3), colour) == 0.0


def test_centroid_accuracy_reads_a_weak_signal_beside_a_large_constant_on_unseen_combinations():
    colour, shape = grid()
    g = torch.Generator().manual_seed(1)
    signal = 1e-3 * torch.randn(COLOURS, 16, generator=g)[colour]
    cond = 50.0 + signal + 1e-4 * torch.randn(SHAPES, 16, generator=g)[shape]
    fit = shape < SHAPES - 1
    assert centroid_accuracy(cond, colour, fit) == 1.0
    noise = torch.randn(COLOURS * SHAPES, 16, generator=g)
    assert centroid_accuracy(noise, colour, fit) < 1.0


@pytest.mark.skipif(not (SHIPPED_MODEL_DIR / "model.safetensors").is_file(), reason="no shipped model in models/shapes")
def test_probe_script_on_the_shipped_model(tmp_path, capsys):
    import yaml

    main = load_script("probe_conditioning").main
    world = tmp_path / "world.yaml"
    world.write_text(yaml.safe_dump({"shapes": ["circle", "square", "star"], "colors": ["red", "blue"]}))
    report = main(["--shapes-config", str(world), "--amplify", "1", "4"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert report["prompts"] == 6
    assert 0.0 <= report["colour_share_of_variance"] <= 1.0 and report["cond_between_prompt_std"] > 0
    assert [s["amplify"] for s in report["samples"]] == [1.0, 4.0]
    with pytest.raises(SystemExit):
        main(["--amplify", "0"])
