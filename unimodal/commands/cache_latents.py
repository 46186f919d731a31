"""`unimodal cache-latents --rae DIR (--data FOLDER | --data-config YAML) --out DIR`: encode a dataset
once with the frozen RAE encoder into safetensors shards for DiT training (unimodal.data.latent_cache).

Images are resized and centre-cropped to the RAE's resolution. `--data FOLDER` reads ImageNet-style
class folders (sorted folder names -> labels 0..K-1) unless `--no-labels`; `--data-config` takes a
DataConfig YAML for the other sources. Run under ``torchrun`` to split the images over processes.
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cache-latents", help="encode images with a frozen RAE into a latent cache for DiT training")
    p.add_argument("--rae", required=True, help="RAE directory (RAE.save_pretrained / decoder stage export)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="image folder; class subfolders give the labels")
    src.add_argument("--data-config", help="YAML with DataConfig fields (source, path, ...)")
    p.add_argument("--no-labels", action="store_true", help="with --data: a flat folder, no class labels")
    p.add_argument("--out", required=True, help="cache directory to write (replaced atomically)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=4096, help="latents per safetensors shard")
    p.add_argument("--hflip", action="store_true", help="also cache the mirrored image's latent (random flip in training)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--limit", type=int, default=0, help="cache only the first N usable images (0 = all)")
    p.add_argument("--num-workers", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm.auto import tqdm

    from unimodal.config import UserError
    from unimodal.config import ConfigError, load_config
    from unimodal.data.dataset import DataConfig, ImageDataset, build_image_dataset
    from unimodal.data.latent_cache import write_latent_cache
    from unimodal.rae.autoencoder import RAE
    from unimodal.utils.distributed import cleanup, init_distributed

    if args.batch_size < 1 or args.shard_size < 1 or args.limit < 0:
        raise UserError("--batch-size and --shard-size must be >= 1 and --limit >= 0")
    if args.no_labels and not args.data:
        raise UserError("--no-labels goes with --data; set label settings inside --data-config instead")
    dist = init_distributed()
    try:
        rae = RAE.from_pretrained(args.rae).to(dist.device).eval()
        size = rae.config.image_size
        if args.data:
            data_cfg = DataConfig(source="folder", path=args.data, class_subfolders=not args.no_labels, image_size=size)
        else:
            data_cfg = load_config(DataConfig, args.data_config)
            if data_cfg.image_size != size:
                raise ConfigError(f"{args.data_config}: image_size={data_cfg.image_size} but the RAE works at {size} px; set image_size: {size}")
        train = build_image_dataset(data_cfg, "train", dist=dist, log=print if dist.is_main else None)
        indices = train.indices[: args.limit] if args.limit else train.indices
        # Evaluation transform: a deterministic centre crop (a random crop would be frozen in).
        dataset = ImageDataset(train.source, indices, image_size=size, train=False, min_size=data_cfg.min_size,
                               background=data_cfg.background)
        bar = tqdm(total=-(-len(dataset) // dist.world_size), desc="cache", disable=not dist.is_main)
        out = write_latent_cache(rae, dataset, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                                 hflip=args.hflip, dtype=args.dtype, dist=dist, num_workers=args.num_workers,
                                 progress=bar.update)
        bar.close()
        if dist.is_main:
            print(f"wrote {out}: {len(dataset)} latents {rae.config.encoder.num_tokens} x {rae.config.encoder.channels} "
                  f"({args.dtype}{', + mirrored' if args.hflip else ''}), labels={'yes' if dataset.has_labels else 'no'}")
    finally:
        cleanup()
    return 0
