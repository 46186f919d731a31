"""Strict weight loading and `save_pretrained` / `from_pretrained` directories (config.json + safetensors)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unimodal.config import Config, InputError

C = TypeVar("C", bound=Config)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class WeightLoadError(InputError):
    """Weights that do not match the module exactly; the message names the keys (one line, exit 1)."""


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightLoadError naming missing, unexpected and shape-mismatched keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(expected[k].shape) != tuple(given[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (given vs expected): {_preview(mismatched)}")
    if problems:
        raise WeightLoadError(f"{source}: " + "; ".join(problems))


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "weights") -> None:
    """`module.load_state_dict(strict=True)` with an error that names every offending key."""
    check_state_dict(module.state_dict(), state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def save_pretrained_dir(directory: str | os.PathLike, config: Config, state_dict: Mapping[str, torch.Tensor],
                        extra_files: Mapping[str, str] | None = None) -> Path:
    """Write config.json + model.safetensors into a temporary sibling folder, then swap it in.

    A crash at any point leaves either the old directory or the new one, never a mix.
    """
    with atomic_output_dir(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(config.to_json_string())
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(directory)


@contextlib.contextmanager
def atomic_output_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `directory` with two renames, on any
    error it is removed and an existing `directory` is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        yield tmp
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(src: Path, dst: Path) -> None:
    """Move a finished directory `src` to `dst`, replacing any old `dst` with two renames."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def load_pretrained_dir(directory: str | os.PathLike, config_cls: type[C]) -> tuple[C, dict[str, torch.Tensor]]:
    """Read a directory written by `save_pretrained_dir`; errors name the missing file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"not a model directory: {directory}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name}")
    config = config_cls.load_json(directory / CONFIG_NAME)
    return config, read_safetensors(directory / WEIGHTS_NAME)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`; a damaged file (cut short by a failed copy, not safetensors
    at all) raises InputError naming it instead of the library's bare header message."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise InputError(f"{path} is not a complete safetensors file ({e}); copy or export it again") from None
