"""Reconstruction metrics on images in [0, 1]: PSNR and SSIM, per image."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(recon: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, [B]; computed in float64 so identical images give +inf, not noise."""
    mse = (recon.double() - target.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]                    # [size, size]


def ssim(recon: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), [B]: 11x11 Gaussian window (sigma 1.5),
    K1 = 0.01, K2 = 0.03, population (co)variances, "valid" windows only, mean over channels and
    positions (what skimage's `structural_similarity(gaussian_weights=True, use_sample_covariance=False)`
    computes, up to its border handling)."""
    if recon.shape != target.shape or recon.ndim != 4:
        raise ValueError(f"ssim expects two [B, C, H, W] tensors of one shape, got {tuple(recon.shape)} and {tuple(target.shape)}")
    if min(recon.shape[-2:]) < window:
        raise ValueError(f"ssim needs images of at least {window}x{window}, got {tuple(recon.shape[-2:])}")
    x, y = recon.double(), target.double()
    c = x.shape[1]
    w = _gaussian_window(window, sigma, x.device, x.dtype).expand(c, 1, window, window)
    blur = lambda t: F.conv2d(t, w, groups=c)   # noqa: E731  [B, C, H-w+1, W-w+1]
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()
