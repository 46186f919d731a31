"""`ChatBackend`: what the web UI does, in plain Python (the Gradio layer in `webapp` only wires it).

One model in the server process serves many conversations; each conversation is a `ChatEngine`
kept in memory (the oldest is dropped beyond `ServeLimits.max_conversations`) and, with a
`sessions_dir`, saved there like a `unimodal chat` session. Every request is checked against
`ServeLimits` first: a bad one gets a message back and changes nothing. A lock runs one request
at a time on the model (Gradio's queue already does; the lock keeps direct callers safe too).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import threading
import uuid
from pathlib import Path
from typing import Callable

from unimodal.chat.engine import USER_ERRORS, ChatEngine, ImageRecord, TurnResult
from unimodal.chat.settings import ChatSettings, ServeLimits
from unimodal.chat.store import SessionStore
from unimodal.chat.syntax import Request, parse_line

WARN = "\u26a0\ufe0f "   # the prefix of a message that reports a refused request
MAX_MESSAGES = 400      # the chat pane shows this many latest messages


@dataclasses.dataclass
class GalleryItem:
    image: object                  # PIL image
    caption: str


@dataclasses.dataclass
class Reply:
    """One request's outcome: the conversation's messages and gallery, both whole."""
    messages: list[dict]           # [{"role": "user" | "assistant", "content": str}], oldest first
    gallery: list[GalleryItem]
    error: str | None = None       # the refusal or failure message (also the last message)


def gallery_caption(rec: ImageRecord) -> str:
    parts = [rec.name]
    if rec.yes_prob is not None:
        parts.append(f"P(yes) {rec.yes_prob:.3f}")
    if rec.likelihood is not None:
        parts.append(f"likelihood {rec.likelihood:.2f}")
    caption = f"{rec.prompt!r}"
    if rec.caption is not None:
        caption += f" \u2014 model says: {rec.caption!r}" if rec.caption else " \u2014 model says nothing"
    return " \u00b7 ".join(parts) + "\n" + caption


class _Conversation:
    def __init__(self, engine: ChatEngine):
        self.engine = engine
        self.messages: list[dict] = []
        self.gallery: list[GalleryItem] = []

    def add(self, user: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        del self.messages[:-MAX_MESSAGES]


class ChatBackend:
    def __init__(self, model, *, limits: ServeLimits | None = None, sessions_dir: str | os.PathLike | None = None,
                 model_name: str = ""):
        self.model = model
        self.limits = limits or ServeLimits()
        self.sessions_dir = Path(sessions_dir) if sessions_dir is not None else None
        self.model_name = model_name
        self.lock = threading.Lock()
        self._conversations: collections.OrderedDict[str, _Conversation] = collections.OrderedDict()

    # ------------------------------------------------------------------ defaults for the UI
    def default_settings(self) -> ChatSettings:
        config, lim = self.model.config, self.limits
        return ChatSettings(num_inference_steps=min(config.num_inference_steps, lim.max_num_inference_steps),
                            guidance_scale=min(config.guidance_scale, lim.max_guidance_scale),
                            tokens=min(64, lim.max_tokens), auto_critique=True)

    # ------------------------------------------------------------------ conversations
    def new_conversation(self) -> str:
        return uuid.uuid4().hex

    def _conversation(self, cid: str) -> _Conversation:
        if not isinstance(cid, str) or not cid or len(cid) > 64 or not cid.isalnum():
            raise ValueError("invalid conversation id")
        conv = self._conversations.get(cid)
        if conv is None:
            settings = self.default_settings()
            folder = None if self.sessions_dir is None else self.sessions_dir / cid
            if folder is not None and SessionStore.is_session(folder):   # dropped from memory earlier: continue it
                engine = ChatEngine.resume(self.model, SessionStore.open(folder), limits=self.limits)
            else:
                store = None if folder is None else SessionStore.create(folder, self.model_name, settings.to_dict())
                engine = ChatEngine(self.model, settings=settings, store=store, limits=self.limits)
            conv = _Conversation(engine)
            self._conversations[cid] = conv
            while len(self._conversations) > self.limits.max_conversations:
                self._conversations.popitem(last=False)
        self._conversations.move_to_end(cid)
        return conv

    def gallery(self, cid: str) -> list[GalleryItem]:
        conv = self._conversations.get(cid)
        return list(conv.gallery) if conv else []

    # ------------------------------------------------------------------ checks
    def _settings(self, seed, num_inference_steps, guidance_scale, n) -> dict:
        """UI values -> checked ChatSettings values; None keeps the current one. ValueError names the
        limit a value breaks."""
        lim = self.limits

        def number(value, name: str, lo: float, hi: float, integer: bool):
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {value!r}") from None
            if not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value}")
            if integer:
                if not v.is_integer():
                    raise ValueError(f"{name} must be a whole number, got {value}")
                return int(v)
            return v

        bounds = {"seed": (seed, "seed", 0, lim.max_seed, True),
                  "num_inference_steps": (num_inference_steps, "steps", 1, lim.max_num_inference_steps, True),
                  "guidance_scale": (guidance_scale, "guidance", 0, lim.max_guidance_scale, False),
                  "n": (n, "N", 1, lim.max_n, True)}
        return {key: number(*args) for key, args in bounds.items() if args[0] is not None and args[0] != ""}

    def check_upload(self, path: str | os.PathLike) -> None:
        """Size, pixel count and decodability of an uploaded file, before the model sees it. Messages
        name the file by its own name (Gradio keeps it as the temp file's name), never the server's
        temp folder."""
        from unimodal.data.images import load_rgb

        path = Path(path)
        if not path.is_file():
            raise ValueError("the upload did not arrive; try again")
        size = path.stat().st_size
        if size > self.limits.max_upload_bytes:
            raise ValueError(f"{path.name} is {size / 2**20:.1f} MiB; the limit is {self.limits.max_upload_bytes / 2**20:.1f} MiB")
        # Decoded whole (the pixel limit is checked on the header first), so a truncated file is
        # refused here with its name rather than later with the temp path.
        load_rgb(path, name=path.name, max_pixels=self.limits.max_image_pixels)

    # ------------------------------------------------------------------ requests
    def _run(self, cid: str, shown: str, make: Callable[[ChatEngine], TurnResult], ui_settings: tuple | None,
             progress: Callable[[str], None] | None) -> Reply:
        with self.lock:
            try:
                conv = self._conversation(cid)
            except USER_ERRORS as e:
                return Reply([{"role": "assistant", "content": f"{WARN}{e}"}], [], str(e))
            try:
                engine = conv.engine
                if ui_settings is not None:
                    engine.set_settings(**self._settings(*ui_settings))
                engine.progress = progress or (lambda message: None)
                result = make(engine)
            except USER_ERRORS as e:
                conv.add(shown, f"{WARN}{e}")
                return Reply(list(conv.messages), list(conv.gallery), str(e))
            for rec, image in result.images:
                conv.gallery.append(GalleryItem(image, gallery_caption(rec)))
            conv.add(shown, result.text)
            return Reply(list(conv.messages), list(conv.gallery), result.text if result.error else None)

    def send(self, cid: str, message: str, upload: str | None = None, *, seed=None, num_inference_steps=None,
             guidance_scale=None, n=None, progress: Callable[[str], None] | None = None) -> Reply:
        """The chat box: a message or command (see `unimodal.chat.syntax`), or a question about an upload."""
        message = (message or "").strip()
        shown = message + (f"\n[image: {Path(upload).name}]" if upload else "")

        def make(engine: ChatEngine) -> TurnResult:
            if len(message) > self.limits.max_prompt_chars:
                raise ValueError(f"the message is {len(message)} characters; the limit is {self.limits.max_prompt_chars}")
            if upload:
                self.check_upload(upload)
                return engine.run(Request("ask", text=message, path=str(upload)))
            if not message:
                raise ValueError("type a message, a prompt after /image, or upload an image to ask about")
            request = parse_line(message)
            if request.kind == "ask":
                raise ValueError("the server reads no files by path: upload the image and type the question")
            if request.kind == "set" and request.value is not None:
                raise ValueError(f"set {request.name} with the Settings controls (they apply to every request)")
            if request.kind == "quit":
                raise ValueError("close the tab to leave; the conversation is kept until the server restarts")
            return engine.run(request)

        return self._run(cid, shown or "(empty)", make, (seed, num_inference_steps, guidance_scale, n), progress)

    def draw(self, cid: str, prompt: str, *, seed=None, num_inference_steps=None, guidance_scale=None, n=None,
             progress: Callable[[str], None] | None = None) -> Reply:
        """The Draw button: best-of-N for `prompt`, judged and captioned."""
        prompt = (prompt or "").strip()

        def make(engine: ChatEngine) -> TurnResult:
            if not prompt:
                raise ValueError("the prompt is empty: type what to draw")
            return engine.run(Request("image", text=prompt))

        return self._run(cid, f"/image {prompt}", make, (seed, num_inference_steps, guidance_scale, n), progress)

    def critique(self, cid: str, progress: Callable[[str], None] | None = None) -> Reply:
        return self._run(cid, "/critique", lambda engine: engine.run(Request("critique")), None, progress)
