"""Flow matching pure functions: path, target, time sampling, dimension shift, condition dropout, sampling grid."""
import math

import pytest
import torch

from unimodal.dit.flow import (
    dimension_shift,
    flow_matching_loss,
    interpolate,
    resolve_shift,
    sample_drop,
    sample_time,
    sampling_times,
    shift_time,
    velocity_target,
)


def test_shift_values():
    assert dimension_shift(256, 768) == pytest.approx(math.sqrt(48)) == pytest.approx(6.928, abs=1e-3)
    assert dimension_shift(256, 1152) == pytest.approx(math.sqrt(72)) == pytest.approx(8.485, abs=1e-3)
    assert dimension_shift(1024, 4) == pytest.approx(1.0)
    assert resolve_shift(None, 256, 768) == dimension_shift(256, 768) and resolve_shift(2.5, 256, 768) == 2.5


def test_shift_time_endpoints_and_direction():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    s = shift_time(t, 6.93)
    assert s[0] == 0.0 and s[-1] == 1.0
    assert (s[1:3] > t[1:3]).all()          # shift > 1 moves times toward noise
    torch.testing.assert_close(shift_time(t, 1.0), t)
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)


def test_path_and_target():
    x, eps = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    t = torch.tensor([0.0, 1.0])
    xt = interpolate(x, eps, t)
    torch.testing.assert_close(xt[0], x[0])
    torch.testing.assert_close(xt[1], eps[1])         # t = 1 is pure noise
    # v is d x_t / d t along the straight path
    h = 1e-3
    tm = torch.tensor([0.3, 0.7], dtype=torch.float64)
    fd = (interpolate(x.double(), eps.double(), tm + h) - interpolate(x.double(), eps.double(), tm)) / h
    torch.testing.assert_close(fd, velocity_target(x, eps).double())


def test_loss_is_mse_of_velocity():
    x, eps, t = torch.randn(3, 4, 2), torch.randn(3, 4, 2), torch.rand(3)
    seen = {}

    def model(xt, tt, cond, drop=None):
        seen["xt"], seen["t"] = xt, tt
        return torch.zeros_like(xt)

    loss = flow_matching_loss(model, x, None, t, eps)
    torch.testing.assert_close(loss, ((eps - x) ** 2).mean())
    torch.testing.assert_close(seen["xt"], interpolate(x, eps, t))
    assert seen["t"] is t


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_time(20000, generator=g)
    assert 0 < t.min() and t.max() < 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)     # logit-normal(0, 1) is symmetric
    u = sample_time(20000, dist="uniform", generator=g)
    assert u.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.01)
    shifted = sample_time(20000, shift=dimension_shift(256, 768), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, shift_time(t, math.sqrt(48)))
    with pytest.raises(ValueError):
        sample_time(4, dist="beta")


def test_condition_dropout_is_drawn_from_the_given_generator():
    drop = sample_drop(20000, 0.1, generator=torch.Generator().manual_seed(0))
    assert drop.dtype == torch.bool and drop.float().mean().item() == pytest.approx(0.1, abs=0.01)
    torch.testing.assert_close(drop, sample_drop(20000, 0.1, generator=torch.Generator().manual_seed(0)))
    assert sample_drop(8, 0.0) is None       # nothing to drop, and no draw from the generator


def test_sampling_grid_exact_endpoints():
    for steps, shift in [(1, 1.0), (7, 6.928), (50, 8.485)]:
        grid = sampling_times(steps, shift)
        assert len(grid) == steps + 1
        assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
        assert (grid[1:] < grid[:-1]).all()
    grid = sampling_times(4, 3.0)
    torch.testing.assert_close(grid, shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64), 3.0))
