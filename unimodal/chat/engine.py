"""`ChatEngine`: the generate-and-critique conversation behind `unimodal chat` and `unimodal serve`.

Each request (see `unimodal.chat.syntax`) is one turn, run through the unified model's own APIs:
images by `generate_images` (best-of-N judged by the model's P(yes)), critiques by
`judge_yes_prob` + `prompt_likelihood` + `caption` on the latent, and free messages / questions
about an image by a KV-cached `Session`, where the model may also draw. After every turn the
session folder (`SessionStore`) is rewritten atomically.

Determinism and replay: every turn records the settings it ran with and its *context* number. A
context is one `Session` (one KV cache); a new one starts when a session is reopened, when a turn
is interrupted half-way, or when the cache would outgrow the LLM's positions. A new context is
shown the last drawn image with its first message. Replaying the recorded requests with the
recorded settings and contexts gives the same latents and PNG bytes (on the same device and
library versions).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from unimodal.chat.settings import ChatSettings, ServeLimits
from unimodal.chat.store import SessionStore, to_pil
from unimodal.chat.syntax import HELP, SETTINGS, Request, apply_setting, parse_line, setting_field
from unimodal.config import ConfigError
from unimodal.data.images import BadImageError

# Errors that are the user's to fix: shown as a message, the conversation goes on.
USER_ERRORS = (ValueError, ConfigError, BadImageError, FileNotFoundError, IsADirectoryError, PermissionError)


@dataclasses.dataclass
class ImageRecord:
    turn: int
    index: int                        # candidate index under (seed, prompt), or image number in a reply
    prompt: str
    noise_seed: int                   # sample_seed(run seed, prompt, index)
    yes_prob: float | None = None
    likelihood: float | None = None
    kept: bool = True
    caption: str | None = None
    image: str | None = None          # PNG, relative to the session folder (None without a store)
    latent: str | None = None         # safetensors, likewise

    @property
    def name(self) -> str:
        return f"t{self.turn:04d}-c{self.index}"


@dataclasses.dataclass
class TurnRecord:
    index: int
    request: dict
    settings: dict
    context: int
    reply: str
    images: list[ImageRecord] = dataclasses.field(default_factory=list)
    critique: dict | None = None
    input: str | None = None          # /ask: the copy of the image file read

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TurnRecord":
        return cls(**{**d, "images": [ImageRecord(**i) for i in d.get("images", [])]})


@dataclasses.dataclass
class TurnResult:
    """What one input line gave: the text to show, the new images (kept ones, PIL) and the record."""
    text: str
    images: list[tuple[ImageRecord, object]] = dataclasses.field(default_factory=list)
    record: TurnRecord | None = None  # None when nothing was recorded (help, show, an error)
    error: bool = False
    quit: bool = False


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _quote(text: str) -> str:
    return repr(text) if text else "(nothing: it ended its answer at once)"


class ChatEngine:
    def __init__(self, model, *, settings: ChatSettings | None = None, store: SessionStore | None = None,
                 limits: ServeLimits | None = None, progress: Callable[[str], None] | None = None):
        self.model = model
        self.settings = settings or ChatSettings()
        self.store = store
        self.limits = limits
        self.progress = progress or (lambda message: None)
        self.turns: list[TurnRecord] = []
        self.context = 0
        self._session = None
        self._pending: torch.Tensor | None = None          # a latent to show with the next message
        self._last: tuple[ImageRecord, torch.Tensor] | None = None   # the last drawn image

    # ------------------------------------------------------------------ sessions on disk
    @classmethod
    def resume(cls, model, store: SessionStore, **kwargs) -> "ChatEngine":
        """Continue a saved session: its settings, turns and last image; a new context."""
        engine = cls(model, settings=ChatSettings.from_dict(store.data["settings"]), store=store, **kwargs)
        try:
            engine.turns = [TurnRecord.from_dict(t) for t in store.turns]
        except TypeError as e:
            raise ConfigError(f"{store.root}: a turn in the session file is malformed ({e})") from None
        for turn in reversed(engine.turns):
            drawn = [i for i in turn.images if i.kept and i.latent]
            if drawn:
                engine._last = (drawn[-1], store.read_latent(drawn[-1].latent))
                break
        engine._new_context(int(store.data.get("context", 0)) + (1 if engine.turns else 0))
        return engine

    def _new_context(self, context: int) -> None:
        self.context, self._session = context, None
        self._pending = None if self._last is None else self._last[1]

    def _commit(self, record: TurnRecord) -> None:
        self.turns.append(record)
        if self.store is not None:
            self.store.commit([t.to_dict() for t in self.turns], self.settings.to_dict(), self.context)

    def _record(self, request: Request, reply: str, **fields) -> TurnRecord:
        return TurnRecord(len(self.turns), request.to_dict(), self.settings.to_dict(), self.context, reply, **fields)

    # ------------------------------------------------------------------ entry points
    def handle(self, line: str) -> TurnResult | None:
        """Parse and run one input line; a user error comes back as an error result."""
        try:
            request = parse_line(line)
            return None if request is None else self.run(request)
        except USER_ERRORS as e:
            return TurnResult(f"error: {e}", error=True)

    def run(self, request: Request, *, input_file: str | None = None) -> TurnResult:
        """Run one request (raises on a user error). `input_file` overrides where /ask reads
        (replay reads the session's copy)."""
        kind = request.kind
        if self.limits is not None and len(request.text) > self.limits.max_prompt_chars:
            raise ValueError(f"the text is {len(request.text)} characters; the limit is {self.limits.max_prompt_chars}")
        if kind == "help":
            return TurnResult(HELP)
        if kind == "quit":
            return TurnResult("bye", quit=True)
        if kind == "show":
            return TurnResult(self._settings_text())
        if kind == "history":
            return TurnResult(self._history_text())
        if kind == "set":
            return self._set(request)
        if kind == "image":
            return self._generate(request, request.text, self.settings.n)
        if kind == "best":
            if self.limits is not None and request.n > self.limits.max_n:
                raise ValueError(f"N is {request.n}; this server allows at most {self.limits.max_n} candidates")
            if self._last is None:
                raise ValueError("no image yet: draw one with /image PROMPT first")
            return self._generate(request, self._last[0].prompt, request.n)
        if kind == "critique":
            return self._critique(request)
        if kind == "ask":
            return self._converse(request, image_file=input_file or request.path)
        if kind == "say":
            return self._converse(request)
        raise ValueError(f"unknown request kind {kind!r}")

    # ------------------------------------------------------------------ settings
    def _settings_text(self) -> str:
        s = self.settings
        config = self.model.config
        steps = s.num_inference_steps if s.num_inference_steps is not None else f"default ({config.num_inference_steps})"
        guidance = s.guidance_scale if s.guidance_scale is not None else f"default ({config.guidance_scale})"
        return f"seed {s.seed} | steps {steps} | guidance {guidance} | n {s.n} | tokens {s.tokens}"

    def _set(self, request: Request) -> TurnResult:
        if request.value is None:
            return TurnResult(f"{request.name} = {getattr(self.settings, setting_field(request.name))}")
        new = apply_setting(self.settings, request.name, request.value)
        if self.limits is not None:
            self.limits.check(new)
        self.settings = new
        record = self._record(request, f"{request.name} = {getattr(new, setting_field(request.name))}")
        self._commit(record)
        return TurnResult(record.reply, record=record)

    def set_settings(self, **values) -> None:
        """Change several settings at once (the web UI's controls); recorded as /NAME turns."""
        for word, field in SETTINGS.items():
            if field in values and values[field] != getattr(self.settings, field):
                value = "default" if values[field] is None else str(values[field])
                self._set(Request("set", name=word, value=value))

    def _history_text(self) -> str:
        lines = []
        for t in self.turns:
            req = t.request
            what = req.get("text") or req.get("value") or (f"N={req['n']}" if "n" in req else "")
            kind = req["kind"] if req["kind"] != "set" else f"/{req['name']}"
            lines.append(f"{t.index:4d} [{kind}] {what}".rstrip() + "".join(f"  -> {i.image or i.name}" for i in t.images if i.kept))
        return "\n".join(lines) or "(no turns yet)"

    # ------------------------------------------------------------------ drawing
    def _save_image(self, rec: ImageRecord, latent: torch.Tensor, image: torch.Tensor):
        if self.store is not None:
            rec.image = self.store.write_image(rec.name, image)
            rec.latent = self.store.write_latent(rec.name, latent)
        return to_pil(image)

    def _generate(self, request: Request, prompt: str, n: int) -> TurnResult:
        from unimodal.unified.generate import JUDGE_LABELS, caption, generate_images

        if not prompt.strip():
            raise ValueError("the prompt is empty")
        s = self.settings
        steps = s.num_inference_steps or self.model.config.num_inference_steps
        self.progress(f"drawing {n} candidate{'s' * (n > 1)} with {steps} steps, then judging")
        out = generate_images(self.model, prompt, n=n, keep=1, seed=s.seed,
                              num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale)
        turn = len(self.turns)
        records, shown = [], []
        for c in out.candidates[0]:                                   # best first
            rec = ImageRecord(turn, c.index, prompt, c.seed, c.yes_prob, c.likelihood, c.kept)
            if c.kept:
                if s.auto_critique:
                    self.progress("captioning")
                    rec.caption = caption(self.model, latents=c.latent[None], max_new_tokens=s.tokens).texts[0]
                shown.append((rec, self._save_image(rec, c.latent, c.image)))
                self._last = (rec, c.latent)
                self._pending = c.latent
            records.append(rec)
        records.sort(key=lambda r: r.index)
        best = shown[0][0]
        lines = [f"image {best.name} for {prompt!r} (seed {s.seed}, {steps} steps): "
                 f"P(yes) {_fmt(best.yes_prob, '.3f')}, likelihood {_fmt(best.likelihood, '.3f')}"
                 + (f" -> {best.image}" if best.image else "")]
        if n > 1:
            lines.append(f"best of {n} by {JUDGE_LABELS[out.judge]}:")
            lines += [f"  #{r.index}: P(yes) {_fmt(r.yes_prob, '.3f')}  likelihood {_fmt(r.likelihood, '.3f')}"
                      + ("  <- kept" if r.kept else "") for r in records]
        if best.caption is not None:
            lines.append(f"caption: {_quote(best.caption)}")
        record = self._record(request, "\n".join(lines), images=records)
        self._commit(record)
        return TurnResult(record.reply, shown, record)

    # ------------------------------------------------------------------ critique
    def _critique(self, request: Request) -> TurnResult:
        from unimodal.unified.generate import caption, verify

        if self._last is None:
            raise ValueError("no image to critique yet: draw one with /image PROMPT first")
        rec, latent = self._last
        prompt = request.text or rec.prompt
        self.progress("judging and captioning")
        scores = verify(self.model, latent[None], [prompt])
        text = caption(self.model, latents=latent[None], max_new_tokens=self.settings.tokens).texts[0]
        critique = {"image": rec.name, "prompt": prompt, "yes_prob": float(scores.yes_prob[0]),
                    "likelihood": float(scores.likelihood[0]), "caption": text}
        reply = (f"critique of {rec.name} against {prompt!r}:\n"
                 f"  P(yes) {critique['yes_prob']:.3f}  (its answer to \"Does this image align with the prompt?\")\n"
                 f"  likelihood {critique['likelihood']:.3f}  (mean log-prob per prompt token as its description; higher = closer)\n"
                 f"  its caption: {_quote(text)}")
        record = self._record(request, reply, critique=critique)
        self._commit(record)
        return TurnResult(reply, record=record)

    # ------------------------------------------------------------------ conversation
    def _context_room(self, text_tokens: int) -> bool:
        """Whether the next message + reply (at most one drawn image) fits the LLM's positions."""
        n = self.model.config.num_latent_tokens
        need = text_tokens + 2 * (n + 2) + self.settings.tokens + 16
        limit = int(getattr(self.model.llm.config, "max_position_embeddings", 32768))
        return self._session is None or self._session.length + need <= limit

    def _converse(self, request: Request, image_file: str | None = None) -> TurnResult:
        from unimodal.unified.io import load_image
        from unimodal.unified.chat import CAPTION_QUESTION
        from unimodal.unified.session import Session

        text = request.text or (CAPTION_QUESTION if image_file else "")
        if not text.strip():
            raise ValueError("the message is empty")
        image = load_image(image_file) if image_file is not None else None    # errors before any state changes
        if not self._context_room(len(self.model.chat.text(text))):
            self._new_context(self.context + 1)
        s = self.settings
        if self._session is None:
            self._session = Session(self.model)
        session = self._session
        session.seed, session.num_inference_steps, session.guidance_scale = s.seed, s.num_inference_steps, s.guidance_scale
        turn_index = len(self.turns)
        self.progress("thinking")
        try:
            if image is not None:
                session.user(text, image=image)
                self._pending = None                # the file is now the image under discussion
            else:
                latent, self._pending = self._pending, None
                session.user(text, latent=latent)
            reply = session.assistant(max_new_tokens=s.tokens, max_images=1)
        except BaseException:
            # A half-fed cache no longer matches the record: the next message starts a new context.
            self._new_context(self.context + 1)
            raise
        input_rel = None
        if image_file is not None and self.store is not None:
            input_rel = self.store.copy_input(f"t{turn_index:04d}", image_file)
        records, shown = [], []
        for k, (latent, noise_seed) in enumerate(zip(reply.latents, reply.seeds)):
            rec = ImageRecord(turn_index, k, text, noise_seed)
            shown.append((rec, self._save_image(rec, latent, self.model.decode_latents(latent[None])[0].cpu())))
            records.append(rec)
            self._last = (rec, latent)              # in the context already: nothing pending
        words = reply.text.strip() or "(no words)"
        lines = [words] + [f"[drew {r.name}" + (f" -> {r.image}]" if r.image else "]") for r in records]
        record = self._record(request, "\n".join(lines), images=records, input=input_rel)
        self._commit(record)
        return TurnResult(record.reply, shown, record)


@dataclasses.dataclass
class ReplayOutput:
    engine: ChatEngine
    mismatched: list[int]             # turns whose reply text differs from the recorded one


def replay(model, source: SessionStore, out: SessionStore, progress: Callable[[str], None] | None = None) -> ReplayOutput:
    """Run `source`'s turns again into `out` with their recorded settings and contexts."""
    engine = ChatEngine(model, store=out, progress=progress)
    mismatched = []
    for turn in source.turns:
        record = TurnRecord.from_dict(turn)
        engine.settings = ChatSettings.from_dict(record.settings)
        if record.context != engine.context:
            engine._new_context(record.context)
        input_file = str(source.path(record.input)) if record.input else None
        result = engine.run(Request.from_dict(record.request), input_file=input_file)
        if result.record is None or result.record.reply != record.reply:
            mismatched.append(record.index)
    engine.settings = ChatSettings.from_dict(source.data["settings"])
    out.commit(settings=engine.settings.to_dict())
    return ReplayOutput(engine, mismatched)
