import math

import pytest
import torch

from unimodal.config import ConfigError
from unimodal.train.config import TrainConfig
from unimodal.train.engine import TrainEngine, fill_deepspeed_config


def toy(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def run(accum, micro, x, y, steps=2, **cfg):
    model = toy()
    cfg = TrainConfig(**{"lr": 1e-2, "grad_accum": accum, "batch_size": micro, "grad_clip": 0.3,
                         "weight_decay": 0.1, "warmup_steps": 1, "total_steps": 10, **cfg})
    engine = TrainEngine(model, cfg)
    outs = []
    for step in range(steps):
        engine.set_lr(step)
        for i in range(accum):
            sl = slice(step * accum * micro + i * micro, step * accum * micro + (i + 1) * micro)
            loss = (engine(x[sl]) - y[sl]).pow(2).mean()
            engine.backward(loss)
            out = engine.step()
            assert (out is None) == (i < accum - 1)
        outs.append(out)
    return flat(model), outs


@pytest.mark.parametrize("accum", [3, 4])
def test_grad_accumulation_matches_one_big_batch(accum):
    """The RAE defect: accumulation only worked at 1. accum=k with micro b == accum=1 with batch k*b."""
    torch.manual_seed(1)
    b = 5
    x, y = torch.randn(2 * accum * b, 6), torch.randn(2 * accum * b, 2)
    big, big_out = run(1, accum * b, x, y)
    acc, acc_out = run(accum, b, x, y)
    assert torch.allclose(big, acc, atol=1e-6), (big - acc).abs().max()
    assert big_out[-1].grad_norm == pytest.approx(acc_out[-1].grad_norm, rel=1e-5)
    assert acc_out[-1].optimizer_steps == 2 and acc_out[-1].stepped


def test_clipping_reports_pre_clip_norm_and_clips_before_the_update():
    model = toy()
    engine = TrainEngine(model, TrainConfig(grad_clip=1e-3))
    seen = []
    engine.optimizer.step = lambda: seen.append(float(torch.nn.utils.get_total_norm(
        [p.grad for p in model.parameters()])))
    engine.backward((model(torch.randn(4, 6)) * 100).sum())
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    out = engine.step()
    assert out.grad_norm == pytest.approx(norm, rel=1e-6) and out.grad_norm > 1.0
    assert seen == [pytest.approx(1e-3, rel=1e-3)]


def test_param_groups_keep_their_own_lr_and_betas():
    model = toy()
    groups = [{"params": model[0].parameters(), "lr": 1e-4, "betas": (0.9, 0.999), "name": "llm"},
              {"params": model[2].parameters(), "name": "dit"}]
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)
    engine = TrainEngine(model, cfg, groups)
    g0, g1 = engine.optimizer.param_groups
    assert g0["betas"] == (0.9, 0.999) and g1["betas"] == (0.9, 0.95)
    assert engine.set_lr(4) == pytest.approx([0.5e-4, 0.5e-3])
    assert engine.lrs() == pytest.approx([0.5e-4, 0.5e-3])
    assert engine.set_lr(110) == pytest.approx([1e-5, 1e-4])  # the floor scales with the group's peak
    with pytest.raises(ValueError, match="more than one group"):
        TrainEngine(model, cfg, [{"params": model.parameters()}, {"params": model[0].parameters()}])
    with pytest.raises(ValueError, match="not in the module"):
        TrainEngine(model, cfg, [{"params": toy().parameters()}])


def test_non_finite_gradients_skip_the_update():
    model = toy()
    before = flat(model)
    engine = TrainEngine(model, TrainConfig())
    engine.backward(model(torch.full((2, 6), float("nan"))).sum())
    out = engine.step()
    assert not out.stepped and math.isnan(out.grad_norm) and out.optimizer_steps == 0
    assert torch.equal(flat(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_bf16_autocast_context_runs_attention_on_the_cpu_math_kernel():
    model = toy()
    engine = TrainEngine(model, TrainConfig(bf16=True))
    flash = torch.backends.cuda.flash_sdp_enabled   # the backend switches that sdpa_kernel sets, CPU included
    with engine.autocast():
        assert engine(torch.randn(2, 6)).dtype == torch.bfloat16
        assert not flash() and torch.backends.cuda.math_sdp_enabled()
    assert flash()
    fp32 = TrainEngine(toy(), TrainConfig())
    with fp32.autocast():
        assert fp32.module(torch.randn(2, 6)).dtype == torch.float32 and flash()


def test_deepspeed_config_is_filled_from_train_config():
    ds = fill_deepspeed_config({"train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
                                "zero_optimization": {"stage": 2}},
                               micro_batch=4, grad_accum=3, world_size=2, grad_clip=None, bf16=True)
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 0.0 and ds["bf16"]["enabled"]
    same = fill_deepspeed_config({"gradient_accumulation_steps": 3}, micro_batch=4, grad_accum=3, world_size=1,
                                 grad_clip=1.0, bf16=False)
    assert same["gradient_accumulation_steps"] == 3
    for bad in ({"gradient_accumulation_steps": 2}, {"train_batch_size": 8}, {"bf16": {"enabled": False}},
                {"optimizer": {"type": "AdamW"}}, {"fp16": {"enabled": True}}):
        with pytest.raises(ConfigError):
            fill_deepspeed_config(bad, micro_batch=4, grad_accum=3, world_size=1, grad_clip=1.0, bf16=True)


def test_shipped_deepspeed_configs_fill_cleanly():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
    for stage in range(4):
        raw = json.loads((root / f"zero{stage}.json").read_text())
        ds = fill_deepspeed_config(raw, micro_batch=2, grad_accum=2, world_size=2, grad_clip=1.0, bf16=False)
        assert ds["zero_optimization"]["stage"] == stage and ds["train_batch_size"] == 8


@pytest.mark.deepspeed
def test_two_deepspeed_engines_one_after_another_in_one_process(monkeypatch):
    """DeepSpeed caches its process groups in module globals; `cleanup` must drop them, or the
    second stage run in a process (a notebook, a test session) fails on destroyed groups."""
    from unimodal.utils.distributed import cleanup, init_distributed

    for port in ("29611", "29612"):
        monkeypatch.setenv("MASTER_PORT", port)
        dist = init_distributed("cpu")
        model = torch.nn.Linear(4, 2)
        engine = TrainEngine(model, TrainConfig(lr=1e-2, batch_size=2), deepspeed_config={"zero_optimization": {"stage": 2}},
                             dist=dist)
        loss = engine(torch.ones(2, 4)).square().mean()
        engine.backward(loss)
        assert engine.step() is not None
        assert model.weight._post_accumulate_grad_hooks  # ZeRO's gradient-reduction hook
        engine.close()  # the hook goes with the DeepSpeed engine; the module stays for export
        assert not model.weight._post_accumulate_grad_hooks
        with pytest.raises(RuntimeError, match="closed"):
            engine(torch.ones(2, 4))
        assert engine.module(torch.ones(2, 4)).shape == (2, 2)
        cleanup()
