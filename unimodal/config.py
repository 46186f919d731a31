"""Typed configuration: dataclasses that round-trip to JSON and load from YAML with overrides.

Every component (encoder, decoder, DiT, bridge, training stage) has a dataclass config that
inherits from :class:`Config`. Checks live in ``__post_init__`` so an impossible configuration
fails with one line before any large module is built. Experiment YAML files map onto nested
configs; ``--key=value`` / ``key.sub=value`` overrides reject unknown keys and wrong types.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration that cannot work; the message is one line that says what to change."""


class InputError(ValueError):
    """An input that cannot be used (an image or weights file, a prompt too long for the model); the
    message is one line naming it and why. The CLI prints it and exits 1, like any failed run."""


class UserError(Exception):
    """A bad input from the user (a flag, a combination of flags, a file that is not what it must
    be): the CLI prints it as one line and exits 2."""


def _is_config_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Config)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON/YAML/CLI value to the annotated type, or raise ConfigError naming `where`."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {getattr(tp, '__name__', tp)})")
    if tp is Any:
        return value
    if _is_config_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return tp.from_dict(value, _where=where)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML follows YAML 1.1, which reads `2e-4` (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass
class Config:
    """Base class: JSON round trip with strict keys and types."""

    # Keys renamed since files were written, old name -> new name: applied when reading, so a
    # config.json, checkpoint or session saved under an old name still loads.
    renamed: typing.ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _where: str | None = None) -> C:
        where = _where or cls.__name__
        data = {cls.renamed.get(k, k): v for k, v in data.items()}
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json_string())

    @classmethod
    def load_json(cls: type[C], path: str | os.PathLike) -> C:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return cls.from_dict(read_json(path), _where=path.name)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`--a.b=3` or `a.b=3` -> (["a", "b"], 3). Values are parsed as YAML scalars/lists."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"override {text!r} must look like --key=value")
    key, raw = body.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.replace("-", "_").split("."), value


def _check_override_key(schema: type[Config], text: str, path: list[str]) -> None:
    """Raise unless `path` names a field of `schema` (through its nested sections). Checked before
    the merge, so a typo on the command line is reported as such, not as a key of the YAML file."""
    cls = schema
    for depth, part in enumerate(path):
        part = cls.renamed.get(part, part)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if part not in names:
            section = f" in {'.'.join(path[:depth])}" if depth else ""
            raise ConfigError(f"unknown option or override key {text!r}: no {part!r}{section}; "
                              f"valid keys are {sorted(names)}")
        tp, _ = _unwrap_optional(typing.get_type_hints(cls)[part])
        if not _is_config_type(tp):
            return  # a value or a free-form mapping: from_dict checks it
        cls = tp


def apply_overrides(data: dict[str, Any], overrides: list[str], schema: type[Config] | None = None) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict. With `schema`, each key must be one of its fields;
    the merged values are checked by from_dict."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        if schema is not None:
            _check_override_key(schema, text, path)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (or JSON) file whose top level is a mapping; one-line ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; invalid JSON is a one-line ConfigError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] = ()) -> C:
    """Load a YAML (or JSON) experiment file into `cls`, apply overrides, validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path)
    data = apply_overrides(data, list(overrides), schema=cls)
    return cls.from_dict(data, _where=Path(path).name if path else cls.__name__)
