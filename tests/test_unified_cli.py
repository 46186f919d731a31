"""The generate / caption / verify commands: outputs written, never overwritten, readable back."""
import argparse
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from unimodal.cli import main
from unimodal.commands import caption, generate, verify
from unimodal.config import InputError
from unimodal.shipped import SHIPPED_MODEL_DIR
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
            "--num-inference-steps", "2", "--seed", "7", "--out", str(tmp_path), "--device", "cpu"]
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
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no model at .*missing"):
        _run(["verify", str(tmp_path / "x.png"), "p", "--model", str(tmp_path / "missing")])


def _main(argv, capsys) -> tuple[int, str]:
    """`unimodal ARGV` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:                               # argparse's usage errors
        rc = e.code
    return rc, capsys.readouterr().err


def test_bad_generate_requests_are_one_line(model_dir, tmp_path, capsys):
    truncated = tmp_path / "truncated-model"
    shutil.copytree(model_dir, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    not_utf8 = b"a red \xff square".decode("utf-8", "surrogateescape")     # how Python hands such argv over
    cases = [([not_utf8], 2, "argument PROMPT: not valid UTF-8"),
             ([""], 2, "argument PROMPT: must not be empty"),
             (["   "], 2, "argument PROMPT: must not be empty"),
             (["a red square", "--n", "0"], 2, "argument --n: must be in [1, 64], got 0"),
             (["a red square", "--n", "-1"], 2, "argument --n: must be in [1, 64], got -1"),
             (["a red square", "--n", "100000"], 2, "argument --n: must be in [1, 64], got 100000"),
             (["a red square", "--n", "2", "--keep", "3"], 2, "--keep 3 is more than --n 2"),
             (["a red square", "--num-inference-steps", "0"], 2, "argument --num-inference-steps: must be in [1, 1000], got 0"),
             (["a red square", "--guidance-scale", "0"], 2, "argument --guidance-scale: must be a number > 0"),
             (["a red square", "--steps", "0"], 2, "argument --steps: must be in [1, 1000], got 0"),   # old flags parse
             (["a red square", "--cfg", "0"], 2, "argument --cfg: must be a number > 0"),
             (["a red square " * 400], 1, "tokens; this model takes at most 967 (its LLM has 1024 positions)"),
             (["a red square", "--model", str(truncated)], 1,
              f"{truncated / 'model.safetensors'} is not a complete safetensors file")]
    for extra, status, message in cases:
        argv = ["generate", *extra, "--out", str(tmp_path / "out"), "--device", "cpu"]
        if "--model" not in extra:
            argv += ["--model", str(model_dir)]
        rc, err = _main(argv, capsys)
        assert rc == status and message in err, (extra[:3], rc, err)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("unimodal generate: error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="not a complete safetensors file"):
        main(["--debug", "generate", "a red square", "--model", str(truncated)])


@pytest.mark.parametrize("argv", [["sample", "--model", "m", "--rae", "r", "--num", "4", "--out", "o.npz"],
                                  ["eval", "shapes", "--out", "o"], ["chat"], ["demo"], ["generate", "p"]])
def test_step_and_candidate_flags_are_bounded_everywhere(argv, capsys):
    steps = "--num-inference-steps"
    for flag, value in [(steps, "0"), (steps, "1001"), ("--n" if argv[0] != "sample" else "--num", "0"),
                        ("--guidance-scale", "-1")]:
        if argv[0] == "demo" and flag == "--guidance-scale":
            continue                                      # demo draws with the model's own guidance
        rc, err = _main(argv + [flag, value], capsys)
        assert rc == 2 and f"argument {flag}: must be" in err, (flag, value, err)


@pytest.mark.parametrize("command, old, new", [
    (["generate", "p"], "--steps", "num_inference_steps"), (["generate", "p"], "--cfg", "guidance_scale"),
    (["chat"], "--steps", "num_inference_steps"), (["chat"], "--cfg", "guidance_scale"),
    (["demo"], "--steps", "num_inference_steps"),
    (["sample", "--model", "m", "--rae", "r", "--num", "4", "--out", "o.npz"], "--steps", "num_inference_steps"),
    (["sample", "--model", "m", "--rae", "r", "--num", "4", "--out", "o.npz"], "--cfg-scale", "guidance_scale"),
    (["eval", "shapes", "--out", "o"], "--num-steps", "num_inference_steps"),
    (["eval", "shapes", "--out", "o"], "--cfg-scale", "guidance_scale")])
def test_flags_of_earlier_releases_still_parse_unlisted(command, old, new, capsys):
    from unimodal.cli import build_parser

    assert getattr(build_parser().parse_args(command + [old, "3"]), new) == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(command[:2 if command[0] == "eval" else 1] + ["--help"])
    shown = capsys.readouterr().out
    assert "--" + new.replace("_", "-") in shown and old + " " not in shown and old + "\n" not in shown


@pytest.mark.skipif(not (SHIPPED_MODEL_DIR / "config.json").is_file(), reason="no shipped model in models/shapes")
def test_generate_help_states_the_shipped_models_prompt_limit(capsys):
    from unimodal.text.tokenizer import load_tokenizer
    from unimodal.unified.chat import ChatFormat
    from unimodal.unified.config import UnifiedConfig

    cfg = UnifiedConfig.load_json(SHIPPED_MODEL_DIR / "config.json")
    chat = ChatFormat(load_tokenizer(SHIPPED_MODEL_DIR)[0], cfg.num_latent_tokens, cfg.system_prompt, cfg.generate_template)
    limit = chat.text_room(cfg.llm["max_position_embeddings"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert f"({limit} for models/shapes)" in " ".join(capsys.readouterr().out.split())


def test_an_unknown_option_shows_the_subcommands_usage(capsys):
    for argv, prog in [(["generate", "a red square", "--bogus"], "unimodal generate"),
                       (["train", "dit", "--config", "x.yaml", "--bogus"], "unimodal train dit"),
                       (["eval", "geneval", "--metadata", "m", "--out", "o", "--bogus=1"], "unimodal eval geneval")]:
        rc, err = _main(argv, capsys)
        assert rc == 2 and f"usage: {prog} " in err and f"{prog}: error: unrecognized arguments: --bogus" in err, err


def test_a_mistyped_override_is_named_as_an_option(capsys):
    config = str(Path(__file__).resolve().parents[1] / "configs" / "dit_tiny.yaml")
    for override, message in [("--train.totl_steps=5", "no 'totl_steps' in train"),
                              ("totl_steps=5", "no 'totl_steps';")]:
        rc, err = _main(["train", "dit", "--config", config, override], capsys)
        assert rc == 2 and f"unknown option or override key '{override}': {message}" in err, err
        assert "yaml" not in err


def test_eval_defaults_to_the_model_every_command_uses(model_dir, monkeypatch, capsys):
    from unimodal.cli import build_parser
    from unimodal.commands import eval as eval_command

    monkeypatch.setenv("UNIMODAL_MODEL", str(model_dir))
    for argv in (["eval", "geneval", "--metadata", "m", "--out", "o"], ["eval", "shapes", "--out", "o"]):
        assert eval_command._options(build_parser().parse_args(argv)).model == str(model_dir)
    for argv in (["chat", "--help"], ["serve", "--help"], ["eval", "geneval", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "else the shipped Shapes model" in " ".join(capsys.readouterr().out.split())


def test_eval_and_generate_default_to_the_models_judge(model_dir, tmp_path, capsys):
    from unimodal.cli import build_parser
    from unimodal.commands import eval as eval_command
    from unimodal.unified.model import UnifiedModel

    likes = tmp_path / "likelihood_model"
    m = UnifiedModel.from_pretrained(model_dir)
    m.config = m.config.replace(judge="likelihood")
    m.save_pretrained(likes)
    parse = build_parser().parse_args
    for d, want in ((model_dir, "yes_prob"), (likes, "likelihood")):
        assert eval_command._options(parse(["eval", "shapes", "--out", "o", "--model", str(d)])).judge == want
    named = parse(["eval", "shapes", "--out", "o", "--model", str(likes), "--judge", "yes_prob"])
    assert eval_command._options(named).judge == "yes_prob"
    # --check-only needs no model: the judge the run recorded.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "generation.json").write_text(json.dumps({"judge": "likelihood"}))
    assert eval_command._options(parse(["eval", "shapes", "--out", str(tmp_path / "run"), "--check-only"])).judge == "likelihood"

    assert _run(["generate", "a red square on blue", "--model", str(likes), "--n", "3", "--keep", "1",
                 "--num-inference-steps", "2", "--out", str(tmp_path / "gen"), "--device", "cpu"]) == 0
    made = json.loads((tmp_path / "gen" / "a-red-square-on-blue-seed0.json").read_text())
    scores = [c["likelihood"] for c in made["candidates"]]
    assert made["judge"] == "likelihood" and scores == sorted(scores, reverse=True)
    assert _run(["generate", "a red square on blue", "--model", str(likes), "--n", "3", "--judge", "yes_prob",
                 "--verify-on", "decoded", "--num-inference-steps", "2", "--out", str(tmp_path / "dec"),
                 "--device", "cpu"]) == 0
    dec = json.loads((tmp_path / "dec" / "a-red-square-on-blue-seed0.json").read_text())
    assert (made["verify_on"], dec["verify_on"], dec["judge"]) == ("latent", "decoded", "yes_prob")
    by_seed = {c["seed"]: c["likelihood"] for c in made["candidates"]}
    assert all(abs(by_seed[c["seed"]] - c["likelihood"]) > 1e-6 for c in dec["candidates"])   # another reading
