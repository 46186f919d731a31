"""`unimodal serve [--model DIR] [--host 127.0.0.1] [--port 7860] [--sessions DIR] [--limit KEY=VALUE ...]`.

A web page (Gradio) to chat with the model in this process: draw best-of-N, see each image with
its judge scores and critique, ask about an uploaded image. Binds 127.0.0.1 unless told otherwise.
Server-side limits (`unimodal.chat.settings.ServeLimits`) are changed with --limit, e.g.
`--limit max_n=4 --limit max_upload_bytes=5000000`. Needs the `serve` extra (pip install -e ".[serve]").
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from unimodal.commands._args import add_dtype_arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="web UI: chat, draw, critique (Gradio)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="unified model directory (default: $UNIMODAL_MODEL, else the shipped Shapes model)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_dtype_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--sessions", default=None, metavar="DIR", help="save every conversation under DIR/<id>/")
    p.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE", help="a ServeLimits field")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from unimodal.chat.backend import ChatBackend
    from unimodal.chat.settings import ServeLimits
    from unimodal.shipped import resolve_model_dir
    from unimodal.config import UserError
    from unimodal.config import apply_overrides
    from unimodal.unified.model import UnifiedModel

    if importlib.util.find_spec("gradio") is None:
        raise UserError('serve needs gradio: pip install -e ".[serve]"')
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    limits = ServeLimits.from_dict(apply_overrides({}, args.limit))
    path = resolve_model_dir(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = UnifiedModel.from_pretrained(path, map_location=device, dtype=args.dtype).eval()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the model", file=sys.stderr)

    from unimodal.chat.webapp import launch

    launch(ChatBackend(model, limits=limits, sessions_dir=args.sessions, model_name=str(path.resolve())), args.host, args.port)
    return 0
