"""Strict weight loading and `save_pretrained` / `from_pretrained` directories (config.json + safetensors)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections import Counter
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


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "weights",
                           assign: bool = False) -> None:
    """`module.load_state_dict(strict=True)` with an error that names every offending key; files
    saved under the earlier key names load through `rename_legacy_keys`. `assign=True` makes the
    given tensors the module's (their dtype included) instead of copying into it: what a module
    built with meta parameters needs."""
    expected = module.state_dict()
    state_dict = rename_legacy_keys(expected, state_dict, source)
    check_state_dict(expected, state_dict, source)
    module.load_state_dict(state_dict, strict=True, assign=assign)


# The earlier key names, from when the modules copied the reference checkpoints' layouts: the RAE
# decoder nested ViTMAE's holder modules, and the DiT kept body and DiT^DH head blocks in one
# `dit_blocks` list (mapped in `_current_name`, which needs the body depth). Exports and training
# checkpoints written then still load. Each pattern starts at a path component, under any prefix
# (`decoder.`, `rae.decoder.`, `dit.`).
_LEGACY_DECODER_NAMES = [(re.compile(r"(?<![^.])" + old), new) for old, new in (
    (r"decoder_layers\.(\d+)\.attention\.attention\.(query|key|value)\.", r"layers.\1.attn.\2."),
    (r"decoder_layers\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.proj."),
    (r"decoder_layers\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"decoder_layers\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"decoder_layers\.(\d+)\.layernorm_before\.", r"layers.\1.norm1."),
    (r"decoder_layers\.(\d+)\.layernorm_after\.", r"layers.\1.norm2."),
    (r"decoder_embed\.", "embed."),
    (r"decoder_pos_embed$", "pos_embed"),
    (r"trainable_cls_token$", "cls_token"),
    (r"decoder_norm\.", "norm."),
    (r"decoder_pred\.", "to_pixels."),
)]
_LEGACY_DIT_BLOCK = re.compile(r"(?<![^.])dit_blocks\.(\d+)\.")


def _current_name(key: str, expected: Mapping[str, torch.Tensor]) -> str:
    """The current name of an earlier key (the key itself when it has no earlier component)."""
    for pattern, new in _LEGACY_DECODER_NAMES:
        renamed, n = pattern.subn(new, key, count=1)
        if n:
            return renamed
    m = _LEGACY_DIT_BLOCK.search(key)
    if m is None:
        return key
    prefix, i, rest = key[:m.start()], int(m.group(1)), key[m.end():]
    # Body blocks came first: the body depth is the number of blocks the module has under `blocks`.
    body = prefix + "blocks."
    depth = len({k[len(body):].split(".", 1)[0] for k in expected if k.startswith(body)})
    return f"{prefix}blocks.{i}.{rest}" if i < depth else f"{prefix}head_blocks.{i - depth}.{rest}"


def rename_legacy_keys(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                       source: str) -> dict[str, torch.Tensor]:
    """`given` (an export, a training checkpoint's model or EMA state) under the current key names.
    A state dict without earlier names comes back as it is; one with them must match `expected`
    exactly once renamed (key count, names, shapes), and the error names each earlier key that maps
    onto no expected key."""
    names = {k: k if k in expected else _current_name(k, expected) for k in given}
    if all(old == new for old, new in names.items()):
        return dict(given)
    unmapped = sorted(old if old == new else f"{old} (read as {new})" for old, new in names.items() if new not in expected)
    twice = sorted(new for new, n in Counter(names.values()).items() if n > 1)
    if unmapped:
        raise WeightLoadError(f"{source} (earlier key names): keys that map onto none of the model's: {_preview(unmapped)}")
    if twice:
        raise WeightLoadError(f"{source} (earlier key names): keys given under both the earlier and the current name: "
                              f"{_preview(twice)}")
    renamed = {names[k]: v for k, v in given.items()}
    check_state_dict(expected, renamed, f"{source} (renamed from earlier key names)")
    return renamed


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
