"""Divergence: spike detection against a running median, rollback with a lower lr, the stop after K."""
import json
import math

import pytest
import torch

import unimodal.unified.loss as loss_module
from unimodal.config import ConfigError
from unimodal.finetune import Diverged, DivergenceConfig, DivergenceError, DivergenceMonitor, finetune, load_finetune_config
from unimodal.finetune.testing import tiny_base_model, toy_records, write_folder
from unimodal.train.schedule import warmup_cosine


def test_monitor_spikes_patience_and_state():
    cfg = DivergenceConfig(window=5, min_history=3, loss_factor=3.0, grad_factor=10.0, patience=2)
    m = DivergenceMonitor(cfg)
    for step, loss in enumerate([10.0, 9.0, 100.0], start=1):   # too early to call a spike
        assert m.observe(step, loss, 1.0) is None
    assert m.observe(4, 25.0, 1.0) is None                       # 25 < 3 x median(10, 9, 100)
    assert "loss" in m.observe(5, 400.0, 1.0)                    # first spike: warned, not raised
    state = m.state_dict()
    with pytest.raises(Diverged) as e:
        m.observe(6, 2.0, 50.0)                                  # gradient spike: the second in a row
    assert e.value.event["first_bad_step"] == 5 and "gradient norm" in e.value.event["reason"]
    m2 = DivergenceMonitor(cfg)
    m2.load_state_dict(state)
    assert m2.observe(6, 10.0, 1.0) is None and m2.streak == 0  # a normal step ends the streak
    assert "non-finite" in m2.observe(7, math.nan, 1.0)
    with pytest.raises(ConfigError, match="min_history"):
        DivergenceConfig(window=3, min_history=5)


class Poison:
    """Wraps the training loss (JointLoss calls unimodal.unified.loss.joint_loss): the listed calls
    (1-based, counted over the whole test) get their loss multiplied by `factor`."""

    def __init__(self, calls, factor):
        self.calls, self.factor, self.n = set(calls), factor, 0
        self.original = loss_module.joint_loss

    def __call__(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        self.n += 1
        if self.n in self.calls or (-1 in self.calls and self.n > 2):
            out.loss = out.loss * self.factor
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("div")
    return tiny_base_model(root / "base"), write_folder(root / "data", toy_records(12))


def _cfg(setup, out, *overrides):
    base, data = setup
    return load_finetune_config("configs/finetune_tiny.yaml", ["data.val_fraction=0", "divergence.min_history=2",
                                                               *overrides], data=str(data), model=str(base), out=str(out))


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_spike_rolls_back_to_the_last_good_checkpoint_with_a_lower_lr(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(loss_module, "joint_loss", Poison({4, 5}, 1000.0))   # steps 4 and 5 of the first attempt
    out = tmp_path / "run"
    cfg = _cfg(setup, out, "divergence.patience=2")
    result = finetune(cfg)
    (event,) = result.rollbacks
    # Step 4 was the first spike; its checkpoint was written (patience 2) and is deleted by the rollback.
    assert event["first_bad_step"] == 4 and event["step"] == 5 and event["deleted_checkpoints"] == [4]
    assert event["resumed_from_step"] == 2 and event["lr_scale"] == 0.5
    assert json.loads((out / "rollbacks.json").read_text())["rollbacks"] == [event]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]            # the diverged rows were rewound
    lr = lambda s: warmup_cosine(s, total_steps=6, warmup_steps=1, base_lr=cfg.llm_lr, min_lr=cfg.train.min_lr)  # noqa: E731
    assert rows[1]["lr_llm"] == pytest.approx(lr(1))
    assert rows[4]["lr_llm"] == pytest.approx(0.5 * lr(4))            # after the rollback: half
    assert all(r["loss"] < 100 for r in rows)
    assert json.loads(result.report.read_text())["status"] == "finished"


def test_repeated_divergence_stops_with_a_clear_message(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(loss_module, "joint_loss", Poison({-1}, math.nan))   # every step after the second: NaN
    out = tmp_path / "run"
    cfg = _cfg(setup, out, "divergence.patience=1", "divergence.max_rollbacks=1")
    with pytest.raises(DivergenceError, match=r"diverged 2 times .*max_rollbacks=1"):
        finetune(cfg)
    history = json.loads((out / "rollbacks.json").read_text())["rollbacks"]
    assert [h["step"] for h in history] == [3, 3] and history[1]["lr_scale"] == 0.25
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["status"] == "stopped" and "max_rollbacks" in report["error"]
    with pytest.raises(DivergenceError):   # rerunning the same command stops at once
        finetune(cfg)
    assert torch.load(out / "checkpoints" / "step_00000002" / "extra_state.pt", weights_only=True)["step"] == 2
