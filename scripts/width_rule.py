"""The RAE paper's width rule at toy scale: overfit ONE latent with DiTs narrower than, equal to and
wider than the token channel count C (RAE paper section 4, single-image experiment).

    python scripts/width_rule.py [--quick] [--channels C] [--steps S]

Why the bound is (C - w) / C, and why the printed loss is comparable to it: the prediction at each
token is `final_layer.linear(h) = W h + b` with W of shape [C, w], so it lies in a fixed affine
subspace of dimension <= w. The target is v = eps - x0 with x0 fixed; the part of eps orthogonal to
that subspace (dimension >= C - w) can never be predicted, and for eps ~ N(0, I) its expected
squared norm is C - w per token. So the loss, as a mean over tokens *and channels* of the squared
velocity error with unit-variance Gaussian noise, is >= (C - w) / C at every t, whatever x0 is.
`final_loss` below is exactly that quantity: `flow_matching_loss` (per-element MSE) averaged over
`--eval-draws` fresh (t, eps) pairs, t uniform in (0, 1), after training. The latent is per-token
layer-normalised (unit variance per element, the Scale-RAE latent normalisation), so the numbers
also match the paper's setting.

The last line printed is one JSON object:
{"C": C, "results": [{"width": w, "final_loss": x, "bound": max(0, (C - w) / C)}, ...]}.
`--quick` runs in about a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from unimodal.dit import DiT, DiTConfig
from unimodal.dit.flow import flow_matching_loss, sample_time


def make_latent(num_tokens: int, channels: int, seed: int) -> torch.Tensor:
    """A structured latent [1, N, C]: a smooth low-rank field plus detail, then per-token layer norm."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, channels, generator=g)
    coords = torch.linspace(0, 1, num_tokens)[:, None]
    weights = torch.cat([torch.sin(3 * coords), torch.cos(5 * coords), coords, 1 - coords], dim=1)  # [N, 4]
    x = weights @ basis + 0.5 * torch.randn(num_tokens, channels, generator=g)
    return F.layer_norm(x, (channels,), eps=1e-6)[None]


def overfit(width: int, x0: torch.Tensor, *, depth: int, steps: int, batch: int, lr: float, eval_draws: int,
            seed: int) -> float:
    N, C = x0.shape[1], x0.shape[2]
    cfg = DiTConfig(in_channels=C, num_tokens=N, hidden_size=width, depth=depth, num_heads=max(1, width // 16),
                    cond_mode="none", allow_narrow=True)
    torch.manual_seed(seed)
    model = DiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    g = torch.Generator().manual_seed(seed)
    x = x0.expand(batch, -1, -1)
    for _ in range(steps):
        t = sample_time(batch, dist="uniform", generator=g)
        loss = flow_matching_loss(model, x, None, t, torch.randn(x.shape, generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    ge = torch.Generator().manual_seed(seed + 1)
    total, chunk = 0.0, 256
    with torch.no_grad():
        for start in range(0, eval_draws, chunk):
            n = min(chunk, eval_draws - start)
            xe = x0.expand(n, -1, -1)
            t = sample_time(n, dist="uniform", generator=ge)
            total += n * flow_matching_loss(model, xe, None, t, torch.randn(xe.shape, generator=ge)).item()
    return total / eval_draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="C=32, 4 widths, ~1 minute on CPU")
    ap.add_argument("--channels", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None, help="DiT depth (default 1 quick, 2 full)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--eval-draws", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 with --quick: tiny models gain nothing from more, and "
                         "OpenMP spinning on a shared CPU made them several times slower; else torch's default)")
    args = ap.parse_args()
    threads = args.threads or (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    depth = args.depth or (1 if args.quick else 2)
    C = args.channels or (32 if args.quick else 64)
    steps = args.steps or (400 if args.quick else 2000)
    ratios = (0.25, 0.5, 1.0, 2.0) if args.quick else (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    widths = sorted({max(8, int(C * r) // 8 * 8) for r in ratios})
    x0 = make_latent(args.tokens, C, args.seed)
    results = []
    for w in widths:
        start = time.time()
        loss = overfit(w, x0, depth=depth, steps=steps, batch=args.batch, lr=args.lr,
                       eval_draws=args.eval_draws, seed=args.seed)
        bound = max(0.0, (C - w) / C)
        results.append({"width": w, "final_loss": round(loss, 5), "bound": round(bound, 5)})
        print(f"width {w:4d}  final loss {loss:.4f}  bound {bound:.4f}  ({time.time() - start:.1f}s)", flush=True)
    print(json.dumps({"C": C, "results": results}))


if __name__ == "__main__":
    main()
