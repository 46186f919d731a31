from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import torch

from unimodal.config import Config, ConfigError, load_config
from unimodal.utils.weights import (
    WeightLoadError,
    load_pretrained_dir,
    load_state_dict_strict,
    save_pretrained_dir,
)


@dataclass
class Inner(Config):
    width: int = 8
    kind: Literal["a", "b"] = "a"

    def __post_init__(self):
        if self.width <= 0:
            raise ConfigError(f"width must be positive, got {self.width}")


@dataclass
class Outer(Config):
    name: str = "run"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    limit: Optional[int] = None
    inner: Inner = field(default_factory=Inner)


def test_json_round_trip(tmp_path):
    cfg = Outer(name="x", lr=2e-4, limit=3, inner=Inner(width=16, kind="b"))
    cfg.save_json(tmp_path / "c.json")
    assert Outer.load_json(tmp_path / "c.json") == cfg


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\ninner:\n  width: 4\n")
    cfg = load_config(Outer, path, ["--lr=0.5", "inner.kind=b", "--betas=[0.8, 0.99]"])
    assert cfg == Outer(name="exp", lr=0.5, betas=(0.8, 0.99), inner=Inner(width=4, kind="b"))
    assert load_config(Outer, path, ["--lr=2e-4"]).lr == 2e-4  # YAML 1.1 reads 2e-4 as a string


@pytest.mark.parametrize("override, message", [
    ("--nope=1", "unknown option or override key '--nope=1': no 'nope'"),
    ("--inner.widht=3", "unknown option or override key '--inner.widht=3': no 'widht' in inner"),
    ("--lr=fast", "expected a number"),
    ("--inner.width=2.5", "expected an integer"),
    ("--inner.kind=c", "is not one of"),
    ("--inner.width=-1", "width must be positive"),
    ("lr", "must look like --key=value"),
])
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Outer, None, [override])
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "absent.yaml")


def test_strict_load_names_keys():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = dict(module.state_dict())
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(WeightLoadError) as info:
        load_state_dict_strict(module, state, "test")
    text = str(info.value)
    assert "missing keys: 1.bias" in text
    assert "unexpected keys: extra.weight" in text
    assert "0.weight (4, 2) vs (3, 2)" in text


def test_pretrained_dir_round_trip_and_replace(tmp_path):
    module = torch.nn.Linear(3, 2)
    cfg = Inner(width=3)
    out = tmp_path / "model"
    save_pretrained_dir(out, cfg, module.state_dict())
    save_pretrained_dir(out, cfg.replace(kind="b"), module.state_dict())  # replaces atomically
    loaded_cfg, state = load_pretrained_dir(out, Inner)
    assert loaded_cfg.kind == "b"
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_cli_help_lists_commands(capsys):
    from unimodal.cli import main

    assert main([]) == 0
    assert "train" in capsys.readouterr().out
