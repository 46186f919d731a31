"""`unimodal chat`: piped commands, the session folder, reopening, and replay to the same bytes."""
import argparse
import io
import json

import pytest
import torch
from PIL import Image

from unimodal.chat.engine import ChatEngine, replay
from unimodal.chat.repl import StatusLine, run_repl
from unimodal.chat.settings import ChatSettings
from unimodal.chat.store import SessionStore
from unimodal.commands import chat as chat_command
from unimodal.config import ConfigError
from unimodal.unified.model import UnifiedModel
from unimodal.unified.testing import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat") / "model"
    tiny_model(seed=0, num_inference_steps=2).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model(model_dir):
    return UnifiedModel.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pics") / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    return path


def _chat(argv, stdin_text, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin_text))
    parser = argparse.ArgumentParser(prog="unimodal")
    chat_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["chat", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr()


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.parent.name in ("images", "latents", "inputs")}


def test_piped_session_saves_reopens_and_replays_to_the_same_bytes(model_dir, picture, tmp_path, monkeypatch, capsys):
    session = tmp_path / "session"
    script = "\n".join([
        "/tokens 4",                         # short answers keep the test fast
        "/image a red square on blue",
        "what is in it?",
        "/best 3",
        "/critique",
        f"/ask {picture} what colour is this?",
        "/ask nothing-here.png hm",          # errors are shown, the chat goes on
        "/cfg -1",
        "/steps 0",
        "/bogus",
        "",
        "/history",
        "draw a blue square on red",
    ]) + "\n"                                # then end of input
    rc, out = _chat(["--model", str(model_dir), "--session", str(session), "--seed", "5"], script, monkeypatch, capsys)
    assert rc == 0
    text = out.out
    assert "image t0001-c0 for 'a red square on blue' (seed 5, 2 steps)" in text
    assert "best of 3 by P(yes):" in text and text.count("<- kept") == 1
    assert "critique of t0003-c" in text and "P(yes)" in text and "likelihood" in text
    assert "error: no such image: nothing-here.png" in text
    assert "error: guidance must be > 0" in text and "error: steps must be in [1, 1000]" in text
    assert "error: unknown command /bogus" in text
    assert "drawing" in out.err and "session saved in" in out.err     # progress goes to stderr

    data = json.loads((session / "session.json").read_text())
    kinds = [t["request"]["kind"] for t in data["turns"]]
    assert kinds == ["set", "image", "say", "best", "critique", "ask", "image"]   # errors are not turns
    first, best, crit = data["turns"][1], data["turns"][3], data["turns"][4]
    assert first["settings"]["seed"] == 5 and first["images"][0]["image"] == "images/t0001-c0.png"
    assert len(best["images"]) == 3 and sum(i["kept"] for i in best["images"]) == 1
    assert all(i["yes_prob"] is not None and i["likelihood"] is not None for i in best["images"])
    kept = next(i for i in best["images"] if i["kept"])
    assert crit["critique"]["image"] == f"t0003-c{kept['index']}"
    assert abs(crit["critique"]["yes_prob"] - kept["yes_prob"]) < 1e-5
    assert data["turns"][5]["input"] == "inputs/t0005.png"
    with Image.open(session / kept["image"]) as img:
        assert img.size == (32, 32)
    assert (session / "latents" / "t0001-c0.safetensors").is_file()

    # Reopen: settings and last image come back; a new context begins; flags are recorded turns.
    rc, out = _chat(["--session", str(session), "--num-inference-steps", "3"], "tell me more\n/critique\n/image a green square\n",
                    monkeypatch, capsys)
    assert rc == 0 and "critique of t0006-c0 against 'a blue square on red'" in out.out
    data = json.loads((session / "session.json").read_text())
    assert [t["context"] for t in data["turns"]][-4:] == [1, 1, 1, 1]
    assert data["turns"][7]["request"] == {"kind": "set", "name": "steps", "value": "3"}
    assert data["settings"]["num_inference_steps"] == 3 and data["settings"]["seed"] == 5

    replayed = tmp_path / "replayed"
    rc, out = _chat(["--replay", str(session), "--out", str(replayed)], "", monkeypatch, capsys)
    assert rc == 0 and "replayed 11 turns" in out.out
    original = _files(session)
    assert len([f for f in original if f.endswith(".png")]) >= 4
    assert _files(replayed) == original                       # byte-identical PNGs, latents and inputs
    again = json.loads((replayed / "session.json").read_text())
    assert [t["reply"] for t in again["turns"]] == [t["reply"] for t in data["turns"]]


def test_interrupted_turn_is_not_recorded_and_replay_still_matches(model, tmp_path, monkeypatch):
    from unimodal.unified import session as session_module

    store = SessionStore.create(tmp_path / "s", "tiny", ChatSettings().to_dict())
    engine = ChatEngine(model, settings=ChatSettings(tokens=4), store=store)
    assert not engine.handle("/image a red square on blue").error
    real = session_module.Session.assistant

    def interrupted(self, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session_module.Session, "assistant", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.handle("what is this?")                     # the user turn was fed, the reply never came
    monkeypatch.setattr(session_module.Session, "assistant", real)
    assert len(engine.turns) == 1 and engine.context == 1
    assert not engine.handle("what is this?").error
    assert [t["context"] for t in store.turns] == [0, 1]
    out = replay(model, SessionStore.open(tmp_path / "s"), SessionStore.create(tmp_path / "r", "tiny", {}))
    assert out.mismatched == []


def test_images_the_model_draws_in_a_reply_are_saved(model, tmp_path, monkeypatch):
    # A random tiny model never opens an image span by itself: push P(<|vision_start|>) up.
    bonus = torch.zeros(model.llm.config.vocab_size)
    bonus[model.chat.image_start] = 100.0
    real_logits = model.logits
    monkeypatch.setattr(model, "logits", lambda hidden: real_logits(hidden) + bonus.to(hidden.dtype))
    store = SessionStore.create(tmp_path / "s", "tiny", ChatSettings().to_dict())
    engine = ChatEngine(model, settings=ChatSettings(tokens=4), store=store)
    result = engine.handle("show me a red square")
    assert not result.error and len(result.images) == 1 and "[drew t0000-c0 -> images/t0000-c0.png]" in result.text
    rec = result.record.images[0]
    assert rec.prompt == "show me a red square" and (tmp_path / "s" / rec.latent).is_file()
    crit = engine.handle("/critique")                       # the drawn image is now the last image
    assert crit.record.critique["image"] == "t0000-c0"
    out = replay(model, SessionStore.open(tmp_path / "s"), SessionStore.create(tmp_path / "r", "tiny", {}))
    assert out.mismatched == [] and _files(tmp_path / "r") == _files(tmp_path / "s")


def test_repl_end_of_input_and_ctrl_c(model, tmp_path):
    engine = ChatEngine(model)                              # no store: nothing written
    out, err = io.StringIO(), io.StringIO()
    assert run_repl(engine, io.StringIO("/help\n/seed 4\n/seed\n/quit\n/image never run\n"), out, StatusLine(err)) == 0
    assert "/best N" in out.getvalue() and "seed = 4" in out.getvalue() and out.getvalue().rstrip().endswith("bye")
    assert len(engine.turns) == 1

    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    assert run_repl(engine, CtrlC(), io.StringIO(), StatusLine(io.StringIO())) == 0


def test_session_folder_errors(model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder or a chat session"):
        _chat(["--model", str(model_dir), "--session", str(tmp_path / "busy")], "", monkeypatch, capsys)
    with pytest.raises(FileNotFoundError, match="is not a chat session"):
        _chat(["--replay", str(tmp_path / "busy"), "--out", str(tmp_path / "o")], "", monkeypatch, capsys)
    monkeypatch.delenv("UNIMODAL_MODEL", raising=False)
    monkeypatch.setattr("unimodal.shipped.SHIPPED_MODEL_DIR", tmp_path / "no-shipped-model")
    with pytest.raises(FileNotFoundError, match="pass --model DIR"):
        _chat(["--session", str(tmp_path / "new")], "", monkeypatch, capsys)


@pytest.mark.parametrize("field, bad", [("input", "../outside.png"), ("input", "ABS"),
                                        ("latent", "../outside.safetensors"), ("image", "link/outside.png"),
                                        ("input", None)])
def test_session_paths_outside_the_folder_are_refused(model, tmp_path, monkeypatch, capsys, field, bad):
    store = SessionStore.create(tmp_path / "s", "tiny", ChatSettings().to_dict())
    engine = ChatEngine(model, settings=ChatSettings(tokens=2), store=store)
    assert not engine.handle("/image a red square on blue").error
    picture = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(picture)
    assert not engine.handle(f"/ask {picture} what is this?").error
    latent = tmp_path / "s" / store.turns[0]["images"][0]["latent"]
    (tmp_path / "outside.safetensors").write_bytes(latent.read_bytes())
    (tmp_path / "s" / "link").symlink_to(tmp_path)              # a link inside the folder leading out of it
    data = json.loads((tmp_path / "s" / "session.json").read_text())
    bad = str(picture) if bad == "ABS" else bad
    if field == "input":
        data["turns"][1]["input"] = bad                        # None: the /ask turn loses its copy
    else:
        data["turns"][0]["images"][0][field] = bad
    (tmp_path / "s" / "session.json").write_text(json.dumps(data))

    message = rf"{tmp_path / 's' / 'session.json'}: .*outside the session folder" if bad else "has no copy of it"
    with pytest.raises(ConfigError, match=message) as err:
        SessionStore.open(tmp_path / "s")
    assert "\n" not in str(err.value) and (bad is None or repr(bad) in str(err.value))
    for argv in (["--session", str(tmp_path / "s")], ["--replay", str(tmp_path / "s"), "--out", str(tmp_path / "r")]):
        with pytest.raises(ConfigError, match=message):       # refused before anything is read or copied
            _chat(argv, "", monkeypatch, capsys)
    assert not (tmp_path / "r").exists()
