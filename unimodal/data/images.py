"""Decoding any image file to 8-bit RGB, with a named reason when it cannot be used.

Web-scale image sets hold grayscale, transparent, CMYK, palette and 16-bit images next to broken
ones. `load_rgb` turns every usable one into the same 8-bit RGB form and raises `BadImageError`
with a short machine-readable `reason` for the rest, so a prescan can count what it skipped. (No torch here: prescan worker processes import this
module and should start fast.)
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Skip reasons counted by the prescan (sources.scan_source); one word each, used as metric names.
REASONS = ("missing", "undecodable", "truncated", "too_small", "empty_caption", "missing_caption", "duplicate")


class BadImageError(ValueError):
    """An image that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-image reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _open(src: str | os.PathLike | bytes | Image.Image, name: str) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise BadImageError("undecodable", f"{name} is empty (0 bytes)")
            img = Image.open(io.BytesIO(bytes(src)))
        else:
            img = Image.open(Path(src))
        with warnings.catch_warnings():
            # A DecompressionBombWarning is not an error here; the error version still raises below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()  # decode everything now: truncation only shows up here
        return img
    except FileNotFoundError:
        raise BadImageError("missing", f"{name} does not exist") from None
    except UnidentifiedImageError:
        raise BadImageError("undecodable", f"{name} is not an image PIL can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
        raise BadImageError(reason, f"{name}: {type(e).__name__}: {e}") from None


def _to_uint8(img: Image.Image) -> Image.Image:
    """Integer / float modes ('I;16*', 'I', 'F') to 8-bit 'L' by scaling their value range."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.float64) / 257.0              # 0..65535 -> 0..255
    elif img.mode == "I":
        a = a.astype(np.float64)
        a = a / 257.0 if a.max(initial=0) > 255 else a  # 16-bit data often arrives as 'I'
    else:  # 'F': floats in [0, 1] or [0, 255]
        a = a.astype(np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited onto `background`."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _to_uint8(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's converters (CMYK without ICC colour management).
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(src: str | os.PathLike | bytes | Image.Image, *, min_size: int = 1,
             background: tuple[int, int, int] = (255, 255, 255), name: str | None = None) -> Image.Image:
    """Decode `src` (a path, encoded bytes or a PIL image) to an 8-bit RGB image.

    EXIF orientation is applied; animated images give their first frame. Raises BadImageError
    ("missing", "undecodable", "truncated" or "too_small": a side below `min_size`, or zero).
    """
    name = name or (str(src) if isinstance(src, (str, os.PathLike)) else type(src).__name__)
    img = _open(src, name)
    if img.width == 0 or img.height == 0 or min(img.size) < min_size:
        raise BadImageError("too_small", f"{name} is {img.width}x{img.height}, below min_size={min_size}")
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):
        pass  # a malformed EXIF block only loses the orientation hint, the pixels are fine
    return to_rgb(img, background)
