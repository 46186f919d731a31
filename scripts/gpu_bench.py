"""One GPU run of the released sizes: inference smoke, training-step MFU and sampling throughput;
the last stdout line is one JSON object.

    PYTHONPATH=. python scripts/gpu_bench.py                        # one H200, inside 10 minutes
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/gpu_bench.py --smoke   # the same code, tiny configs, CPU, seconds

Not yet run on a GPU. Its budget on an H200: estimated, from the FLOPs below at 30-50 % MFU, under
a minute each for parts 1 and 3; part 2 stops trying larger batches after `--train-budget-s` (240 s).
Every part's figures also go to stderr as it ends, so a run cut short still reports what it measured.

Three parts, each through the code a user runs:
1. `real_size_smoke.run` on the device in bf16: best-of-2 generation (2 steps), caption, verify.
2. A training step of the unified model at Scale-RAE-1.5B size (Qwen2.5-1.5B trained in full, the
   2.4B DiT, bridge; the frozen RAE is not in the step, its latents are given as a latent cache
   gives them): `joint_loss` under bf16 autocast with fp32 weights and AdamW, as the plain engine
   runs it, on a Scale-RAE task mix. The batch doubles until the GPU is full (out of memory or over
   `--mem-fraction`); each size reports tokens/s and MFU. Model FLOPs are counted from the configs
   (`train_step_flops`): 6 x matmul weights per trained token, plus attention.
3. Sampling: the DiT alone (`sample_latents`, bf16, `--sample-steps` Euler steps, no guidance) in
   latents/s, and end to end (`generate_images`: LLM pass, DiT, both judges, decoding the kept one)
   in candidates/s.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_size_smoke  # noqa: E402  (a sibling script, not a package)

H200_BF16_TFLOPS = 790.0   # dense bf16 matrix peak the MFU is quoted against

# Long enough to look like training captions (the toy tokenizer spells most words in several tokens).
CAPTIONS = [
    "a photo of a red bicycle leaning against a brick wall next to a green door on a quiet street",
    "two cats sleeping on a blue sofa in a sunlit living room with a wooden floor and a plant",
    "a bowl of oranges and a glass of water on a white kitchen table beside an open window",
    "a snowy mountain above a lake at sunrise with pine trees along the shore and a small boat",
    "a yellow school bus parked in front of a red building under a cloudy sky",
    "three wooden chairs around a round table in a small cafe with paintings on the walls",
    "a black dog running across a green field toward a tennis ball thrown by a child",
    "a city skyline at night with lit windows reflected in a river and a bridge on the left",
]


# ---------------------------------------------------------------------------- FLOPs
def llm_matmul_params(llm: Mapping[str, Any]) -> int:
    """Matmul weights one token meets in a Qwen2 decoder stack (no embedding, no LM head, no biases):
    per layer q and o (H x H), k and v (H x kv heads x head dim), gate, up and down (H x I)."""
    h, i = llm["hidden_size"], llm["intermediate_size"]
    kv = llm["num_key_value_heads"] * (h // llm["num_attention_heads"])
    return llm["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * i)


def dit_matmul_params(dit) -> tuple[int, int]:
    """(per token, per sample) matmul weights of a token-conditioned DiT forward, without biases.
    Per token: the embedder, each block's qkv, proj, SwiGLU and its adaLN modulation (per token in
    tokens mode), the final layer; DiT^DH adds the head's embedder, projector and blocks. Per
    sample: the timestep MLP."""
    from unimodal.dit.config import swiglu_hidden

    def block(d: int, cond: int, modulation_per_token: bool) -> tuple[int, int]:
        h = swiglu_hidden(d, dit.mlp_ratio)
        mats = 3 * d * d + d * d + 2 * d * h + h * d
        return (mats + 6 * d * cond, 0) if modulation_per_token else (mats, 6 * d * cond)

    d, c, cin = dit.hidden_size, dit.cond_dim, dit.in_channels
    per_token = cin * d
    per_sample = 512 * c + c * c
    per_tok = dit.cond_mode == "tokens"
    t, s = block(d, c, per_tok)
    per_token, per_sample = per_token + dit.depth * t, per_sample + dit.depth * s
    out_w, out_cond, out_per_tok = d, c, per_tok
    if dit.is_dh:
        hd = dit.head_hidden_size
        per_token += (d * hd if hd != d else 0) + cin * hd
        t, _ = block(hd, hd, True)
        per_token += dit.head_depth * t
        out_w, out_cond, out_per_tok = hd, hd, True
    final = out_w * cin
    if out_per_tok:
        per_token += final + 2 * out_w * out_cond
    else:
        per_token, per_sample = per_token + final, per_sample + 2 * out_w * out_cond
    return per_token, per_sample


def dit_attention_width(dit) -> int:
    """Sum over the DiT's blocks of their attention width (body and DiT^DH head)."""
    return dit.depth * dit.hidden_size + dit.head_depth * dit.head_hidden_size


def dit_forward_flops(dit) -> int:
    """One sample through the DiT forward: 2 per multiply-add, attention scores and values over N tokens."""
    per_tok, per_sample = dit_matmul_params(dit)
    return 2 * (per_tok * dit.num_tokens + per_sample) + 4 * dit_attention_width(dit) * dit.num_tokens ** 2


def train_step_flops(llm: Mapping[str, Any], dit, latent_dim: int, *, seq_lens: Sequence[int], labelled_tokens: int,
                     read_tokens: int, query_tokens: int, dit_samples: int, connector_depth: int = 1) -> dict[str, int]:
    """Model FLOPs of one `joint_loss` forward + backward (x 3 of the forward: 2 per multiply-add
    forward, 4 backward), from the configs and the batch's counts:
    - LLM: 6 x `llm_matmul_params` per real token (padding excluded), the LM head (H x V) on the
      labelled tokens only (the loss computes logits there only), attention 12 x layers x H x s^2
      per sequence (scores and values, the full square as in PaLM's count: no causal halving);
    - bridge: the projector (C x H, H x H) per read latent token, the connector per query token;
    - DiT: `dit_matmul_params` per noised token and per sample, attention over its N tokens.
    The frozen RAE is not in the step."""
    h, layers, vocab = llm["hidden_size"], llm["num_hidden_layers"], llm["vocab_size"]
    n = dit.num_tokens
    dc = dit.cond_dim
    per_tok, per_sample = dit_matmul_params(dit)
    dit_att = dit_attention_width(dit)
    out = {
        "llm": 6 * llm_matmul_params(llm) * sum(seq_lens),
        "lm_head": 6 * h * vocab * labelled_tokens,
        "llm_attention": 12 * layers * h * sum(s * s for s in seq_lens),
        "bridge": 6 * (latent_dim * h + h * h) * read_tokens + 6 * (h * dc + (connector_depth - 1) * dc * dc) * query_tokens,
        "dit": 6 * (per_tok * n + per_sample) * dit_samples,
        "dit_attention": 12 * dit_att * n * n * dit_samples,
    }
    out["total"] = sum(out.values())
    return out


def batch_flops(model, batch, fm_repeats: int = 1) -> dict[str, int]:
    from unimodal.unified.chat import IGNORE

    n = model.config.num_latent_tokens
    queries = int(batch.write_mask.sum())
    return train_step_flops(model.llm.config.to_dict(), model.dit.config, model.config.latent_dim,
                            seq_lens=batch.attention_mask.sum(1).tolist(),
                            labelled_tokens=int((batch.labels[:, 1:] != IGNORE).sum()),
                            read_tokens=int(batch.read_mask.sum()), query_tokens=queries,
                            dit_samples=queries // n * fm_repeats, connector_depth=model.config.connector_depth)


# ---------------------------------------------------------------------------- parts
def sig(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant digits (tiny smoke figures stay readable, not 0.0)."""
    return float(f"{x:.{digits}g}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def log(msg: str) -> None:
    print(f"[gpu_bench] {msg}", file=sys.stderr, flush=True)


def random_latents(b: int, n: int, c: int, device: str) -> torch.Tensor:
    """Per-token layer-normalised noise: the statistics of Scale-RAE's latents, for a step's timing."""
    return torch.nn.functional.layer_norm(torch.randn(b, n, c, device=device), (c,))


def train_at(model, opt, batch_size: int, *, device: str, steps: int, warmup: int, peak_tflops: float,
             seed: int = 0) -> dict:
    from unimodal.unified.data import TaskMix, make_batch
    from unimodal.unified.loss import joint_loss

    rng = random.Random(seed)
    mix = TaskMix(t2i=0.6, caption=0.25, judge=0.15)   # configs/unified_qwen1.5b_siglip2.yaml
    cfg = model.config
    batches = [make_batch(model.chat, [CAPTIONS[(i + k) % len(CAPTIONS)] for i in range(batch_size)], mix, rng).to(device)
               for k in range(warmup + steps)]
    latents = random_latents(batch_size, cfg.num_latent_tokens, cfg.latent_dim, device)
    params = [p for g in opt.param_groups for p in g["params"]]

    def step(batch) -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            loss = joint_loss(model, batch, latents).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:warmup]:
        step(b)
    sync(device)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    sync(device)
    seconds = (time.perf_counter() - t) / steps
    flops = [batch_flops(model, b)["total"] for b in batches[warmup:]]
    tokens = [int(b.attention_mask.sum()) for b in batches[warmup:]]
    images = [int(b.write_mask.sum()) // cfg.num_latent_tokens for b in batches[warmup:]]
    tflops = sum(flops) / steps / seconds / 1e12
    row = {"batch": batch_size, "step_s": sig(seconds), "tokens_per_s": sig(sum(tokens) / steps / seconds),
           "t2i_images_per_s": sig(sum(images) / steps / seconds), "tokens_per_step": sig(sum(tokens) / steps),
           "flops_per_step": sum(flops) // steps, "model_tflops_per_s": sig(tflops), "mfu": sig(tflops / peak_tflops)}
    if device.startswith("cuda"):
        row["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return row


def training(tiny: bool, device: str, batch_sizes: Sequence[int], *, steps: int, warmup: int, peak_tflops: float,
             mem_fraction: float, budget_s: float) -> tuple[dict, object]:
    """The doubling search; returns the report and the model (fp32) for the sampling part."""
    from unimodal.unified.trainable import configure_trainable, param_groups

    model = real_size_smoke.build_model(tiny, torch.float32, device)
    configure_trainable(model, "full")
    model.train()
    opt = torch.optim.AdamW(param_groups(model, llm_lr=5.65e-5, dit_lr=5.65e-4), weight_decay=0.0,
                            fused=device.startswith("cuda"))
    trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
    rows, stopped = [], "batch sizes exhausted"
    total = torch.cuda.get_device_properties(device).total_memory if device.startswith("cuda") else None
    started = time.perf_counter()
    for b in batch_sizes:
        if rows and time.perf_counter() - started > budget_s:
            stopped = f"time budget ({budget_s:.0f} s) spent before batch {b}"
            break
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        row = None
        try:
            row = train_at(model, opt, b, device=device, steps=steps, warmup=warmup, peak_tflops=peak_tflops)
        except torch.OutOfMemoryError:
            stopped = f"out of memory at batch {b}"
        if row is None:   # outside the handler: its traceback no longer holds the step's activations
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            log(stopped)
            break
        rows.append(row)
        log(f"train batch {b}: {row}")
        if total is not None and torch.cuda.max_memory_allocated() > mem_fraction * total:
            stopped = f"batch {b} used over {mem_fraction:.0%} of the GPU"
            break
    best = max(rows, key=lambda r: r["tokens_per_s"]) if rows else None
    del opt
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"trainable_params": trainable, "precision": "bf16 autocast, fp32 weights, AdamW", "rows": rows,
            "stopped": stopped, "best": best}, model


def sampling(model, device: str, *, batch: int, steps: int, prompts: int, n: int) -> dict:
    from unimodal.unified.decoding import sample_latents
    from unimodal.unified.generate import generate_images

    model.to(torch.bfloat16).eval()
    cfg = model.config
    cond = torch.randn(batch, cfg.num_latent_tokens, cfg.dit.cond_dim, device=device)
    seeds = list(range(batch))
    sample_latents(model, cond[:1], seeds[:1], num_inference_steps=1)   # warm-up (kernels, allocator)
    sync(device)
    t = time.perf_counter()
    sample_latents(model, cond, seeds, num_inference_steps=steps, batch_size=batch)
    sync(device)
    dit_s = time.perf_counter() - t
    generate_images(model, CAPTIONS[0], n=1, num_inference_steps=1)
    sync(device)
    t = time.perf_counter()
    generate_images(model, [CAPTIONS[i % len(CAPTIONS)] for i in range(prompts)], n=n, keep=1,
                    num_inference_steps=steps, batch_size=batch)
    sync(device)
    e2e_s = time.perf_counter() - t
    forward = dit_forward_flops(cfg.dit)
    return {"dit_batch": batch, "num_inference_steps": steps, "dit_seconds": sig(dit_s),
            "dit_latents_per_s": sig(batch / dit_s), "dit_model_tflops_per_s": sig(forward * batch * steps / dit_s / 1e12),
            "generate_prompts": prompts, "generate_n": n, "generate_seconds": sig(e2e_s),
            "generate_candidates_per_s": sig(prompts * n / e2e_s)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: checks every code path in seconds")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="training batches tried in order until one does not fit (default 8 16 32 64 128 256)")
    parser.add_argument("--train-steps", type=int, default=4, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mem-fraction", type=float, default=0.8, help="stop growing the batch above this share of GPU memory")
    parser.add_argument("--train-budget-s", type=float, default=240.0,
                        help="no larger training batch is tried once the search has run this long")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS)
    parser.add_argument("--sample-batch", type=int, default=None, help="default 64 (4 with --smoke)")
    parser.add_argument("--sample-steps", type=int, default=None, help="default 50 (2 with --smoke)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    batch_sizes = args.batch_sizes or ([2, 4] if args.smoke else [8, 16, 32, 64, 128, 256])
    sample_batch = args.sample_batch or (4 if args.smoke else 64)
    sample_steps = args.sample_steps or (2 if args.smoke else 50)
    started = time.perf_counter()

    log("part 1: real_size_smoke in bf16")
    smoke = real_size_smoke.run(tiny=args.smoke, device=device, reload=False)
    log(f"part 1: {json.dumps(smoke)}")
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    log("part 2: training step")
    train, model = training(args.smoke, device, batch_sizes, steps=args.train_steps, warmup=args.warmup,
                            peak_tflops=args.peak_tflops, mem_fraction=args.mem_fraction, budget_s=args.train_budget_s)
    log(f"part 2: {json.dumps(train['best'])} ({train['stopped']})")
    log("part 3: sampling")
    samp = sampling(model, device, batch=sample_batch, steps=sample_steps, prompts=max(1, sample_batch // 4), n=4)
    log(f"part 3: {json.dumps(samp)}")
    result = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              "config": "tiny" if args.smoke else "scale-rae-1.5b", "peak_tflops": args.peak_tflops,
              "inference_smoke": smoke, "training": train, "sampling": samp,
              "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
