"""Shared machinery of the converters: strict key plans, source readers, dtype casts, atomic output.

A conversion is a *plan*: a list of :class:`Rule`, each naming the source keys it reads and the
target key it fills (or none, for a derived buffer that is only checked). :func:`apply_plan`
refuses to run unless the plan reads every source key and the source has every key the plan reads,
and :func:`check_targets` then compares the result with the target model's own state dict (keys
and shapes). Every failure names the keys; nothing is loaded with ``strict=False``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors import safe_open

from unimodal.utils.weights import WeightLoadError, check_state_dict


class ConversionError(WeightLoadError):
    """A source that does not convert exactly; the message names the offending keys or fields."""


def preview(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


# ----------------------------------------------------------------------------- plans

@dataclasses.dataclass(frozen=True)
class Rule:
    """Read `sources`, write `fn(*tensors)` to `target`; `target=None` only checks (fn must raise
    ConversionError on a mismatch) and drops the sources, e.g. derived RoPE tables."""
    target: str | None
    sources: tuple[str, ...]
    fn: Callable[..., torch.Tensor | None]


def copy(target: str, source: str | None = None) -> Rule:
    return Rule(target, (source or target,), lambda t: t)


def apply_plan(source: Mapping[str, torch.Tensor], plan: Sequence[Rule], name: str) -> dict[str, torch.Tensor]:
    """Run a plan over a source state dict: every source key read exactly once, every read key present."""
    read = Counter(s for rule in plan for s in rule.sources)
    twice = sorted(s for s, n in read.items() if n > 1)
    dup_targets = sorted(t for t, n in Counter(r.target for r in plan if r.target is not None).items() if n > 1)
    if twice or dup_targets:  # a plan bug, not a source problem
        raise RuntimeError(f"conversion plan for {name} reads {twice} twice / writes {dup_targets} twice")
    missing = sorted(set(read) - set(source))
    unconsumed = sorted(set(source) - set(read))
    problems = []
    if missing:
        problems.append(f"missing source keys: {preview(missing)}")
    if unconsumed:
        problems.append(f"unconsumed source keys (not part of the architecture this converter knows): {preview(unconsumed)}")
    if problems:
        raise ConversionError(f"{name}: " + "; ".join(problems))
    out: dict[str, torch.Tensor] = {}
    for rule in plan:
        value = rule.fn(*(source[s] for s in rule.sources))
        if rule.target is not None:
            out[rule.target] = value
    return out


def check_targets(expected: Mapping[str, torch.Tensor], produced: Mapping[str, torch.Tensor], name: str) -> None:
    """Every target key filled with the right shape, nothing extra (shapes only: meta tensors work)."""
    try:
        check_state_dict(expected, produced, name)
    except WeightLoadError as e:
        raise ConversionError(str(e)) from None


# ----------------------------------------------------------------------------- tensor rules

def conv1x1_to_linear(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A patch-size-1 conv weight [D, C, 1, 1] is the Linear weight [D, C] (timm PatchEmbed, p = 1)."""
    def fn(w: torch.Tensor) -> torch.Tensor:
        if w.ndim != 4 or w.shape[2:] != (1, 1):
            raise ConversionError(f"{key}: expected a 1x1 conv weight [D, C, 1, 1], got {tuple(w.shape)}")
        return w.reshape(w.shape[0], w.shape[1])
    return fn


def tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance for comparing a stored table with values in [-1, 1] against our own."""
    return max(1e-5, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0


def verify_equal(key: str, reference: torch.Tensor, what: str, hint: str = "",
                 atol: float | None = None) -> Callable[[torch.Tensor], None]:
    """A check-only rule body: the stored tensor must equal `reference` (what our model computes
    itself) within `atol` (default: the rounding of the stored dtype)."""
    def fn(stored: torch.Tensor) -> None:
        if stored.numel() != reference.numel():
            raise ConversionError(f"{key}: shape {tuple(stored.shape)} but {what} has {tuple(reference.shape)}")
        diff = (stored.double() - reference.reshape(stored.shape).double()).abs().max().item()
        if not diff <= (tolerance(stored.dtype) if atol is None else atol):
            raise ConversionError(f"{key} differs from {what} (max abs diff {diff:.3g}): the source was built "
                                  f"another way, and converting it would silently change the model" + (f"; {hint}" if hint else ""))
    return fn


def verified_copy(key: str, reference: torch.Tensor, what: str, target: str | None = None) -> Rule:
    """Keep a stored fixed table (exactly what the source model used) after checking it is the one
    our model would compute, so re-initialising or re-deriving it later changes nothing."""
    check = verify_equal(key, reference, what)

    def fn(stored: torch.Tensor) -> torch.Tensor:
        check(stored)
        return stored
    return Rule(target or key, (key,), fn)


# ----------------------------------------------------------------------------- reading sources

def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def load_torch_file(path: str | os.PathLike) -> Any:
    """A `torch.save` file, tensors only (`weights_only=True`: no code runs while reading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad pickle; report one line
        raise ConversionError(f"{path}: cannot read it as a tensors-only torch file ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def as_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConversionError(f"{where}: expected a flat mapping of names to tensors")
    return dict(obj)


def load_safetensors_dir(directory: str | os.PathLike, stem: str = "model") -> dict[str, torch.Tensor]:
    """`{stem}.safetensors`, or the shards listed by `{stem}.safetensors.index.json` (every shard
    must exist and every tensor must be where the index says)."""
    directory = Path(directory)
    single, index = directory / f"{stem}.safetensors", directory / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index}: no weight_map")
        by_shard: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(key)
        out: dict[str, torch.Tensor] = {}
        for shard, keys in sorted(by_shard.items()):
            path = directory / shard
            if not path.is_file():
                raise FileNotFoundError(f"{index} lists {shard}, which is not in {directory}")
            with safe_open(str(path), framework="pt") as fh:
                present = set(fh.keys())
                absent = sorted(set(keys) - present)
                if absent:
                    raise ConversionError(f"{path}: keys listed in the index are absent: {preview(absent)}")
                extra = sorted(present - set(keys))
                if extra:
                    raise ConversionError(f"{path}: keys not listed in the index: {preview(extra)}")
                for key in keys:
                    out[key] = fh.get_tensor(key)
        return out
    if single.is_file():
        with safe_open(str(single), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    raise FileNotFoundError(f"{directory} has neither {single.name} nor {index.name}")


# ----------------------------------------------------------------------------- dtype and output

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ConversionError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def cast_floating(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype` (None keeps every tensor's own dtype); integer tensors untouched."""
    if dtype is None:
        return dict(state)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def refuse_same_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if Path(src).resolve() == Path(dst).resolve():
        raise ConversionError(f"the output {dst} is the source itself; choose another directory")
