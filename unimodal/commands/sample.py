"""`unimodal sample --model DIR --rae DIR --num N --out FILE.npz`: class-conditional images for FID.

Writes one PNG per image (`<png-dir>/<index>_class<label>.png`) and the standard FID reference
array: uint8 [N, H, W, 3] under key `arr_0` of an .npz (ADM / DiT evaluation suite format).
Labels are balanced: image i has class classes[i % K] and N must be a multiple of K, so every
class gets exactly N / K images. Image i starts from noise seeded by `--seed + i`, so any image can
be regenerated alone. Under ``torchrun`` rank r renders images r, r + W, ...; file names
carry the global index, so shards never overwrite each other, and rank 0 assembles the .npz from
the PNGs. Sampler defaults come from the model's config.json (`sampler`, written by `train dit`),
else Euler, 50 steps, the dimension shift of the latent shape.
"""
from __future__ import annotations

from unimodal.commands._args import add_guidance_arg, add_steps_arg, int_in


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample class-conditional images from a DiT (PNGs + FID .npz)")
    p.add_argument("--model", required=True, help="DiT directory (train dit export / DiT.save_pretrained)")
    p.add_argument("--rae", required=True, help="RAE directory whose decoder turns latents into pixels")
    p.add_argument("--num", type=int_in(1), required=True, help="number of images (a multiple of the class count)")
    p.add_argument("--out", required=True, help="output .npz (uint8 N x H x W x 3 under arr_0)")
    p.add_argument("--png-dir", default=None, help="PNG folder (default: next to --out, <stem>_png)")
    p.add_argument("--classes", default=None, help="comma-separated labels to sample (default: all classes)")
    add_guidance_arg(p, "--cfg-scale")
    p.add_argument("--guidance", choices=["cfg", "autoguidance"], default=None)
    p.add_argument("--guide-model", default=None, help="weaker DiT directory for autoguidance")
    p.add_argument("--interval", type=float, nargs=2, default=None, metavar=("T_MIN", "T_MAX"),
                   help="apply guidance only for T_MIN <= t <= T_MAX (t = 1 is noise)")
    p.add_argument("--method", choices=["euler", "heun"], default=None)
    add_steps_arg(p, "--steps")
    p.add_argument("--shift", type=float, default=None, help="time shift (default: the model's training shift)")
    p.add_argument("--batch-size", type=int_in(1), default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--skip-existing", action="store_true", help="keep PNGs already written (resume a long run)")
    p.set_defaults(func=run)


def _sampler_config(args, model):
    """The model's own sampler (its config.json), with the flags given on top."""
    from unimodal.dit.sampling import SamplerConfig

    changes = {"method": args.method, "num_inference_steps": args.num_inference_steps, "shift": args.shift,
               "guidance": args.guidance, "guidance_scale": args.guidance_scale, "guidance_interval": args.interval}
    return (model.config.sampler or SamplerConfig()).replace(**{k: v for k, v in changes.items() if v is not None})


def run(args) -> int:
    import os
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from unimodal.config import UserError
    from unimodal.dit.model import DiT
    from unimodal.dit.sampling import noise_from_seeds, sample
    from unimodal.rae.autoencoder import RAE
    from unimodal.utils.distributed import barrier, cleanup, init_distributed

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz, got {out}")
    png_dir = Path(args.png_dir) if args.png_dir else out.with_name(f"{out.stem}_png")
    dist = init_distributed()
    try:
        model = DiT.from_pretrained(args.model, map_location=dist.device).eval()
        cfg = model.config
        if cfg.cond_mode != "class":
            raise UserError(f"{args.model} is a {cfg.cond_mode!r} DiT; `unimodal sample` draws class-conditional images")
        classes = list(range(cfg.num_classes)) if args.classes is None else [int(c) for c in args.classes.split(",")]
        if not classes or any(not 0 <= c < cfg.num_classes for c in classes):
            raise UserError(f"--classes must be labels in [0, {cfg.num_classes})")
        if args.num % len(classes):
            raise UserError(f"--num {args.num} is not a multiple of the {len(classes)} classes; every class must get the same count")
        sampler = _sampler_config(args, model)
        wants_guide = sampler.guidance == "autoguidance" and sampler.guidance_scale != 1.0
        if wants_guide != (args.guide_model is not None):
            raise UserError("autoguidance (--guidance autoguidance with --guidance-scale != 1) and --guide-model go together")
        guide = None
        if args.guide_model is not None:
            guide = DiT.from_pretrained(args.guide_model, map_location=dist.device).eval()
            if (guide.config.num_tokens, guide.config.in_channels) != (cfg.num_tokens, cfg.in_channels):
                raise UserError("--guide-model models a different latent shape than --model")
        rae = RAE.from_pretrained(args.rae, map_location=dist.device).eval()
        if (rae.config.encoder.num_tokens, rae.config.encoder.channels) != (cfg.num_tokens, cfg.in_channels):
            raise UserError(f"--rae latents are {rae.config.encoder.num_tokens} x {rae.config.encoder.channels}, "
                            f"the DiT models {cfg.num_tokens} x {cfg.in_channels}")
        if dist.is_main:
            png_dir.mkdir(parents=True, exist_ok=True)
        barrier()

        def png_path(i: int) -> Path:
            return png_dir / f"{i:06d}_class{classes[i % len(classes)]:04d}.png"

        todo = [i for i in range(dist.rank, args.num, dist.world_size)
                if not (args.skip_existing and png_path(i).is_file())]
        bar = tqdm(total=len(todo), desc="sample", disable=not dist.is_main)
        autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=args.bf16)
        for start in range(0, len(todo), args.batch_size):
            idx = todo[start:start + args.batch_size]
            noise = noise_from_seeds([args.seed + i for i in idx], cfg.num_tokens, cfg.in_channels, dist.device)
            labels = torch.tensor([classes[i % len(classes)] for i in idx], device=dist.device)
            with autocast:
                latents = sample(model, noise, labels, sampler, guide_model=guide)
            with torch.no_grad():
                images = rae.decode(latents.float())                                  # [b, 3, S, S] in [0, 1]
            arr = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for i, a in zip(idx, arr):
                tmp = png_path(i).with_suffix(".tmp.png")
                Image.fromarray(a).save(tmp)
                os.replace(tmp, png_path(i))          # a killed run never leaves a truncated PNG
            bar.update(len(idx))
        bar.close()
        barrier()
        if dist.is_main:
            stack = np.stack([np.asarray(Image.open(png_path(i)).convert("RGB")) for i in range(args.num)])
            tmp = out.with_name(f".{out.stem}.tmp.npz")
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, arr_0=stack)
            os.replace(tmp, out)
            print(f"wrote {out}: arr_0 {stack.dtype} {tuple(stack.shape)}, {args.num // len(classes)} per class "
                  f"x {len(classes)} classes; PNGs in {png_dir}; sampler {sampler.to_dict()}")
    finally:
        cleanup()
    return 0
