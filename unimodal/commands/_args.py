"""argparse `type=` checks shared by the commands, and the bounds they enforce.

A value out of range is argparse's own usage error (one line after the usage, exit 2) before
anything is loaded. Plain Python only: the parsers are built for `unimodal --help` too.
"""
from __future__ import annotations

import argparse
import math

from unimodal.limits import MAX_CANDIDATES, MAX_STEPS


def int_in(lo: int, hi: int | None = None):
    """An int flag in [lo, hi] (no upper bound when hi is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """A finite float > 0 (guidance scales: 1 is off, 0 would drop the condition altogether)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A float in (0, 1] (a share of memory)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def text_arg(text: str) -> str:
    """Non-empty UTF-8 text (a prompt or question). Bytes that are not UTF-8 reach Python's argv as
    lone surrogates, which the tokenizer refuses with a TypeError deep inside."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise argparse.ArgumentTypeError(f"not valid UTF-8 (at character {e.start}); pass UTF-8 text") from None
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty or only spaces")
    return text


# Help texts that state the bounds, shared so every command words them alike.
N_HELP = f"candidates per prompt, 1..{MAX_CANDIDATES}"
STEPS_HELP = f"DiT sampling steps, 1..{MAX_STEPS} (default: the model's)"
GUIDANCE_HELP = "classifier-free guidance scale > 0 (1 = off; default: the model's)"


# Every command takes the diffusers names. The flag a command had before (--steps, --num-steps,
# --cfg, --cfg-scale) still parses, unlisted, because scripts and the README of earlier releases use it.
def add_steps_arg(p: argparse.ArgumentParser, old_flag: str) -> None:
    """--num-inference-steps (dest num_inference_steps), and `old_flag` as its hidden alias."""
    p.add_argument("--num-inference-steps", type=int_in(1, MAX_STEPS), default=None, help=STEPS_HELP)
    p.add_argument(old_flag, dest="num_inference_steps", type=int_in(1, MAX_STEPS), default=None, help=argparse.SUPPRESS)


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    """--dtype: the weights' float type for inference (`unimodal.utils.precision.inference_dtype`)."""
    p.add_argument("--dtype", choices=["auto", "stored", "float32", "bfloat16"], default="auto",
                   help="weights' dtype: auto = bfloat16 where the device computes it natively (CUDA Ampere+, "
                        "x86 CPUs with AVX512-BF16 or AMX), else float32; stored = as the files hold them (auto)")


def add_guidance_arg(p: argparse.ArgumentParser, old_flag: str) -> None:
    """--guidance-scale (dest guidance_scale), and `old_flag` as its hidden alias."""
    p.add_argument("--guidance-scale", type=positive_float, default=None, help=GUIDANCE_HELP)
    p.add_argument(old_flag, dest="guidance_scale", type=positive_float, default=None, help=argparse.SUPPRESS)
