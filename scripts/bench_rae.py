"""Throughput of the RAE: encode / decode images per second and one decoder training step, in ms.

Two sizes with random weights (no downloads): "tiny" (the test encoder + tiny decoder, 32 px) and
"vit-b" (a SigLIP-2 B/16-sized encoder at 256 px + the ViT-B decoder, patch 16), each in fp32 and
bf16 autocast. A training step is encode (no grad) + decode + L1 + backward + AdamW step.
The last printed line is one JSON object. On a CPU without native bf16 the vit-b bf16 row takes
several minutes (bf16 matmuls are emulated there); pass `--dtypes fp32` to skip it.

    python scripts/bench_rae.py [--device cuda] [--sizes tiny vit-b] [--iters 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time

import torch

from unimodal.rae import RAE, RAEConfig, decoder_preset, encoder_preset
from unimodal.rae.losses import l1_loss

SIZES = {
    # name: (encoder preset or overrides, decoder preset, decoder patch, default batch)
    "tiny": (encoder_preset("tiny-siglip2"), "tiny", 8, 16),
    "vit-b": (encoder_preset("siglip2-b-p16-256", pretrained=None, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072), "ViT-B", 16, 8),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, iters: int, device: torch.device) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench(name: str, dtype: str, iters: int, batch: int | None, device: torch.device) -> dict:
    enc_cfg, dec_name, patch, default_batch = SIZES[name]
    batch = batch or default_batch
    cfg = RAEConfig(encoder=enc_cfg, decoder=decoder_preset(dec_name, in_channels=enc_cfg.channels,
                                                            grid_size=enc_cfg.grid_size, patch_size=patch))
    torch.manual_seed(0)
    rae = RAE(cfg).to(device)
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    opt = torch.optim.AdamW(rae.decoder.parameters(), lr=1e-4)
    with autocast:
        z = rae.encode(images)

    def encode():
        with autocast:
            rae.encode(images)

    def decode():
        with torch.no_grad(), autocast:
            rae.decode(z)

    def step():
        with autocast:
            loss = l1_loss(rae.decode(rae.encode(images), clamp=False).float(), images)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rae.eval()
    t_enc, t_dec = _timed(encode, iters, device), _timed(decode, iters, device)
    rae.train()
    t_step = _timed(step, iters, device)
    return {"size": name, "dtype": dtype, "batch": batch, "image_size": cfg.image_size,
            "decoder_params_m": round(sum(p.numel() for p in rae.decoder.parameters()) / 1e6, 2),
            "encode_img_per_s": round(batch / t_enc, 2), "decode_img_per_s": round(batch / t_dec, 2),
            "train_step_ms": round(1000 * t_step, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (on CPU, vit-b uses 2 at batch 1)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for name in args.sizes:
        # ViT-B on a CPU takes seconds per image: a couple of single-image iterations.
        slow = name != "tiny" and device.type == "cpu"
        iters, batch = (min(args.iters, 2), args.batch or 1) if slow else (args.iters, args.batch)
        for dtype in args.dtypes:
            row = bench(name, dtype, iters, batch, device)
            print(json.dumps(row), flush=True)
            results.append(row)
    summary = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
               "threads": torch.get_num_threads(), "results": results,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
