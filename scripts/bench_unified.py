"""Latency of the unified model on the tiny config (CPU by default); the last line is one JSON object.

    python scripts/bench_unified.py [--num-inference-steps 8] [--repeats 3] [--device cpu]

Measures: generate one image (n=1, self-judged, decoded), best-of-8 (keep 1), caption one image
(16 new tokens, KV cache), one training step (joint loss, batch 12: forward + backward + AdamW),
and the process's peak resident memory. Each latency is the median of `--repeats` runs after one
warm-up run.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time

import torch

from unimodal.commands._args import add_steps_arg


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000.0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_steps_arg(parser, "--steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from unimodal.unified.data import TaskMix, make_batch
    from unimodal.unified.generate import caption, generate_images
    from unimodal.unified.loss import joint_loss
    from unimodal.unified.testing import tiny_model, toy_caption, toy_image, toy_pairs
    from unimodal.unified.trainable import configure_trainable, param_groups

    model = tiny_model(seed=0).to(args.device).eval()
    steps = args.num_inference_steps or model.config.num_inference_steps
    pairs = toy_pairs()
    images = torch.stack([toy_image(*p) for p in pairs]).to(args.device)
    captions = [toy_caption(*p) for p in pairs]

    gen1 = timed(lambda: generate_images(model, captions[0], n=1, num_inference_steps=steps), args.repeats)
    best8 = timed(lambda: generate_images(model, captions[0], n=8, keep=1, num_inference_steps=steps), args.repeats)
    cap = timed(lambda: caption(model, images=images[:1], max_new_tokens=16), args.repeats)

    configure_trainable(model, "full")
    model.train()
    opt = torch.optim.AdamW(param_groups(model, llm_lr=1e-4, dit_lr=1e-3))
    latents = model.encode_images(images)
    rng = random.Random(0)

    def step():
        batch = make_batch(model.chat, captions, TaskMix(), rng).to(args.device)
        loss = joint_loss(model, batch, latents).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_ms = timed(step, args.repeats)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux reports KiB
    result = {
        "config": "tiny", "device": args.device, "dit_steps": steps, "threads": torch.get_num_threads(),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "generate_n1_ms": round(gen1, 1), "best_of_8_ms": round(best8, 1), "caption_16tok_ms": round(cap, 1),
        "train_step_ms": round(train_ms, 1), "train_batch": len(captions), "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
