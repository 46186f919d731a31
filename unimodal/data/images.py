"""Decoding any image file to 8-bit RGB, with a named reason when it cannot be used.

Web-scale image sets hold grayscale, transparent, CMYK, palette and 16-bit images next to broken
ones. `load_rgb` turns every usable one into the same 8-bit RGB form and raises `BadImageError`
with a short machine-readable `reason` for the rest, so a prescan can count what it skipped. (No
torch here: prescan worker processes import this module and should start fast.)

Limits, checked on the header's size before any pixel is decoded:
- at most MAX_PIXELS pixels (8192 x 8192): a file whose header claims more is a decompression
  bomb or far beyond what any stage uses, and decoding it would take gigabytes;
- a long side at most MAX_ASPECT times the short side: a 20000 x 8 strip resized to a 256 px short
  side would be 640000 px wide, and a square crop of it shows nothing recognisable;
- a short side of at least `min_size` (1 by default; training data sets it with data.min_size).
Everything else PIL decodes is used: CMYK, 16-bit, palette with transparency (composited onto a
background), EXIF-rotated (turned upright), animated (the first frame), any extension.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unimodal.config import InputError

MAX_PIXELS = 8192 * 8192
MAX_ASPECT = 32

# Skip reasons counted by the prescan (sources.scan_source); one word each, used as metric names.
REASONS = ("missing", "undecodable", "truncated", "too_small", "too_large", "extreme_aspect", "empty_caption",
           "missing_caption", "duplicate")


class BadImageError(InputError):
    """An image that cannot be used; `reason` is one of REASONS, the message names the file."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-image reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _check_size(size: tuple[int, int], name: str, min_size: int, max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise BadImageError("too_large", f"{name} is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}; "
                                         "downscale it")
    if w == 0 or h == 0 or min(w, h) < min_size:
        raise BadImageError("too_small", f"{name} is {w}x{h}, below min_size={min_size}")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise BadImageError("extreme_aspect", f"{name} is {w}x{h}, one side more than {MAX_ASPECT} times the "
                                              "other; crop it")


def _open(src: str | os.PathLike | bytes | Image.Image, name: str, min_size: int, max_pixels: int) -> Image.Image:
    if isinstance(src, Image.Image):
        _check_size(src.size, name, min_size, max_pixels)
        return src
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 Mpx and raises from twice that; the limit below is ours, and a
            # warning would be a second line on stderr next to the error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(src, (bytes, bytearray, memoryview)):
                img = Image.open(io.BytesIO(bytes(src)))
            else:
                img = Image.open(Path(src))
            try:
                _check_size(img.size, name, min_size, max_pixels)   # from the header, before decoding
                img.load()  # decode everything now: truncation only shows up here
            except BaseException:
                img.close()  # a rejected file is not left open until garbage collection
                raise
        return img
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError("missing", f"{name} does not exist") from None
    except IsADirectoryError:
        raise BadImageError("missing", f"{name} is a folder, not an image file") from None
    except Image.DecompressionBombError:
        raise BadImageError("too_large", f"{name} claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, above "
                                         f"the limit of {max_pixels:,}; downscale it") from None
    except UnidentifiedImageError:
        empty = len(src) == 0 if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).stat().st_size == 0
        what = "is empty (0 bytes)" if empty else "is not an image file (PNG, JPEG, WebP, GIF, TIFF, BMP, ...)"
        raise BadImageError("undecodable", f"{name} {what}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if "truncated" in str(e).lower():
            raise BadImageError("truncated", f"{name} is truncated (the file ends inside the image data); "
                                             "re-download or re-export it") from None
        raise BadImageError("undecodable", f"{name} cannot be decoded ({type(e).__name__}: {e})") from None


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
             background: tuple[int, int, int] = (255, 255, 255), name: str | None = None,
             max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `src` (a path, encoded bytes or a PIL image) to an 8-bit RGB image.

    EXIF orientation is applied; animated images give their first frame. Raises BadImageError
    ("missing", "undecodable", "truncated", "too_large": more than `max_pixels`, "extreme_aspect":
    sides more than MAX_ASPECT apart, or "too_small": a side below `min_size`, or zero).
    """
    name = name or (str(src) if isinstance(src, (str, os.PathLike)) else type(src).__name__)
    opened = img = _open(src, name, min_size, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):
        pass  # a malformed EXIF block only loses the orientation hint, the pixels are fine
    rgb = to_rgb(img, background)
    if opened is not src and opened is not rgb:
        opened.close()  # an animated file keeps its handle open for the other frames
    return rgb
