"""Speed and memory of the RAE-DiT: one training step and 50-step sampling, fp32 and bf16 autocast.

    python scripts/bench_dit.py [--configs tiny S] [--device cpu|cuda] [--sample-steps K] [--threads T]

For each config (class-conditional, shapes below) and precision it measures
- `train_step_ms`: forward + backward + AdamW step on a batch of `--batch`, median of `--iters`;
- `sample_ms_per_image_cfg_off` / `_cfg_on`: Euler sampling time per image for 50 steps with
  guidance scale 1 (one B-wide forward per step) and 4.0 (one 2B-wide forward per step). Only
  `--sample-steps` steps are run (default 50 on GPU, 4 on CPU) and the time is scaled to 50, which
  is fair for Euler because every step costs the same forward.
On CPUs without native bf16 (no AMX / AVX512-BF16) bf16 autocast is emulated and much slower than
fp32; the numbers say so rather than hide it.
The last line printed is one JSON object with every measurement and the process's peak RSS (MiB).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time

import torch

from unimodal.dit import DiT, count_parameters, dit_config
from unimodal.dit.flow import dimension_shift, flow_matching_loss, sample_time
from unimodal.dit.sampling import SamplerConfig, noise_from_seeds, sample

# Latent shapes: tiny is the test scale; S runs on 256 tokens of 384 channels (a ViT-S encoder),
# the widest latent S may model under the width rule.
SHAPES = {"tiny": dict(), "S": dict(in_channels=384, num_tokens=256)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def bench_train(model: DiT, batch: int, iters: int, device: torch.device, bf16: bool) -> float:
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, cfg.num_tokens, cfg.in_channels, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    shift = dimension_shift(cfg.num_tokens, cfg.in_channels)
    times = []
    for i in range(iters + 1):  # the first iteration warms up allocators and kernels
        sync(device)
        start = time.perf_counter()
        with autocast(device, bf16):
            loss = flow_matching_loss(model, x, y, sample_time(batch, shift=shift, device=device), torch.randn_like(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_sample(model: DiT, batch: int, steps: int, scale: float, device: torch.device, bf16: bool) -> float:
    cfg = model.config
    noise = noise_from_seeds(range(batch), cfg.num_tokens, cfg.in_channels, device)
    y = torch.arange(batch, device=device) % cfg.num_classes
    sampler = SamplerConfig(num_inference_steps=steps, guidance_scale=scale)
    with autocast(device, bf16):
        sample(model, noise[:1], y[:1], sampler.replace(num_inference_steps=1))  # warm-up
        sync(device)
        start = time.perf_counter()
        sample(model, noise, y, sampler)
        sync(device)
    return 1000 * (time.perf_counter() - start) / batch * 50 / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "S"], choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=2, help="timed training steps after one warm-up step")
    ap.add_argument("--sample-batch", type=int, default=2)
    ap.add_argument("--sample-steps", type=int, default=None, help="Euler steps actually run (default 50 GPU / 4 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.sample_steps or (50 if device.type == "cuda" else 4)
    results = []
    for name in args.configs:
        cfg = dit_config(name, **SHAPES[name])
        for bf16 in (False, True):
            torch.manual_seed(0)
            model = DiT(cfg).to(device)
            train_ms = bench_train(model.train(), args.batch, args.iters, device, bf16)
            model.eval()
            off = bench_sample(model, args.sample_batch, steps, 1.0, device, bf16)
            on = bench_sample(model, args.sample_batch, steps, 4.0, device, bf16)
            row = {"config": name, "params": count_parameters(cfg), "tokens": cfg.num_tokens, "channels": cfg.in_channels,
                   "precision": "bf16-autocast" if bf16 else "fp32", "train_batch": args.batch,
                   "train_step_ms": round(train_ms, 2), "sample_ms_per_image_cfg_off": round(off, 1),
                   "sample_ms_per_image_cfg_on": round(on, 1)}
            results.append(row)
            print(row, flush=True)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    out = {"device": str(device), "threads": torch.get_num_threads(), "sample_steps_run": steps,
           "results": results, "peak_rss_mib": round(peak_mib, 1)}
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
