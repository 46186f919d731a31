"""Samplers: the t grid each model call sees, guidance arithmetic, interval, autoguidance, seeding."""
import pytest
import torch

from unimodal.config import ConfigError
from unimodal.dit import DiT, dit_config
from unimodal.dit.flow import sampling_times
from unimodal.dit.sampling import SamplerConfig, guided_velocity, noise_from_seeds, sample


class Recorder:
    """A fake velocity model: v = 0.5 x + t + (label if kept else 0); records every call."""

    def __init__(self, bias: float = 0.0):
        self.calls = []
        self.bias = bias

    def __call__(self, x, t, cond, drop=None):
        self.calls.append({"batch": x.shape[0], "t": t.clone(), "drop": None if drop is None else drop.clone()})
        v = 0.5 * x + t[:, None, None] + self.bias
        if cond is not None:
            keep = torch.ones_like(t) if drop is None else (~drop).float()
            v = v + (cond.float() * keep)[:, None, None]
        return v


def test_euler_times_exact_and_count():
    rec = Recorder()
    x = sample(rec, torch.randn(2, 4, 3), None, SamplerConfig(num_inference_steps=5, shift=3.0))
    ts = [c["t"][0].item() for c in rec.calls]
    assert len(ts) == 5
    assert ts[0] == 1.0                                    # the first evaluation is at pure noise
    grid = sampling_times(5, 3.0).float().tolist()
    assert ts == grid[:-1]
    assert x.shape == (2, 4, 3)


def test_heun_times_and_count():
    rec = Recorder()
    sample(rec, torch.randn(2, 4, 3), None, SamplerConfig(method="heun", num_inference_steps=4, shift=2.0))
    ts = [c["t"][0].item() for c in rec.calls]
    assert len(ts) == 2 * 4 - 1
    assert ts[0] == 1.0 and 0.0 not in ts                  # no corrector at t = 0
    grid = sampling_times(4, 2.0).float().tolist()
    assert ts == [grid[0], grid[1], grid[1], grid[2], grid[2], grid[3], grid[3]]


def test_final_state_is_at_t0():
    """For v = eps - x0 with a known x0, the exact ODE solution lands on x0; Euler is exact here
    because v is constant along the straight path, so the sampler must end exactly at t = 0."""
    x0 = torch.randn(2, 4, 3)
    noise = torch.randn(2, 4, 3)
    oracle = lambda x, t, cond, drop=None: noise - x0
    for method in ("euler", "heun"):
        out = sample(oracle, noise, None, SamplerConfig(method=method, num_inference_steps=7, shift=6.93))
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_default_shift_is_dimension_shift():
    rec = Recorder()
    sample(rec, torch.randn(1, 64, 256), None, SamplerConfig(num_inference_steps=3))   # sqrt(64 * 256 / 4096) = 2
    assert [c["t"][0].item() for c in rec.calls] == sampling_times(3, 2.0).float().tolist()[:-1]


def test_guidance_scale_one_is_the_conditional_output_in_one_forward():
    labels = torch.tensor([1, 2])
    rec = Recorder()
    noise = torch.randn(2, 4, 3)
    out = sample(rec, noise, labels, SamplerConfig(num_inference_steps=4, guidance_scale=1.0, shift=1.0))
    assert all(c["batch"] == 2 and not c["drop"].any() for c in rec.calls)
    cond_only = sample(Recorder(), noise, labels, SamplerConfig(num_inference_steps=4, shift=1.0))
    torch.testing.assert_close(out, cond_only)


def test_cfg_is_one_batched_forward_and_changes_the_output():
    labels = torch.tensor([1, 2])
    noise = torch.randn(2, 4, 3)
    rec = Recorder()
    out = sample(rec, noise, labels, SamplerConfig(num_inference_steps=4, guidance_scale=3.0, shift=1.0))
    assert len(rec.calls) == 4
    for c in rec.calls:
        assert c["batch"] == 4 and c["drop"].tolist() == [False, False, True, True]
    assert not torch.allclose(out, sample(Recorder(), noise, labels, SamplerConfig(num_inference_steps=4, shift=1.0)))


def test_guided_velocity_formula():
    x, labels = torch.randn(2, 4, 3), torch.tensor([1.0, -2.0])
    rec = Recorder()
    v = guided_velocity(rec, x, 0.5, labels, SamplerConfig(guidance_scale=4.0))
    u = 0.5 * x + 0.5
    c = u + labels[:, None, None]
    torch.testing.assert_close(v, u + 4.0 * (c - u))


def test_guidance_interval():
    rec = Recorder()
    cfg = SamplerConfig(num_inference_steps=10, shift=1.0, guidance_scale=2.0, guidance_interval=(0.35, 0.65))
    sample(rec, torch.randn(2, 4, 3), torch.tensor([1, 2]), cfg)
    for c in rec.calls:
        t = c["t"][0].item()
        assert c["batch"] == (4 if 0.35 <= t <= 0.65 else 2), t
    assert sum(c["batch"] == 4 for c in rec.calls) == 3      # t = 0.6, 0.5, 0.4


def test_autoguidance():
    labels = torch.tensor([1, 2])
    main, weak = Recorder(), Recorder(bias=1.0)
    x = torch.randn(2, 4, 3)
    v = guided_velocity(main, x, 0.5, labels, SamplerConfig(guidance="autoguidance", guidance_scale=2.0), guide_model=weak)
    c = 0.5 * x + 0.5 + labels[:, None, None]
    torch.testing.assert_close(v, (c + 1.0) + 2.0 * (c - (c + 1.0)))
    assert main.calls[0]["batch"] == 2 and not main.calls[0]["drop"].any()
    with pytest.raises(ValueError, match="guide_model"):
        sample(main, x, labels, SamplerConfig(guidance="autoguidance", guidance_scale=2.0))


def test_guidance_errors():
    with pytest.raises(ValueError, match="needs a condition"):
        sample(Recorder(), torch.randn(1, 4, 3), None, SamplerConfig(guidance_scale=2.0))
    with pytest.raises(ConfigError):
        SamplerConfig(guidance_interval=(0.6, 0.3))
    with pytest.raises(ConfigError):
        SamplerConfig(num_inference_steps=0)


def test_seeded_noise_is_per_sample():
    a = noise_from_seeds([3, 4, 5], 4, 2)
    b = noise_from_seeds([5], 4, 2)
    torch.testing.assert_close(a[2], b[0])
    assert not torch.allclose(a[0], a[1])


def test_real_model_cfg_and_reproducibility():
    torch.manual_seed(0)
    model = DiT(dit_config("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    labels = torch.tensor([1, 7])
    plain, guided = SamplerConfig(num_inference_steps=3), SamplerConfig(num_inference_steps=3, guidance_scale=3.0, method="heun")
    a = sample(model, noise_from_seeds([0, 1], 16, 32), labels, guided)
    b = sample(model, noise_from_seeds([0, 1], 16, 32), labels, guided)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, sample(model, noise_from_seeds([0, 1], 16, 32), labels, plain.replace(method="heun")))


def test_start_below_one_runs_only_the_steps_below_it():
    """SDEdit: from x(start) the sampler visits start, then the grid's times below it; the exact
    velocity of a point mass x* ((x - x*) / t) lands on x* from there in any number of steps."""
    target = torch.randn(2, 4, 3)
    seen = []

    def point_mass(x, t, cond, drop=None):
        seen.append(t[0].item())
        return (x - target) / t[:, None, None]

    sampler = SamplerConfig(num_inference_steps=10, shift=3.0)
    x0 = sample(point_mass, 0.6 * target + 0.4 * torch.randn(2, 4, 3), None, sampler, start=0.4)
    below = [t for t in sampling_times(10, 3.0).tolist() if t < 0.4][:-1]
    assert seen == pytest.approx([0.4] + below)
    assert torch.allclose(x0, target, atol=1e-5)
    with pytest.raises(ValueError, match="start"):
        sample(point_mass, target, None, sampler, start=0.0)
