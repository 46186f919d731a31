"""The generate / caption / verify commands: outputs written, never overwritten, readable back."""
import argparse
import json

import pytest
from safetensors.torch import load_file

from unimodal.commands import caption, generate, verify
from unimodal.unified.testing import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "model"
    tiny_model(seed=0).save_pretrained(d)
    return d


def _run(argv):
    parser = argparse.ArgumentParser(prog="unimodal")
    sub = parser.add_subparsers(dest="command")
    for mod in (generate, caption, verify):
        mod.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_generate_writes_unique_outputs(model_dir, tmp_path, capsys):
    argv = ["generate", "a red square on blue", "--model", str(model_dir), "--n", "3", "--keep", "2",
            "--steps", "2", "--seed", "7", "--out", str(tmp_path), "--device", "cpu"]
    assert _run(argv) == 0
    assert _run(argv) == 0                                # same command again: new names, nothing overwritten
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.endswith(".png")]) == 4
    assert len([n for n in names if n.endswith(".safetensors")]) == 4
    assert "a-red-square-on-blue-seed7.json" in names and "a-red-square-on-blue-seed7-1.json" in names
    first = json.loads((tmp_path / "a-red-square-on-blue-seed7.json").read_text())
    second = json.loads((tmp_path / "a-red-square-on-blue-seed7-1.json").read_text())
    assert [c["kept"] for c in first["candidates"]] == [True, True, False]
    assert first["candidates"][0]["image"] != second["candidates"][0]["image"]
    kept = first["candidates"][0]
    assert load_file(str(tmp_path / kept["latent"]))["latent"].shape == (16, 32)
    # caption and verify read the written image and latent back
    capsys.readouterr()
    assert _run(["caption", str(tmp_path / kept["image"]), str(tmp_path / kept["latent"]), "--model", str(model_dir),
                 "--max-new-tokens", "3", "--json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["input"] for l in lines] == [str(tmp_path / kept["image"]), str(tmp_path / kept["latent"])]
    assert _run(["verify", str(tmp_path / kept["latent"]), "a red square on blue", "--model", str(model_dir)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert abs(scores["yes_prob"] - kept["yes_prob"]) < 1e-5


def test_missing_inputs_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image"):
        _run(["caption", str(tmp_path / "nope.png"), "--model", str(model_dir)])
    with pytest.raises(FileNotFoundError, match="no model at .*missing"):
        _run(["verify", "x.png", "p", "--model", str(tmp_path / "missing")])
