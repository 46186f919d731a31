"""The chat command syntax and the chat settings / server limits (no model)."""
import pytest

from unimodal.chat.settings import ChatSettings, ServeLimits
from unimodal.shipped import resolve_model_dir
from unimodal.chat.syntax import HELP, Request, apply_setting, parse_line
from unimodal.config import ConfigError


@pytest.mark.parametrize("line, expected", [
    ("/image a red square", Request("image", text="a red square")),
    ("draw a red square on blue", Request("image", text="a red square on blue")),
    ("Paint me: a cat", Request("image", text="a cat")),
    ("drawing is fun", Request("say", text="drawing is fun")),     # "draw" must be a word of its own
    ("draw meatballs", Request("image", text="meatballs")),
    ("draw", Request("say", text="draw")),
    ("what colour is it?", Request("say", text="what colour is it?")),
    ("/best 4", Request("best", n=4)),
    ("/critique", Request("critique")),
    ("/critique a blue square", Request("critique", text="a blue square")),
    ("/ask pic.png what is it?", Request("ask", path="pic.png", text="what is it?")),
    ('/ask "my pic.png" what\'s that?', Request("ask", path="my pic.png", text="what's that?")),
    ("/ask pic.png", Request("ask", path="pic.png")),
    ("/seed 3", Request("set", name="seed", value="3")),
    ("/steps", Request("set", name="steps")),
    ("/guidance 2", Request("set", name="guidance", value="2")),
    ("/cfg 2", Request("set", name="guidance", value="2")),          # the word of earlier releases
    ("/set cfg 2.5", Request("set", name="guidance", value="2.5")),
    ("/settings", Request("show")),
    ("/history", Request("history")),
    ("/HELP", Request("help")),
    ("/quit", Request("quit")),
])
def test_parse_line(line, expected):
    assert parse_line(line) == expected
    assert Request.from_dict(expected.to_dict()) == expected


@pytest.mark.parametrize("line, match", [
    ("/image", "usage: /image PROMPT"), ("/best", "usage: /best N"), ("/best x", "whole number"),
    ("/best 0", ">= 1"), ("/ask", "usage: /ask"), ('/ask "pic.png what', "unclosed quote"),
    ("/frobnicate", "unknown command /frobnicate"), ("/set color 3", "usage: /set NAME"),
])
def test_bad_lines_say_what_to_type(line, match):
    with pytest.raises(ValueError, match=match):
        parse_line(line)


def test_blank_line_is_nothing_and_help_lists_commands():
    assert parse_line("   ") is None
    for cmd in ("/image", "/best", "/critique", "/ask", "/seed", "/quit"):
        assert cmd in HELP


def test_settings_are_checked():
    s = ChatSettings()
    assert apply_setting(s, "steps", "2").num_inference_steps == 2
    assert apply_setting(apply_setting(s, "steps", "2"), "steps", "default").num_inference_steps is None
    assert apply_setting(s, "guidance", "1.5").guidance_scale == 1.5
    assert apply_setting(s, "cfg", "1.5").guidance_scale == 1.5      # a session recorded before replays
    with pytest.raises(ValueError, match="whole number"):
        apply_setting(s, "seed", "1.5")
    with pytest.raises(ConfigError, match=r"steps must be in \[1, 1000\]"):
        apply_setting(s, "steps", "0")
    with pytest.raises(ConfigError, match="guidance must be > 0"):
        apply_setting(s, "guidance", "nan")
    with pytest.raises(ConfigError, match="guidance must be > 0"):     # 0 would drop the prompt altogether
        apply_setting(s, "guidance", "0")
    with pytest.raises(ConfigError, match=r"n must be in \[1, 64\]"):   # bounded without a server too
        apply_setting(s, "n", "100000")
    # session.json and `--limit` keys written before the diffusers names still read.
    assert ChatSettings.from_dict({"steps": 3, "cfg": 2.0}) == ChatSettings(num_inference_steps=3, guidance_scale=2.0)
    assert ServeLimits.from_dict({"max_steps": 5, "max_cfg": 4.0}).max_num_inference_steps == 5
    limits = ServeLimits(max_n=4)
    with pytest.raises(ValueError, match="at most 4"):
        limits.check(s.replace(n=5))
    with pytest.raises(ConfigError, match="max_n must be >= 1"):
        ServeLimits(max_n=0)


def test_model_defaults_to_the_shipped_one_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIMODAL_MODEL", raising=False)
    monkeypatch.setattr("unimodal.shipped.SHIPPED_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="pass --model DIR"):
        resolve_model_dir(None)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    monkeypatch.setattr("unimodal.shipped.SHIPPED_MODEL_DIR", tmp_path)
    assert resolve_model_dir(None) == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("UNIMODAL_MODEL", str(other))
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_model_dir(None)  # the environment wins, and it names a directory without a model