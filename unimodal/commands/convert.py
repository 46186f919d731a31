"""`unimodal convert FORMAT SRC DST`: official checkpoints -> `unimodal` model directories (and back for diffusers).

Every conversion is strict: each source key is used and each target key filled, or it stops and
names the keys. Tensors keep their dtype unless `--dtype` is given; DST is written atomically.
"""
from __future__ import annotations

FORMATS = {
    "scale-rae": "a Scale-RAE HF model directory (cambrian_qwen) -> UnifiedModel directory",
    "scale-rae-decoder": "a Scale-RAE decoder (config.json + model.pt) -> decoder directory, or RAE directory with --encoder",
    "rae": "an RAE stage-2 DiT^DH checkpoint -> DiT directory; an RAE decoder -> decoder / RAE directory",
    "diffusers-rae": "a diffusers AutoencoderRAE directory <-> an RAE directory (direction from SRC)",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert official checkpoints to unimodal directories")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, help_text in FORMATS.items():
        p = formats.add_parser(name, help=help_text, description=help_text)
        p.add_argument("src", metavar="SRC")
        p.add_argument("dst", metavar="DST", help="output directory (replaced atomically if it exists)")
        p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="cast floating tensors (default: keep each tensor's dtype)")
        if name in ("scale-rae", "scale-rae-decoder", "rae"):
            p.add_argument("--encoder", default=None,
                           help="encoder checkpoint (transformers directory or cached hub id), copied into the RAE")
        if name == "scale-rae":
            p.add_argument("--decoder", required=True,
                           help="a decoder directory from `convert scale-rae-decoder`, or a complete RAE directory")
            p.add_argument("--encoder-family", default=None, choices=["siglip2", "webssl"],
                           help="default: from the source config's vision tower name")
            p.add_argument("--image-tokens", default="scale-rae", choices=["scale-rae", "keep"],
                           help="copy the <im_start>/<im_end> embedding rows into <|vision_start|>/<|vision_end|> (default)")
        if name == "scale-rae-decoder":
            p.add_argument("--encoder-family", default="siglip2", choices=["siglip2", "webssl"])
        if name == "rae":
            p.add_argument("--weights", default="ema", choices=["ema", "model"],
                           help="stage-2 training checkpoints: EMA (default) or live weights")
            p.add_argument("--head-depth", type=int, default=None,
                           help="DiT^DH head blocks; only needed when body and head have the same width")
            p.add_argument("--decoder-config", default=None, help="the decoder's ViTMAE config.json (for a bare model.pt)")
            p.add_argument("--encoder-family", default="dinov2_reg", choices=["dinov2_reg", "siglip2", "mae", "webssl"])
            p.add_argument("--stats", default=None, help="RAE latent statistics (stat.pt with mean/var), needs --encoder")
            p.add_argument("--noise-tau", type=float, default=0.0, help="decoder training noise recorded in the config")
        p.set_defaults(func=run)


def _scale_rae_family(src: str) -> str:
    import json
    from pathlib import Path

    cfg = Path(src) / "config.json"
    names = (json.loads(cfg.read_text()).get("mm_vision_tower_aux_list") or []) if cfg.is_file() else []
    text = " ".join(str(n) for n in names).lower()
    if "siglip" in text:
        return "siglip2"
    if "webssl" in text or "dino" in text:
        return "webssl"
    return "siglip2"


def run(args) -> int:
    from unimodal.config import UserError
    from unimodal.convert.common import ConversionError, parse_dtype, refuse_same_path

    try:
        dtype = parse_dtype(args.dtype)
        refuse_same_path(args.src, args.dst)
        if args.format == "scale-rae":
            from unimodal.convert.assemble import rae_from_decoder_dir
            from unimodal.convert.scale_rae import convert_scale_rae

            family = args.encoder_family or _scale_rae_family(args.src)
            rae_config, rae_state = rae_from_decoder_dir(args.decoder, args.encoder, family, "layernorm", args.decoder)
            notes = convert_scale_rae(args.src, args.dst, rae_config, rae_state, dtype, args.image_tokens)
        elif args.format == "scale-rae-decoder":
            from unimodal.convert.assemble import convert_decoder

            notes = convert_decoder(args.src, args.dst, encoder=args.encoder, family=args.encoder_family,
                                    normalization="layernorm", dtype=dtype)
        elif args.format == "rae":
            from unimodal.convert.rae import convert_rae

            notes = convert_rae(args.src, args.dst, weights=args.weights, head_depth=args.head_depth,
                                config_path=args.decoder_config, encoder=args.encoder, family=args.encoder_family,
                                stats=args.stats, noise_tau=args.noise_tau, dtype=dtype)
        else:
            from unimodal.convert.diffusers_rae import from_diffusers, is_diffusers_dir, to_diffusers

            notes = (from_diffusers if is_diffusers_dir(args.src) else to_diffusers)(args.src, args.dst, dtype)
    except ConversionError as e:
        raise UserError(str(e)) from None
    for line in notes:
        print(f"  {line}")
    print(f"wrote {args.dst}")
    return 0
