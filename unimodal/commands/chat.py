"""`unimodal chat [--model DIR] [--session DIR]` and `unimodal chat --replay DIR --out DIR2`.

A generate-and-critique conversation on the terminal (or from piped commands; `/help` lists them,
see `unimodal.chat.syntax`). Every turn is saved to the session folder (default: a new folder
under outputs/chat/); `--session DIR` continues a saved session, `--replay DIR --out DIR2` runs
one again and writes the same images and latents.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from unimodal.commands._args import MAX_CANDIDATES, N_HELP, add_dtype_arg, add_guidance_arg, add_steps_arg, int_in


def add_parser(subparsers) -> None:
    from unimodal.chat.syntax import HELP    # plain Python, no torch: --help stays instant

    p = subparsers.add_parser("chat", help="chat with the model: draw, critique, best-of-N, ask about images",
                              description=__doc__, epilog="commands in the chat:\n" + HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="unified model directory (default: the session's, else $UNIMODAL_MODEL, "
                                                  "else the shipped Shapes model)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_dtype_arg(p)
    p.add_argument("--session", default=None, help="session folder: continued if it holds one, else created")
    p.add_argument("--replay", default=None, metavar="DIR", help="run the saved session DIR again (needs --out)")
    p.add_argument("--out", default=None, metavar="DIR2", help="where --replay writes the new session")
    p.add_argument("--seed", type=int_in(0), default=None)
    add_steps_arg(p, "--steps")
    add_guidance_arg(p, "--cfg")
    p.add_argument("--n", type=int_in(1, MAX_CANDIDATES), default=None, help=N_HELP + " (per /image, best kept)")
    p.set_defaults(func=run)


def _load(model_arg: str | None, recorded: str | None, device: str | None, dtype: str):
    import torch

    from unimodal.shipped import resolve_model_dir
    from unimodal.unified.model import UnifiedModel

    path = resolve_model_dir(model_arg or recorded)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return path.resolve(), UnifiedModel.from_pretrained(path, map_location=device, dtype=dtype).eval()


def run(args) -> int:
    from unimodal.chat.engine import ChatEngine, replay
    from unimodal.chat.repl import StatusLine, run_repl
    from unimodal.chat.settings import ChatSettings
    from unimodal.chat.store import SessionStore
    from unimodal.config import UserError

    if args.replay is not None:
        if args.out is None:
            raise UserError("--replay DIR needs --out DIR2 (a new folder for the replayed session)")
        source = SessionStore.open(args.replay)
        path, model = _load(args.model, source.data.get("model"), args.device, args.dtype)
        status = StatusLine()
        result = replay(model, source, SessionStore.create(args.out, str(path), source.data["settings"]), status.update)
        status.done()
        print(f"replayed {len(result.engine.turns)} turns into {args.out}")
        if result.mismatched:
            # Another device or library version can change the numbers; the record says by how much.
            print(f"warning: the replies of turns {result.mismatched} differ from the recorded ones", file=sys.stderr)
            return 1
        return 0
    if args.out is not None:
        raise UserError("--out goes with --replay")
    session_dir = Path(args.session) if args.session else Path("outputs/chat") / datetime.now().strftime("%Y%m%d-%H%M%S")
    existing = SessionStore.open(session_dir) if SessionStore.is_session(session_dir) else None
    path, model = _load(args.model, existing.data.get("model") if existing else None, args.device, args.dtype)
    flags = {k: getattr(args, k) for k in ("seed", "num_inference_steps", "guidance_scale", "n") if getattr(args, k) is not None}
    if existing is not None:
        engine = ChatEngine.resume(model, existing)
        engine.set_settings(**flags)                  # recorded as turns, so a replay sees them
    else:
        settings = ChatSettings(**flags)
        engine = ChatEngine(model, settings=settings, store=SessionStore.create(session_dir, str(path), settings.to_dict()))
    return run_repl(engine)
