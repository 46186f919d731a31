"""Can the LLM read these latents, and how fast? Caption-only training of the LLM per codec.

    python scripts/caption_ceiling.py [--model DIR] [--codecs tower pixel] [--init fresh] [--steps 3000]
        [--checkpoints 6] [--batch-size 32] [--lr 1e-3] [--train-scenes 4000] [--eval-scenes 128] [--threads 1]

The understanding twin of `shape_ceiling.py`. For each codec an LLM with the model's architecture
(`--init fresh`: random weights; `shipped`: the model's own) and a new projector (codec channels ->
LLM width) learn one task only, "Describe this image." -> the scene's caption (long or GenEval-style,
as in pretraining), on the codec's latents of `--train-scenes` multi-object training scenes of the
model's world. At each checkpoint the LLM captions `--eval-scenes` held-out scenes greedily, scored
as the recipe scores captions: "correct" (every shape, colour and count right), "shapes" (the named
shapes are the scene's, as a multiset), "count" (the number of objects) and "parsed". Codecs:
- tower: the model's frozen encoder (what the unified model reads);
- pixel: the lossless control, each tower-sized pixel patch one token (`findings.PixelCodec`).
"shipped" is the model itself on the tower, untouched: what the recipe's training reached.
The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from collections import Counter

import torch
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.dataset import make_item
from unimodal.shapes.findings import PixelCodec, encode_all
from unimodal.shapes.recipe.data import render_images, scenes, to_unit
from unimodal.shapes.recipe.evaluate import EVAL_SPLIT, caption_matches, parse_caption
from unimodal.shapes.scene import image_to_tensor
from unimodal.shipped import resolve_model_dir
from unimodal.train.schedule import warmup_cosine
from unimodal.unified.bridge import Projector
from unimodal.unified.data import TaskMix, make_batch
from unimodal.unified.generate import caption
from unimodal.unified.loss import joint_loss
from unimodal.unified.model import UnifiedModel

CODECS = ("tower", "pixel")
CAPTION_ONLY = TaskMix(t2i=0.0, caption=1.0, judge=0.0)


def caption_scores(model, latents: torch.Tensor, scene_list, cfg: ShapesConfig) -> dict[str, float]:
    texts = caption(model, latents=latents, max_new_tokens=72).texts
    parsed = [parse_caption(t, cfg) for t in texts]
    shapes = [p is not None and Counter(s for _, s in p) == Counter(o.shape for o in sc.objects)
              for p, sc in zip(parsed, scene_list)]
    count = [p is not None and len(p) == len(sc.objects) for p, sc in zip(parsed, scene_list)]
    right = [caption_matches(t, sc, cfg) for t, sc in zip(texts, scene_list)]
    k = len(texts)
    return {"correct": sum(right) / k, "shapes": sum(shapes) / k, "count": sum(count) / k,
            "parsed": sum(p is not None for p in parsed) / k}


def reader(shipped: UnifiedModel, channels: int, init: str, seed: int) -> UnifiedModel:
    """The shipped model with its LLM re-initialised (or kept) and a new projector for `channels`."""
    torch.manual_seed(seed)
    model = copy.deepcopy(shipped)
    if init == "fresh":
        model.llm = Qwen2ForCausalLM(Qwen2Config(**shipped.config.llm))
        model.llm.config.use_cache = False
    model.projector = Projector(channels, model.hidden_size)
    for part in (model.dit, model.queries, model.connector, model.rae):
        part.requires_grad_(False)
    return model


def run_curve(model: UnifiedModel, train: torch.Tensor, captions: list[str], evals: torch.Tensor, eval_scenes,
              cfg: ShapesConfig, args, name: str) -> list[dict]:
    params = [p for m in (model.llm, model.projector) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    at = {round(args.steps * (i + 1) / args.checkpoints) for i in range(args.checkpoints)}
    curve, t0, cpu0 = [], time.time(), time.process_time()
    for step in tqdm(range(1, args.steps + 1), desc=name, file=sys.stderr):
        model.train()
        lr = warmup_cosine(step - 1, total_steps=args.steps, warmup_steps=args.steps // 50, base_lr=args.lr,
                           min_lr=args.lr / 10)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(train), (args.batch_size,), generator=gen)
        batch = make_batch(model.chat, [captions[i] for i in idx], CAPTION_ONLY, rng)
        loss = joint_loss(model, batch, train[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step in at:
            with torch.no_grad():
                scores = caption_scores(model, evals, eval_scenes, cfg)
            curve.append({"step": step, "seconds": round(time.time() - t0, 1),
                          "cpu_seconds": round(time.process_time() - cpu0, 1), "loss": round(loss.item(), 4), **scores})
            print(f"{name}: {curve[-1]}", file=sys.stderr)
    return curve


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="unified model directory (default: the shipped Shapes model)")
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    ap.add_argument("--init", default="fresh", choices=("fresh", "shipped"), help="the LLM's starting weights")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-scenes", type=int, default=4000)
    ap.add_argument("--eval-scenes", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    for name in ("steps", "checkpoints", "batch_size", "train_scenes", "eval_scenes"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.checkpoints > args.steps:
        ap.error("--checkpoints must be <= --steps")
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = resolve_model_dir(args.model)
    shipped = UnifiedModel.from_pretrained(model_dir).eval()
    size = shipped.config.rae.encoder.image_size
    cfg = ShapesConfig(image_size=size, min_gap=max(ShapesConfig().min_gap, 2 / size))   # the world; >= 2 px gaps
    train_items = [make_item(cfg, "train", i) for i in range(args.train_scenes)]
    captions = [it["caption"] for it in train_items]
    train_images = torch.stack([image_to_tensor(it["image"]) for it in train_items])
    eval_scenes = scenes(cfg, EVAL_SPLIT, args.eval_scenes)
    eval_images = to_unit(render_images(cfg, eval_scenes))
    grid = size // shipped.config.rae.encoder.patch_size
    pixel = PixelCodec(cfg.image_size, cfg.image_size // grid)
    encoders = {"tower": shipped.encode_images, "pixel": pixel.encode}

    with torch.no_grad():
        result = {"model": str(model_dir), "init": args.init, "steps": args.steps,
                  "batch_size": args.batch_size, "lr": args.lr, "train_scenes": args.train_scenes,
                  "eval_scenes": args.eval_scenes, "threads": torch.get_num_threads(),
                  "shipped": caption_scores(shipped, shipped.encode_images(eval_images), eval_scenes, cfg)}
    print(f"shipped: {result['shipped']}", file=sys.stderr)
    for codec in args.codecs:
        with torch.no_grad():
            train, evals = encode_all(encoders[codec], train_images), encode_all(encoders[codec], eval_images)
        model = reader(shipped, train.shape[-1], args.init, args.seed)
        result[codec] = run_curve(model, train, captions, evals, eval_scenes, cfg, args, codec)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
