"""ODE samplers with classifier-free guidance and autoguidance: guidance lives here, not in the network.

The model is any callable `model(x [B, N, C], t [B], cond, drop=bool [B] | None) -> velocity`.
Integration runs from exactly t = 1 (pure noise) to exactly t = 0 over the shifted grid of
`flow.sampling_times`; the defects of the Scale-RAE reference sampler (guidance never
applied, t = 1 skipped, stopping at t ~ 0.008 then stepping back toward noise) are each pinned by a
test in tests/test_dit_sampling.py.

Guidance, with the guided velocity u + w (c - u):
- "cfg" (Ho & Salimans 2022): c and u are the conditional and null-condition outputs of the same
  model, computed in ONE batched forward of 2B samples.
- "autoguidance" (Karras et al. 2024, used for the RAE paper's best ImageNet numbers): u is the
  conditional output of a weaker `guide_model` (a small or early checkpoint of the same model).
With w == 1, or at a t outside `guidance_interval` (Kynkaanniemi et al. 2024), only the conditional
output is computed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import torch

from unimodal.config import Config, ConfigError
from unimodal.dit.flow import check_shift, resolve_shift, sampling_times

Model = Callable[..., torch.Tensor]


@dataclasses.dataclass
class SamplerConfig(Config):
    method: Literal["euler", "heun"] = "euler"
    num_inference_steps: int = 50
    shift: float | None = None       # None = dimension shift of the latent shape, sqrt(N * C / 4096)
    guidance: Literal["cfg", "autoguidance"] = "cfg"
    guidance_scale: float = 1.0      # w; 1 = no guidance
    guidance_interval: tuple[float, float] | None = None  # guide only for t_min <= t <= t_max

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ConfigError(f"sampler.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        check_shift(self.shift, "sampler.shift", "dimension shift")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval = tuple(float(v) for v in self.guidance_interval)
            if not 0.0 <= lo < hi <= 1.0:
                raise ConfigError(f"sampler.guidance_interval must satisfy 0 <= t_min < t_max <= 1, got {[lo, hi]}")

    def guided_at(self, t: float) -> bool:
        if self.guidance_scale == 1.0:
            return False
        if self.guidance_interval is None:
            return True
        lo, hi = self.guidance_interval
        return lo <= t <= hi


def noise_from_seeds(seeds: Sequence[int], num_tokens: int, channels: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Initial noise [B, N, C], sample b drawn from its own CPU generator seeded seeds[b], so any
    image can be regenerated from its seed alone, whatever the batch or device."""
    out = torch.empty(len(seeds), num_tokens, channels)
    for b, seed in enumerate(seeds):
        out[b] = torch.randn(num_tokens, channels, generator=torch.Generator().manual_seed(int(seed)))
    return out.to(device)


def guided_velocity(model: Model, x: torch.Tensor, t: float, cond: torch.Tensor | None, sampler: SamplerConfig,
                    guide_model: Model | None = None) -> torch.Tensor:
    """The velocity the sampler integrates at time t (a python float), guided when `sampler` says so."""
    B = x.shape[0]
    tt = torch.full((B,), t, device=x.device, dtype=torch.float32)
    keep = None if cond is None else torch.zeros(B, dtype=torch.bool, device=x.device)
    if not sampler.guided_at(t):
        return model(x, tt, cond, drop=keep)
    if sampler.guidance == "cfg":
        drop = torch.cat([keep, torch.ones_like(keep)])
        both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, cond]), drop=drop)  # [2B, N, C]
        c, u = both.chunk(2)
    else:
        c = model(x, tt, cond, drop=keep)
        u = guide_model(x, tt, cond, drop=keep)
    return u + sampler.guidance_scale * (c - u)


@torch.no_grad()
def sample(model: Model, noise: torch.Tensor, cond: torch.Tensor | None = None, sampler: SamplerConfig | None = None,
           guide_model: Model | None = None, start: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v from x(start) = noise [B, N, C] to x(0); returns the latent at t = 0.

    `start` < 1 begins from a partly noised latent x_start = (1 - start) x + start eps (SDEdit, Meng
    et al. 2022) and runs only the grid's steps below it.

    Euler uses num_inference_steps model evaluations (each one forward, 2B wide when CFG is active).
    Heun adds a corrector at t_{i+1} except on the last step to t = 0, as EDM's Algorithm 1 does
    (Karras et al. 2022), so it costs 2 * num_inference_steps - 1 evaluations.
    """
    sampler = sampler or SamplerConfig()
    if sampler.guidance_scale != 1.0:
        if sampler.guidance == "cfg" and cond is None:
            raise ValueError("classifier-free guidance needs a condition; use guidance_scale 1 for an unconditional model")
        if sampler.guidance == "autoguidance" and guide_model is None:
            raise ValueError("guidance 'autoguidance' needs guide_model (a weaker checkpoint of the same model)")
    if guide_model is not None and (sampler.guidance != "autoguidance" or sampler.guidance_scale == 1.0):
        raise ValueError("guide_model is only used with guidance 'autoguidance' and guidance_scale != 1")
    if noise.dim() != 3:
        raise ValueError(f"noise must be [B, N, C], got {tuple(noise.shape)}")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    times = sampling_times(sampler.num_inference_steps, resolve_shift(sampler.shift, noise.shape[1], noise.shape[2]))
    times = [start] + [t for t in times.tolist() if t < start]
    steps = len(times) - 1

    x = noise.float()
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        h = t_next - t                                   # negative: integrating toward data
        v = guided_velocity(model, x, t, cond, sampler, guide_model).float()
        x_euler = x + h * v
        if sampler.method == "euler" or t_next == 0.0:
            x = x_euler
        else:
            v_next = guided_velocity(model, x_euler, t_next, cond, sampler, guide_model).float()
            x = x + 0.5 * h * (v + v_next)
    return x
