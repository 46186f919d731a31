"""The chat command syntax: one line of input -> a `Request`.

    /image PROMPT          draw PROMPT (also a line starting "draw", "paint" or "generate")
    /best N                redraw the last prompt as best-of-N, keeping the candidate the model
                           itself judges best (P(yes) to "Does this image align with the prompt?")
    /critique [PROMPT]     judge the last image against its prompt (or PROMPT): P(yes), the prompt's
                           mean token log-likelihood as its description, and the model's own caption
    /ask PATH [QUESTION]   ask about an image file (quote a PATH with spaces: /ask "my pic.png" ...)
    TEXT                   any other line is a message to the model, about the last image if any
    /seed S  /steps T  /cfg W  /n N  /tokens K
                           settings (no value: show it; "default" for steps / cfg: the model's)
    /settings  /history  /help  /quit
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Literal

HELP = __doc__.split("\n\n", 1)[1].rstrip()

Kind = Literal["image", "best", "critique", "ask", "say", "set", "show", "history", "help", "quit"]
SETTING_NAMES = ("seed", "steps", "cfg", "n", "tokens")
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
    if cmd in SETTING_NAMES:
        return Request("set", name=cmd, value=rest or None)
    if cmd in ("settings", "set"):
        if rest:  # "/set seed 3" as an alias of "/seed 3"
            parts = shlex.split(rest)
            if parts[0] not in SETTING_NAMES or len(parts) > 2:
                raise ValueError(f"usage: /set NAME [VALUE] with NAME one of {', '.join(SETTING_NAMES)}")
            return Request("set", name=parts[0], value=parts[1] if len(parts) > 1 else None)
        return Request("show")
    if cmd == "history":
        return Request("history")
    if cmd in ("help", "?"):
        return Request("help")
    if cmd in ("quit", "exit", "q"):
        return Request("quit")
    raise ValueError(f"unknown command /{cmd}; /help lists the commands")


def apply_setting(settings, name: str, value: str):
    """A new ChatSettings with `name` set from its text `value` (ConfigError / ValueError if bad)."""
    if name not in SETTING_NAMES:
        raise ValueError(f"unknown setting {name!r}; settings are {', '.join(SETTING_NAMES)}")
    if name in ("steps", "cfg") and value.lower() in ("default", "none"):
        return settings.replace(**{name: None})
    try:
        parsed = float(value) if name == "cfg" else int(value)
    except ValueError:
        kind = "a number" if name == "cfg" else "a whole number"
        raise ValueError(f"{name} must be {kind}, got {value!r}") from None
    return settings.replace(**{name: parsed})
