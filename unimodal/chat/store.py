"""A chat session on disk: one folder that is complete after every turn.

    session.json        format, model, current settings, context number, and every turn: its
                        request, the settings it ran with, the reply, its images' seeds and judge
                        scores, and any critique
    images/tNNNN-cK.png the kept images of turn NNNN (K = candidate index, or image number)
    latents/tNNNN-cK.safetensors   their latents (key "latent", as `unimodal generate` writes)
    inputs/tNNNN.EXT    a copy of the image file a /ask turn read, so the session replays alone

Each file is written to a temporary name and renamed; session.json goes last, so a crash leaves
the previous turn's session intact (a half-finished turn's files are overwritten by the next).
Every file path in session.json must lie inside the session folder: a session that names one
outside (``../``, an absolute path, a link leading out) is refused when opened, so neither reading
it nor replaying it touches files elsewhere.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch

from unimodal.config import ConfigError, atomic_write_bytes, atomic_write_text, read_json

SESSION_FILE = "session.json"
FORMAT = 1


def to_pil(image: torch.Tensor):
    """[3, H, W] in [0, 1] -> an 8-bit RGB PIL image (round to nearest, as torchvision's save_image)."""
    from PIL import Image

    arr = (image.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")


def png_bytes(image: torch.Tensor) -> bytes:
    """PNG encoding with no timestamp or other varying chunk: the same pixels give the same bytes."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def _file_paths(data: dict, where: Path):
    """Every file path a session file names: each turn's kept images and latents and its /ask copy."""
    turns = data.get("turns")
    if not isinstance(turns, list):
        raise ConfigError(f"{where}: 'turns' must be a list")
    for turn in turns:
        if not isinstance(turn, dict):
            raise ConfigError(f"{where}: a turn in the session file is malformed (not a mapping)")
        request = turn.get("request") if isinstance(turn.get("request"), dict) else {}
        if request.get("path") is not None and not turn.get("input"):
            # Without its copy, a replay would read the original file wherever it is.
            raise ConfigError(f"{where}: turn {turn.get('index')} read {request['path']!r} but has no copy "
                              "of it ('input') in the session folder")
        if turn.get("input") is not None:
            yield turn["input"]
        for image in turn.get("images") or []:
            if isinstance(image, dict):
                yield from (image[key] for key in ("image", "latent") if image.get(key) is not None)


def latent_bytes(latent: torch.Tensor) -> bytes:
    from safetensors.torch import save

    return save({"latent": latent.detach().float().cpu().contiguous()}, metadata={"format": "pt"})


class SessionStore:
    """Reads and writes one session folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike, data: dict):
        self.root = Path(root)
        self.data = data

    # ------------------------------------------------------------------ opening
    @staticmethod
    def is_session(root: str | os.PathLike) -> bool:
        return (Path(root) / SESSION_FILE).is_file()

    @classmethod
    def create(cls, root: str | os.PathLike, model: str, settings: dict) -> "SessionStore":
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root} exists and is not an empty folder or a chat session")
        store = cls(root, {"format": FORMAT, "model": model, "created": datetime.now(timezone.utc).isoformat(),
                           "settings": settings, "context": 0, "turns": []})
        store.commit()
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> "SessionStore":
        root = Path(root)
        path = root / SESSION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a chat session (no {SESSION_FILE})")
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ConfigError(f"{path}: session format {found!r}, this version reads {FORMAT}")
        store = cls(root, data)
        for rel in _file_paths(data, path):
            store.path(rel)
        return store

    # ------------------------------------------------------------------ contents
    @property
    def turns(self) -> list[dict]:
        return self.data["turns"]

    def path(self, rel: str) -> Path:
        """The file `rel` names in the folder; ConfigError if it resolves outside the folder."""
        where = self.root / SESSION_FILE
        if not isinstance(rel, str) or not rel:
            raise ConfigError(f"{where}: {rel!r} is not a file path inside the session folder")
        target = self.root / rel
        # resolve() follows links and "..": what is checked is the file that would be opened.
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise ConfigError(f"{where}: {rel!r} lies outside the session folder {self.root}; refusing to read it")
        return target

    def write_image(self, stem: str, image: torch.Tensor) -> str:
        rel = f"images/{stem}.png"
        atomic_write_bytes(self.root / rel, png_bytes(image))
        return rel

    def write_latent(self, stem: str, latent: torch.Tensor) -> str:
        rel = f"latents/{stem}.safetensors"
        atomic_write_bytes(self.root / rel, latent_bytes(latent))
        return rel

    def read_latent(self, rel: str) -> torch.Tensor:
        from unimodal.unified.io import load_latent

        return load_latent(self.path(rel))

    def copy_input(self, stem: str, src: str | os.PathLike) -> str:
        rel = f"inputs/{stem}{Path(src).suffix.lower()}"
        dst = self.root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return rel

    def commit(self, turns: list[dict] | None = None, settings: dict | None = None, context: int | None = None) -> None:
        """Write session.json (atomically) with the given state."""
        if turns is not None:
            self.data["turns"] = turns
        if settings is not None:
            self.data["settings"] = settings
        if context is not None:
            self.data["context"] = context
        atomic_write_text(self.root / SESSION_FILE, json.dumps(self.data, indent=1) + "\n")
