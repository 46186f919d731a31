"""`unimodal stats --encoder SPEC --data FOLDER --out FILE`: exact per-element latent statistics.

SPEC is an encoder preset name (``dinov2-reg-b``), an EncoderConfig JSON/YAML file, or a saved RAE
directory (its encoder is used). Run under ``torchrun`` to split the images over processes; the
statistics are merged exactly (unimodal.rae.stats).
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("stats", help="compute latent mean/variance over an image folder (RAE normalisation)")
    p.add_argument("--encoder", required=True, help="encoder preset name, EncoderConfig JSON/YAML, or RAE directory")
    p.add_argument("--data", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output .safetensors with tensors 'mean' and 'var' [N, C]")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="use at most this many images in total (0 = all)")
    p.add_argument("--num-workers", type=int, default=0)
    p.set_defaults(func=run)


def _load_encoder(spec: str):
    from pathlib import Path

    from unimodal.config import load_config
    from unimodal.rae.autoencoder import RAE
    from unimodal.rae.encoders import ENCODER_PRESETS, EncoderConfig, FrozenEncoder, encoder_preset

    path = Path(spec)
    if path.is_dir():
        return RAE.from_pretrained(path).encoder
    if path.is_file():
        return FrozenEncoder(load_config(EncoderConfig, path))
    if spec in ENCODER_PRESETS:
        return FrozenEncoder(encoder_preset(spec))
    raise FileNotFoundError(f"--encoder {spec!r} is neither a file, an RAE directory nor a preset ({', '.join(sorted(ENCODER_PRESETS))})")


def run(args) -> int:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from unimodal.config import UserError
    from unimodal.data.dataset import DataConfig, ImageDataset, build_image_dataset
    from unimodal.rae.stats import compute_latent_stats, save_latent_stats
    from unimodal.utils.distributed import cleanup, init_distributed

    if args.batch_size < 1 or args.limit < 0:
        raise UserError("--batch-size must be >= 1 and --limit >= 0")
    dist = init_distributed()
    try:
        encoder = _load_encoder(args.encoder).to(dist.device)
        data_cfg = DataConfig(source="folder", path=args.data, image_size=encoder.config.image_size)
        train = build_image_dataset(data_cfg, "train", dist=dist, log=print if dist.is_main else None)
        indices = train.indices[: args.limit] if args.limit else train.indices
        # Centre crops (no random augmentation); each process takes every world_size-th image.
        dataset = ImageDataset(train.source, indices[dist.rank::dist.world_size], image_size=data_cfg.image_size,
                               train=False, min_size=data_cfg.min_size, background=data_cfg.background)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        bar = tqdm(total=len(dataset), desc="stats", disable=not dist.is_main)
        acc = compute_latent_stats(encoder, (b["pixels"] for b in loader), device=dist.device, progress=bar.update)
        bar.close()
        mean, var = acc.result()
        if dist.is_main:
            save_latent_stats(args.out, mean, var, acc.count)
            print(f"wrote {args.out}: {acc.count} images, latent {tuple(mean.shape)}, "
                  f"mean of means {mean.mean().item():.4g}, mean variance {var.mean().item():.4g}")
    finally:
        cleanup()
    return 0
