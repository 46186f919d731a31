import math

import pytest
import torch

from unimodal.config import ConfigError
from unimodal.train.config import TrainConfig
from unimodal.train.ema import EMA
from unimodal.train.schedule import warmup_cosine


def lr(step, **kw):
    args = dict(total_steps=100, warmup_steps=10, base_lr=1.0, min_lr=0.1)
    args.update(kw)
    return warmup_cosine(step, **args)


def test_warmup_is_linear_and_never_zero():
    assert lr(0) == pytest.approx(0.1)
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)


def test_cosine_values():
    assert lr(10) == pytest.approx(1.0)
    assert lr(55) == pytest.approx(0.1 + 0.9 * 0.5)          # halfway through the decay
    assert lr(32.5) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr(100) == pytest.approx(0.1)
    assert lr(1000) == pytest.approx(0.1)
    values = [lr(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_no_warmup_and_all_warmup():
    assert lr(0, warmup_steps=0) == pytest.approx(1.0)
    assert lr(99, warmup_steps=100) == pytest.approx(1.0)
    assert lr(100, warmup_steps=100) == pytest.approx(0.1)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError):
        lr(-1)
    with pytest.raises(ValueError):
        lr(0, warmup_steps=101)


def test_train_config_checks():
    TrainConfig(grad_clip=None, ema_decay=None)
    for bad in (dict(grad_accum=0), dict(min_lr=1.0, lr=0.1), dict(betas=(0.9, 1.5)), dict(grad_clip=0.0),
                dict(ema_decay=1.0), dict(warmup_steps=20, total_steps=10)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    cfg = TrainConfig.from_dict({"betas": [0.9, 0.999], "grad_clip": None})
    assert cfg.betas == (0.9, 0.999) and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_ema_math():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(2.0)
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.1))
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9 * 1.1 + 0.2))
    assert ema.num_updates == 2


def test_ema_tracks_only_trainable_and_keeps_fp32():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)).to(torch.bfloat16)
    m[0].requires_grad_(False)
    ema = EMA(m, decay=0.99)
    assert set(ema.shadow) == {"1.weight", "1.bias"}
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())


def test_eval_really_uses_ema_weights():
    """The RAE defect: "EMA" evaluation ran the live weights. Outputs inside `swapped` must equal a
    model loaded with the EMA weights, differ from the live model, and the live weights come back."""
    torch.manual_seed(0)
    live = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    ema = EMA(live, decay=0.5)
    opt = torch.optim.SGD(live.parameters(), lr=0.5)
    for _ in range(3):
        live(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update(live)
    compiled_like = torch.nn.Sequential(live)  # a wrapper holding the same parameter tensors
    x = torch.randn(3, 4)
    live_out = live(x).detach()
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    reference.load_state_dict(ema.export_state_dict(live))
    with ema.swapped(live):
        ema_out = compiled_like(x).detach()
    assert torch.allclose(ema_out, reference(x), atol=1e-6)
    assert not torch.allclose(ema_out, live_out, atol=1e-3)
    assert torch.equal(live(x).detach(), live_out)  # live weights restored


def test_ema_swap_restores_on_error_and_state_round_trip():
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.9)
    before = m.weight.detach().clone()
    with torch.no_grad():
        ema.shadow["weight"].add_(1.0)
    with pytest.raises(RuntimeError):
        with ema.swapped(m):
            raise RuntimeError("boom")
    assert torch.equal(m.weight, before)
    other = EMA(m, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError):
        EMA(torch.nn.Linear(3, 3), 0.9).update(m)
