"""Throughput of the unified model at the Shapes recipe's sizes; the last stdout line is one JSON object.

    python scripts/bench_unified.py [--model models/shapes] [--stage pretrain|understand|draw] [--repeats 5]
                                    [--threads 2] [--compile preset|auto|true|false]
    python scripts/bench_unified.py --tiny        # unified.testing's tiny model, seconds (for tests)

The model is the shipped one (it has the recipe's sizes); the training settings are those of one
unified stage of the recipe (`RECIPE_PRESETS["full"][STAGE]`: batch, task mix, noise draws,
trainable LLM, precision, compile; default pretrain, where most of the recipe's time goes).
Measured, each the median of `--repeats` runs after one warm-up:
- `train_step`: one optimiser step as the stage's loop takes it, in the preset's precision
  (`train.bf16`; `TrainEngine.autocast`) and with its `compile` setting (`--compile` overrides it;
  `train_first_step_s` is the warm-up step, compiling included): the frozen encoder on the batch's
  Shapes scenes, a task draw (text-to-image / caption / judge), the joint loss with `fm_repeats`
  noise draws per target, backward, the engine's AdamW (`TrainEngine`), the EMA update;
- `best_of_n`: `generate_images(n, keep=1)` with the model's own sampler (steps, guidance), judged by
  the model and decoded;
- `caption`: 16 new tokens for one scene.
Throughputs are images per second; `peak_rss_mb` is the process's. Compare two trees by running
this file from each (the `unimodal` it imports is the one on `sys.path` first).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds of `repeats` calls, seconds of the warm-up call before them)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), first


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/shapes", help="a unified model directory with the recipe's sizes")
    parser.add_argument("--tiny", action="store_true", help="unified.testing's tiny model and small settings")
    parser.add_argument("--stage", default="pretrain", choices=["pretrain", "understand", "draw"],
                        help="the recipe stage whose training settings the train step takes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=8, help="candidates of the best-of-n generation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", choices=["preset", "auto", "true", "false"], default="preset",
                        help="torch.compile the training forward's LLM and DiT (JointLoss); "
                             "preset: the stage's setting")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="weights for generation and captioning, as the commands' --dtype (auto: bfloat16 where "
                             "the device computes it natively); training always keeps fp32 weights")
    parser.add_argument("--allocator", choices=["cli", "default"], default="cli",
                        help="cli: the fixed glibc malloc thresholds the unimodal command sets "
                             "(unimodal.utils.allocator); default: glibc's own")
    args = parser.parse_args(argv)
    from unimodal.utils.allocator import keep_freed_memory

    skipped = keep_freed_memory() if args.allocator == "cli" else "--allocator default"
    allocator = "cli" if skipped is None else f"glibc default ({skipped})"
    if args.threads:
        torch.set_num_threads(args.threads)

    import unimodal
    import unimodal.shapes  # noqa: F401  (registers the Shapes data source)
    from unimodal.shapes.config import ShapesConfig
    from unimodal.shapes.dataset import ShapesDataset
    from unimodal.shapes.recipe.run import RECIPE_PRESETS
    from unimodal.train.config import TrainConfig
    from unimodal.train.ema import EMA
    from unimodal.train.engine import TrainEngine
    from unimodal.unified.data import TaskMix, make_batch
    from unimodal.unified.generate import caption, generate_images
    from unimodal.unified.loss import JointLoss
    from unimodal.unified.model import UnifiedModel
    from unimodal.unified.trainable import configure_trainable, param_groups
    from unimodal.utils.distributed import DistInfo
    from unimodal.utils.compiling import use_compile
    from unimodal.utils.precision import dtype_name, inference_dtype

    stage = RECIPE_PRESETS["full"][args.stage]
    if args.tiny:
        from unimodal.unified.testing import tiny_model

        load, batch_size, fm_repeats, steps = (lambda: tiny_model(seed=0)), 4, 2, 2
    else:
        load = lambda: UnifiedModel.from_pretrained(args.model)  # noqa: E731
        batch_size, fm_repeats, steps = stage["train"]["batch_size"], stage["fm_repeats"], None
    dtype = inference_dtype(args.dtype, args.device)
    model = load().to(args.device, dtype)
    if args.tiny:
        from unimodal.unified.testing import toy_caption, toy_image, toy_pairs

        pairs = toy_pairs()[:batch_size]
        pixels, captions = torch.stack([toy_image(*p) for p in pairs]), [toy_caption(*p) for p in pairs]
    else:
        world = ShapesDataset(ShapesConfig(image_size=model.config.rae.encoder.image_size), "train",
                              length=batch_size, caption="mixed")
        items = [world[i] for i in range(batch_size)]
        pixels, captions = torch.stack([it["image"] for it in items]), [it["caption"] for it in items]
    pixels = pixels.to(args.device)
    prompt = "a red circle to the left of a blue square"

    model.eval()
    best, _ = timed(lambda: generate_images(model, prompt, n=args.n, keep=1, num_inference_steps=steps), args.repeats)
    cap, _ = timed(lambda: caption(model, images=pixels[:1], max_new_tokens=16), args.repeats)

    model = load().to(args.device)
    configure_trainable(model, stage.get("llm_mode", "full"))
    groups = param_groups(model, llm_lr=stage["llm_lr"], dit_lr=stage["dit_lr"])
    tc = TrainConfig(**{k: v for k, v in stage["train"].items() if k in ("total_steps", "lr", "min_lr", "warmup_steps", "bf16")},
                     batch_size=batch_size)
    setting = stage.get("compile", False) if args.compile == "preset" else {"true": True, "false": False}.get(
        args.compile, args.compile)
    compiled = use_compile(setting, args.device)
    objective = JointLoss(model, shift=model.config.shift, fm_repeats=fm_repeats, compile=compiled)
    engine = TrainEngine(objective, tc, groups, dist=DistInfo(device=torch.device(args.device)))
    ema = EMA(model, stage["train"]["ema_decay"])
    mix, rng = TaskMix(**stage["mix"]), random.Random(0)
    engine.train()

    def train_step():
        latents = model.encode_images(pixels)
        with engine.autocast():
            out = engine(make_batch(model.chat, captions, mix, rng).to(args.device), latents)
        engine.backward(out.loss)
        engine.step()
        ema.update(model)

    train, first = timed(train_step, args.repeats)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_step()   # one more, for the pages a warm step faults in
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    result = {
        "unimodal": str(Path(unimodal.__file__).parent), "model": "tiny" if args.tiny else args.model, "stage": args.stage, "device": args.device, "threads": torch.get_num_threads(),
        "inference_dtype": dtype_name(dtype),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3), "repeats": args.repeats,
        "train_batch": batch_size, "fm_repeats": fm_repeats, "train_bf16": engine.bf16,
        "train_compile": compiled, "train_step_ms": round(train * 1e3, 1),
        "train_first_step_s": round(first, 1), "allocator": allocator,
        "train_step_page_faults": faults,  # minor faults: pages the kernel zeroed and mapped in
        "train_images_per_s": round(batch_size / train, 2),
        "best_of_n": args.n, "best_of_n_ms": round(best * 1e3, 1), "best_of_n_images_per_s": round(args.n / best, 2),
        "num_inference_steps": steps or model.config.num_inference_steps, "guidance_scale": model.config.guidance_scale,
        "caption_16tok_ms": round(cap * 1e3, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),  # Linux: KiB
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
