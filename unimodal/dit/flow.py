"""Flow matching as pure functions (RAE paper section 4, Scale-RAE section 3), outside the network.

Convention: x_t = (1 - t) x + t eps, so t = 1 is pure noise and t = 0 is data; the network predicts
the velocity v = dx_t/dt = eps - x; the loss is the plain per-element MSE.

The dimension-dependent shift (alpha in RAE paper section 4.2; the resolution shift of Esser et al.
2024, SD3, and `shift` in diffusers' FlowMatchEulerDiscreteScheduler): shift = sqrt(m / base) with
m = tokens x channels and base 4096, and t' = shift t / (1 + (shift - 1) t).
It moves both the training times and the sampling grid toward noise, because a high-dimensional
latent keeps its signal visible at noise levels where a 4096-dim latent would already be gone.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from unimodal.config import ConfigError

SHIFT_BASE = 4096
TimeDist = Literal["logit_normal", "uniform"]


def dimension_shift(num_tokens: int, channels: int, base: int = SHIFT_BASE) -> float:
    """sqrt(tokens * channels / base): 6.93 for 256 x 768, 8.49 for 256 x 1152."""
    if num_tokens < 1 or channels < 1 or base < 1:
        raise ValueError(f"dimension_shift needs positive sizes, got tokens={num_tokens} channels={channels} base={base}")
    return math.sqrt(num_tokens * channels / base)


def resolve_shift(shift: float | None, num_tokens: int, channels: int) -> float:
    """The shift a setting means: itself, or the dimension shift of the latent [N, C] when None
    (the default of every config that has a shift: training, sampling, the unified model)."""
    return dimension_shift(num_tokens, channels) if shift is None else shift


def check_shift(shift: float | None, key: str, null_means: str) -> None:
    """Validate a config's shift setting: > 0, or None, which means `null_means`."""
    if shift is not None and shift <= 0:
        raise ConfigError(f"{key} must be > 0 or null ({null_means}), got {shift}")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = shift t / (1 + (shift - 1) t); maps 0 -> 0 and 1 -> 1, and shift = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def sample_time(batch: int, *, dist: TimeDist = "logit_normal", shift: float = 1.0, mean: float = 0.0,
                std: float = 1.0, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Training times [B] in (0, 1): logit-normal(mean, std) (SD3, Esser et al. 2024) or uniform, then shifted."""
    if dist == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    elif dist == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    else:
        raise ValueError(f"unknown time distribution {dist!r}; use 'logit_normal' or 'uniform'")
    return shift_time(t, shift)


def sample_drop(batch: int, p: float, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor | None:
    """Condition dropout for classifier-free guidance (Ho & Salimans 2022): bool [B], True (use the
    null condition) with probability p; None when p is 0. Drawn from `generator`, like the time and
    noise of the same step, so a resumed run drops the same samples."""
    if p == 0:
        return None
    return torch.rand(batch, generator=generator, device=device) < p


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t eps, t [B] broadcast over the token and channel axes."""
    tb = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return (1 - tb) * x + tb * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x


def flow_matching_loss(model: Callable[..., torch.Tensor], x: torch.Tensor, cond: torch.Tensor | None,
                       t: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the predicted velocity at (x_t, t); a scalar.

    With unit-variance noise the per-element mean makes losses of different latent shapes
    comparable (the width-rule bound (C - d) / C is stated in this unit).
    """
    pred = model(interpolate(x, noise, t), t, cond, drop=drop)
    return F.mse_loss(pred.float(), velocity_target(x, noise).float())


def sampling_times(num_inference_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The ODE grid [num_inference_steps + 1] from exactly 1 to exactly 0, uniform in t before the shift.

    Computed in float64 and pinned at both ends, so the first model call sees t = 1 and the last
    state lies at t = 0 (the Scale-RAE reference started below 1 and stopped near 0.008).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    u = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64)
    grid = shift_time(u, shift)
    grid[0], grid[-1] = 1.0, 0.0
    return grid
