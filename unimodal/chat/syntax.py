"""The chat command syntax: one line of input -> a `Request`.

    /image PROMPT          draw PROMPT (also a line starting "draw", "paint" or "generate")
    /best N                redraw the last prompt as best-of-N, keeping the candidate the model
                           itself judges best (P(yes) to "Does this image align with the prompt?")
    /critique [PROMPT]     judge the last image against its prompt (or PROMPT): P(yes), the prompt's
                           mean token log-likelihood as its description, and the model's own caption
    /ask PATH [QUESTION]   ask about an image file (quote a PATH with spaces: /ask "my pic.png" ...)
    TEXT                   any other line is a message to the model, about the last image if any
    /seed S  /steps T  /guidance W  /n N  /tokens K
                           settings (no value: show it; "default" for steps / guidance: the model's)
    /settings  /history  /help  /quit
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Literal

HELP = __doc__.split("\n\n", 1)[1].rstrip()

Kind = Literal["image", "best", "critique", "ask", "say", "set", "show", "history", "help", "quit"]
# Setting command word -> its ChatSettings field. The words stay short to type; /cfg, the word of
# earlier releases, still works and replays the sessions they recorded.
SETTINGS = {"seed": "seed", "steps": "num_inference_steps", "guidance": "guidance_scale", "n": "n", "tokens": "tokens"}
SETTING_NAMES = tuple(SETTINGS)
_SETTING_ALIASES = {"cfg": "guidance"}
_DRAW_WORDS = re.compile(r"^(draw|paint|generate)(\s+me)?\b[\s:,]*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Request:
    kind: Kind
    text: str = ""                   # prompt, question or message
    path: str | None = None          # /ask: the image file
    n: int | None = None             # /best: candidates
    name: str | None = None          # /set: setting name
    value: str | None = None         # /set: its new value (None = show)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, d: dict) -> "Request":
        return cls(**d)


def _positive_int(text: str, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {text!r}") from None
    if v < 1:
        raise ValueError(f"{what} must be >= 1, got {v}")
    return v


def _split_path(rest: str) -> tuple[str, str]:
    """'PATH question' or '"PATH with spaces" question' -> (path, question)."""
    if rest[:1] in ("'", '"'):
        end = rest.find(rest[0], 1)
        if end < 0:
            raise ValueError(f"unclosed quote in {rest!r}")
        return rest[1:end], rest[end + 1:].strip()
    path, _, question = rest.partition(" ")
    return path, question.strip()


def parse_line(line: str) -> Request | None:
    """One input line -> a Request; None for a blank line. Raises ValueError with a usage message."""
    line = line.strip()
    if not line:
        return None
    if not line.startswith("/"):
        m = _DRAW_WORDS.match(line)
        if m and line[m.end():].strip():
            return Request("image", text=line[m.end():].strip())
        return Request("say", text=line)
    cmd, _, rest = line[1:].partition(" ")
    cmd, rest = cmd.lower(), rest.strip()
    if cmd in ("image", "draw", "img"):
        if not rest:
            raise ValueError("usage: /image PROMPT")
        return Request("image", text=rest)
    if cmd == "best":
        if not rest:
            raise ValueError("usage: /best N (redraw the last prompt as best-of-N)")
        return Request("best", n=_positive_int(rest, "N"))
    if cmd == "critique":
        return Request("critique", text=rest)
    if cmd == "ask":
        if not rest:
            raise ValueError("usage: /ask PATH [QUESTION]")
        path, question = _split_path(rest)
        return Request("ask", text=question, path=path)
    if cmd in SETTINGS or cmd in _SETTING_ALIASES:
        return Request("set", name=_SETTING_ALIASES.get(cmd, cmd), value=rest or None)
    if cmd in ("settings", "set"):
        if rest:  # "/set seed 3" as an alias of "/seed 3"
            parts = shlex.split(rest)
            name = _SETTING_ALIASES.get(parts[0], parts[0])
            if name not in SETTINGS or len(parts) > 2:
                raise ValueError(f"usage: /set NAME [VALUE] with NAME one of {', '.join(SETTING_NAMES)}")
            return Request("set", name=name, value=parts[1] if len(parts) > 1 else None)
        return Request("show")
    if cmd == "history":
        return Request("history")
    if cmd in ("help", "?"):
        return Request("help")
    if cmd in ("quit", "exit", "q"):
        return Request("quit")
    raise ValueError(f"unknown command /{cmd}; /help lists the commands")


def setting_field(name: str) -> str:
    """The ChatSettings field of a setting command word (ValueError for an unknown one)."""
    field = SETTINGS.get(_SETTING_ALIASES.get(name, name))
    if field is None:
        raise ValueError(f"unknown setting {name!r}; settings are {', '.join(SETTING_NAMES)}")
    return field


def apply_setting(settings, name: str, value: str):
    """A new ChatSettings with the setting word `name` set from its text `value` (ConfigError /
    ValueError if bad)."""
    field = setting_field(name)
    if field in ("num_inference_steps", "guidance_scale") and value.lower() in ("default", "none"):
        return settings.replace(**{field: None})
    try:
        parsed = float(value) if field == "guidance_scale" else int(value)
    except ValueError:
        kind = "a number" if field == "guidance_scale" else "a whole number"
        raise ValueError(f"{name} must be {kind}, got {value!r}") from None
    return settings.replace(**{field: parsed})
